"""Checkpoints written atomically: a run killed at any moment leaves the last complete one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_mode()


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(handle)`` on a temporary sibling, fsync, then rename it over ``path``.

    The rename is atomic on POSIX and Windows, so readers (and a resumed run) see either the
    previous file or the new one, never a torn one. Every file ravine writes goes through here.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; these are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """``torch.save`` ``payload`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda handle: torch.save(payload, handle))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write a text file (logs, summaries, tables) atomically."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors, numbers, strings, lists)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path}") from None
    except Exception as error:  # torch raises several types for a corrupt file
        raise ValueError(f"checkpoint {path} is unreadable: {error}") from None


def resumable_state(path: str | os.PathLike[str], config_text: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if there is one, after checking it was written by a run of
    the same config (``ConfigError`` otherwise: resuming would silently mix two runs)."""
    from ravine.train.config import ConfigError

    path = Path(path)
    if not path.exists():
        return None
    state = load_checkpoint(path)
    if state.get("config") != config_text:
        raise ConfigError(
            f"{path.parent} holds a run with another config; use another output folder "
            "(or start fresh with --fresh)"
        )
    return state
