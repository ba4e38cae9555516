"""Run folders: the one module that writes, checks and owns what ravine puts on disk.

Every file ravine writes goes through :func:`atomic_write` (or its wrappers): it is written
to a temporary sibling, flushed to disk, and renamed over the target, so a reader — or a run
resumed after ``kill -9`` — sees the previous file or the new one, never a torn one. Its
SHA-256 is recorded in the directory's manifest (``.ravine/manifest.json``) and checked by
:func:`read_verified` / :func:`load_checkpoint`: bytes damaged after the write are refused by
name (:class:`DamagedFileError`) instead of loading as broken weights.

The manifest is updated in two phases around the rename — first the new checksum is added
beside the old one, then the old one is dropped — so a crash at any instant leaves a file
whose contents match one of its recorded checksums. A file the manifest does not list (a
folder written by an older ravine, a file the user put there) is read unchecked.

A run folder belongs to one run (:class:`RunFolder`): ``.ravine/owner.json`` says which
(its kind and its configuration), and ``.ravine/lock`` is held (``flock``; the kernel drops it
when the process dies, even by ``kill -9``) while a process writes the folder. A new run into
a folder that holds another run's results is refused unless the caller asks to replace it;
the same run resumes. Leftover temporary files of a killed writer are removed when the next
writer takes the lock.

Layout of a run folder's bookkeeping::

    .ravine/lock            held while a process writes the folder
    .ravine/owner.json      kind, configuration, ravine version, finished or not
    .ravine/manifest.json   name -> accepted SHA-256 digests, for this directory's files
    <sub>/.ravine/manifest.json   the same, for each subfolder ravine writes (weights/)
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "DamagedFileError",
    "FolderInUseError",
    "FolderTakenError",
    "RunFolder",
    "atomic_write",
    "atomic_write_text",
    "load_checkpoint",
    "read_verified",
    "save_checkpoint",
    "write_files",
    "write_standalone",
]

BOOKKEEPING = ".ravine"
MANIFEST = "manifest.json"
OWNER = "owner.json"
LOCK = "lock"
PREVIOUS = ".prev"  # checkpoint.pt's predecessor is checkpoint.prev.pt
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")  # what atomic_write's mkstemp names


class DamagedFileError(ValueError):
    """A file's bytes no longer match the checksum recorded when ravine wrote it."""


class FolderInUseError(RuntimeError):
    """Another process holds the folder's lock."""


class FolderTakenError(ValueError):
    """The folder holds another run (or files ravine did not write)."""


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_mode()


# --------------------------------------------------------------------------------------------
# Atomic, checksummed writes
# --------------------------------------------------------------------------------------------


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(handle)`` on a temporary sibling of ``path``, then commit it atomically
    with its checksum recorded (see the module doc). Returns ``path``."""
    path = Path(path)
    write_files(path.parent, {path.name: write})
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write a text file (logs, summaries, tables) atomically, UTF-8."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def write_files(
    directory: str | os.PathLike[str],
    files: Mapping[str, Callable[[BinaryIO], None]],
    *,
    keep_previous: tuple[str, ...] = (),
) -> None:
    """Write several files of one directory as one commit: every file is written and synced
    first, then the manifest learns the new checksums, then all are renamed into place.

    ``keep_previous`` names files whose current version is kept as ``<stem>.prev<suffix>``
    (a hard link, so it costs no copy) before the new one replaces it: the fallback a resume
    uses when the newest checkpoint turns out damaged.
    """
    with _interrupts_deferred():
        _write_files(Path(directory), files, keep_previous)


def _write_files(
    directory: Path, files: Mapping[str, Callable[[BinaryIO], None]], keep_previous: tuple[str, ...]
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, str, str]] = []  # (temporary, name, digest)
    carried: list[tuple[Path, str, list[str] | None]] = []  # (temporary, name, digests)
    try:
        for name, write in files.items():
            tmp = _temporary(directory, name)
            try:
                with open(tmp, "wb") as handle:
                    write(handle)
                    handle.flush()
                    os.fsync(handle.fileno())
            except BaseException as error:
                tmp.unlink(missing_ok=True)
                # A second Ctrl-C inside torch.save's zip writer surfaces as the writer's
                # RuntimeError about its position; the user pressed Ctrl-C, so say that.
                if isinstance(error.__context__, KeyboardInterrupt):
                    raise KeyboardInterrupt from error
                raise
            staged.append((tmp, name, _sha256(tmp)))
        manifest = _read_manifest(directory)
        for name in keep_previous:
            current = directory / name
            if name in files and current.exists():
                tmp = _temporary(directory, previous_name(name))
                tmp.unlink()
                try:
                    os.link(current, tmp)
                except OSError:  # no hard links here (some network or FAT file systems)
                    _copy(current, tmp)
                carried.append((tmp, previous_name(name), manifest.get(name)))
        pending = dict(manifest)
        for _, name, digests in carried:  # the old predecessor, or the file about to be it
            if digests is None:  # its source was never checksummed (an older ravine's file)
                pending.pop(name, None)
            else:
                pending[name] = _dedupe([*(manifest.get(name) or []), *digests])
        for _, name, digest in staged:  # the current contents, or the new ones
            pending[name] = _dedupe([*(manifest.get(name) or []), digest])
        _write_manifest(directory, pending)  # phase 1: old and new contents both accepted
        for tmp, name, _ in [*carried, *staged]:
            os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; these are ordinary files
            os.replace(tmp, directory / name)
        final = dict(pending)
        for _, name, digests in carried:
            if digests is not None:
                final[name] = digests
        for _, name, digest in staged:
            final[name] = [digest]
        staged, carried = [], []
        _sync_directory(directory)
        _write_manifest(directory, final)  # phase 2: only the new contents
    finally:
        for tmp, *_ in staged:
            tmp.unlink(missing_ok=True)
        for tmp, *_ in carried:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold a Ctrl-C that arrives while files are committed until the commit is done.

    A KeyboardInterrupt raised inside ``torch.save`` leaves its zip writer half-closed, and
    the writer then fails with an internal error instead of the interrupt; one between the
    renames leaves a commit half-made. The first Ctrl-C is therefore remembered and raised
    (through the handler that was installed) once the commit is complete; a second one, from
    a user who insists, interrupts at once, and the temporaries are removed as usual. Signal
    handlers belong to the main thread, so other threads commit without this.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous):  # SIG_IGN or SIG_DFL set by the embedding program: leave them
        yield
        return
    held: list[tuple[int, Any]] = []

    def hold(number: int, frame: Any) -> None:
        if held:
            previous(number, frame)
        held.append((number, frame))

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        previous(*held[0])


def write_standalone(path: str | os.PathLike[str], data: bytes, *, replace: bool = False) -> Path:
    """Write ``data`` to a file of its own (one the user named, outside any run folder: no
    manifest is written beside it), atomically. Unless ``replace``, an existing ``path`` is
    kept (``FileExistsError``), checked at the instant of the commit: the file is linked into
    place, which fails if one appeared meanwhile."""
    path = Path(path)
    tmp = _temporary(path.parent, path.name)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE)
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise
            except OSError:  # no hard links here: check, then rename (a narrow race)
                if path.exists():
                    raise FileExistsError(errno.EEXIST, "file exists", str(path)) from None
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _sync_directory(path.parent)
    return path


def previous_name(name: str) -> str:
    """``checkpoint.pt`` -> ``checkpoint.prev.pt``: where :func:`write_files` keeps the
    version a new one replaced."""
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}{PREVIOUS}.{suffix}" if dot else f"{name}{PREVIOUS}"


def read_verified(path: str | os.PathLike[str]) -> bytes:
    """The bytes of ``path``, after checking them against the checksum recorded when ravine
    wrote the file; :class:`DamagedFileError` names the file if they differ."""
    path = Path(path)
    data = path.read_bytes()
    accepted = _read_manifest(path.parent).get(path.name)
    if accepted is not None and hashlib.sha256(data).hexdigest() not in accepted:
        raise DamagedFileError(
            f"{path} is damaged: its contents no longer match the checksum ravine recorded "
            "when it wrote the file"
        )
    return data


def recorded(path: str | os.PathLike[str]) -> bool:
    """Whether ravine wrote ``path`` (its folder's manifest lists it): a file ravine may
    bring up to date, unlike one the user put there."""
    path = Path(path)
    return path.name in _read_manifest(path.parent)


def forget(path: str | os.PathLike[str]) -> None:
    """Delete a file ravine wrote, and its manifest entry."""
    path = Path(path)
    path.unlink(missing_ok=True)
    manifest = _read_manifest(path.parent)
    if path.name in manifest:
        del manifest[path.name]
        _write_manifest(path.parent, manifest)


# --------------------------------------------------------------------------------------------
# Checkpoints (torch files)
# --------------------------------------------------------------------------------------------


def save_checkpoint(
    payload: dict[str, Any], path: str | os.PathLike[str], *, keep_previous: bool = False
) -> Path:
    """``torch.save`` ``payload`` to ``path`` atomically, checksummed; with ``keep_previous``
    the file it replaces stays as ``<stem>.prev.pt`` (see :func:`load_checkpoint`)."""
    import torch

    path = Path(path)
    write_files(
        path.parent,
        {path.name: lambda handle: torch.save(payload, handle)},
        keep_previous=(path.name,) if keep_previous else (),
    )
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`: checksum checked, and only
    tensors, numbers, strings and containers unpickled (``weights_only``: a file cannot run
    code). ``FileNotFoundError``, :class:`DamagedFileError` or ``ValueError`` name the file."""
    import torch

    path = Path(path)
    try:
        data = read_verified(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path}") from None
    except IsADirectoryError:
        raise ValueError(f"checkpoint {path} is a folder, not a file") from None
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a corrupt file
        raise ValueError(f"checkpoint {path} is unreadable: {_one_line(error)}") from None


def load_latest_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any] | None, str]:
    """The newest intact checkpoint among ``path`` and its predecessor (``<stem>.prev.pt``),
    and a note saying which was used and why (empty when it is ``path`` itself).

    ``(None, "")`` when neither exists. A damaged file is never loaded; when both are
    damaged, :class:`DamagedFileError` names both.
    """
    path = Path(path)
    candidates = [c for c in (path, path.with_name(previous_name(path.name))) if c.exists()]
    problems = [] if path.exists() else [f"{path} is missing"]
    for candidate in candidates:
        try:
            state = load_checkpoint(candidate)
        except ValueError as error:  # DamagedFileError included
            problems.append(str(error))
            continue
        note = f"{'; '.join(problems)}; resumed from {candidate.name}" if problems else ""
        return state, note
    if not candidates:
        return None, ""
    raise DamagedFileError("; ".join(problems) + "; no intact checkpoint to resume from")


# --------------------------------------------------------------------------------------------
# Ownership and the lock
# --------------------------------------------------------------------------------------------


@dataclass
class Owner:
    """Who a run folder belongs to (``.ravine/owner.json``)."""

    kind: str  # "train", "compare", "tune", "study", ...
    config: str  # the run's configuration, as text (TOML or JSON): compared on resume
    finished: bool = False
    created: str = ""
    version: str = ""


_HELD: dict[Path, list[Any]] = {}  # folder -> [lock file handle, count]: locks are per process


class RunFolder:
    """A folder that one run owns; take it with :meth:`claim`, give it back with :meth:`release`
    (or use it as a context manager).

    ``claim`` decides what a new run may do with a folder:

    * missing, or empty: it is created and becomes the run's;
    * holding this very run (same kind and configuration): the run resumes in it;
    * holding another run, or files ravine did not write: :class:`FolderTakenError`, unless
      ``replace=True``, which removes the other run's files (never foreign ones) — call it
      only once the new configuration has been fully validated;
    * locked by another process: :class:`FolderInUseError`.
    """

    def __init__(self, path: Path, owner: Owner, *, resuming: bool) -> None:
        self.path = path
        self.owner = owner
        self.resuming = resuming  # the folder already held this run

    @classmethod
    def claim(
        cls,
        path: str | os.PathLike[str],
        kind: str,
        config: str,
        *,
        replace: bool = False,
        describe: Callable[[str, str], str] | None = None,
    ) -> RunFolder:
        """Lock ``path`` for a run of ``kind`` with ``config`` (see the class doc).

        ``describe(old_config, new_config)`` words the difference in the refusal message.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise FolderTakenError(f"output folder {path} exists and is not a folder")
        path.mkdir(parents=True, exist_ok=True)
        _lock(path)
        try:
            _remove_temporaries(path)
            existing = _read_owner(path)
            resuming = False
            if existing is None and _has_results(path) and not _only_ravine_files(path):
                existing = _legacy_owner(path)
                if existing is None and not replace:
                    raise FolderTakenError(
                        f"{path} holds files ravine did not write; choose an empty or new "
                        "output folder"
                    )
            if existing is not None:
                same = existing.kind == kind and existing.config == config
                if replace:
                    clear(path)
                elif same:
                    resuming = True
                else:
                    what = (
                        describe(existing.config, config)
                        if describe is not None and existing.kind == kind
                        else ""
                    )
                    state = "finished" if existing.finished else "unfinished"
                    raise FolderTakenError(
                        f"{path} holds another {state} {existing.kind} run"
                        + (f" ({what})" if what else "")
                        + "; resume it with its own configuration, choose another output "
                        "folder, or replace it (--replace)"
                    )
            owner = existing if resuming else _new_owner(kind, config)
            folder = cls(path, owner, resuming=resuming)
            if not resuming:
                folder._write_owner()
            return folder
        except BaseException:
            _unlock(path)
            raise

    def finish(self) -> None:
        """Record that the run wrote all its results."""
        self.owner.finished = True
        self._write_owner()

    def unfinish(self) -> None:
        """Record that the run is writing again (a resumed or extended run)."""
        if self.owner.finished:
            self.owner.finished = False
            self._write_owner()

    def release(self) -> None:
        _unlock(self.path)

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _write_owner(self) -> None:
        _write_checked_json(self.path / BOOKKEEPING / OWNER, dict(self.owner.__dict__))


@contextlib.contextmanager
def locked(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold ``path``'s lock for a short write into a folder another run owns (a probe's
    results in a training run's folder)."""
    path = Path(path)
    _lock(path)
    try:
        _remove_temporaries(path)
        yield path
    finally:
        _unlock(path)


def clear(path: Path) -> None:
    """Remove every file ravine's manifests list under ``path`` (the run it held), the owner
    record, and folders that end up empty; files ravine did not write stay."""
    for manifest in sorted(path.rglob(f"{BOOKKEEPING}/{MANIFEST}"), reverse=True):
        directory = manifest.parent.parent
        for name in _read_manifest(directory):
            (directory / name).unlink(missing_ok=True)
        manifest.unlink()
        if directory != path:
            with contextlib.suppress(OSError):
                (directory / BOOKKEEPING).rmdir()
                directory.rmdir()
    for name in _LEGACY_FILES:  # written before manifests existed
        (path / name).unlink(missing_ok=True)
    (path / BOOKKEEPING / OWNER).unlink(missing_ok=True)


def holder(path: str | os.PathLike[str]) -> Owner | None:
    """The owner record of a run folder (None if it has none)."""
    return _read_owner(Path(path))


# --------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------

# What ravine wrote into run folders before owner records existed: a folder holding any of
# these is treated as a run of the configuration in its config.toml.
_LEGACY_FILES = (
    "config.toml",
    "checkpoint.pt",
    "restarts_checkpoint.pt",
    "model.pt",
    "metrics.jsonl",
    "steps.csv",
    "summary.json",
    "restarts.json",
    "restarts.csv",
)


def _has_results(path: Path) -> bool:
    return any(entry.name != BOOKKEEPING for entry in path.iterdir())


def _only_ravine_files(path: Path) -> bool:
    """Whether every file under ``path`` is one a ravine manifest lists (e.g. a data cache
    the run's own config put in its output folder before the run claimed it)."""
    for entry in path.rglob("*"):
        if BOOKKEEPING in entry.parts or not entry.is_file():
            continue
        if entry.name not in _read_manifest(entry.parent):
            return False
    return True


def _legacy_owner(path: Path) -> Owner | None:
    config = path / "config.toml"
    if not config.is_file():
        return None
    try:
        text = read_verified(config).decode("utf-8")
    except (UnicodeDecodeError, DamagedFileError):
        return Owner(kind="train", config="<unreadable config.toml>")
    return Owner(kind="train", config=text, finished=(path / "model.pt").exists())


def _new_owner(kind: str, config: str) -> Owner:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ravine_version = version("ravine")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        ravine_version = "unknown"
    return Owner(
        kind=kind,
        config=config,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        version=ravine_version,
    )


def _read_owner(path: Path) -> Owner | None:
    record = path / BOOKKEEPING / OWNER
    if not record.exists():
        return None
    try:
        fields = _read_checked_json(record)
        return Owner(**{k: fields[k] for k in Owner.__dataclass_fields__ if k in fields})
    except (ValueError, TypeError, KeyError):
        raise DamagedFileError(
            f"{record} is damaged: ravine cannot tell which run owns {path}; move the folder's "
            "results elsewhere or replace them (--replace)"
        ) from None


def _lock(path: Path) -> None:
    key = path.resolve()
    if key in _HELD:
        _HELD[key][1] += 1
        return
    (path / BOOKKEEPING).mkdir(parents=True, exist_ok=True)
    handle = open(path / BOOKKEEPING / LOCK, "a+")  # noqa: SIM115 - held until _unlock
    try:
        _try_lock(handle)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip() or "unknown"
        handle.close()
        raise FolderInUseError(
            f"{path} is in use by another ravine process (pid {pid}); wait for it to finish "
            "or choose another output folder"
        ) from None
    except BaseException:
        handle.close()
        raise
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    _HELD[key] = [handle, 1]


def _unlock(path: Path) -> None:
    key = path.resolve()
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] == 0:
        del _HELD[key]
        held[0].close()  # closing drops the flock


def _try_lock(handle) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            raise BlockingIOError from None
        return
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def _remove_temporaries(path: Path) -> None:
    # Only under the lock: then no writer is alive that could still rename them.
    for directory in (path, *[m.parent.parent for m in path.glob(f"*/{BOOKKEEPING}")]):
        for folder in (directory, directory / BOOKKEEPING):
            if not folder.is_dir():
                continue
            for entry in folder.iterdir():
                if _TEMPORARY.match(entry.name) and entry.is_file():
                    entry.unlink(missing_ok=True)


def _temporary(directory: Path, name: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _copy(source: Path, target: Path) -> None:
    with open(source, "rb") as src, open(target, "wb") as dst:
        for block in iter(lambda: src.read(1 << 20), b""):
            dst.write(block)
        dst.flush()
        os.fsync(dst.fileno())


def _dedupe(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _read_manifest(directory: Path) -> dict[str, list[str]]:
    path = directory / BOOKKEEPING / MANIFEST
    if not path.exists():
        return {}
    try:
        return {name: list(digests) for name, digests in _read_checked_json(path).items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        raise DamagedFileError(
            f"{path} is damaged: the checksums of the files in {directory} cannot be checked"
        ) from None


def _write_manifest(directory: Path, files: dict[str, list[str]]) -> None:
    _write_checked_json(directory / BOOKKEEPING / MANIFEST, files)


def _read_checked_json(path: Path) -> Any:
    """What :func:`_write_checked_json` wrote; ``ValueError`` if it was damaged since."""
    document = json.loads(path.read_bytes())
    if hashlib.sha256(_canonical(document["data"])).hexdigest() != document["sha256"]:
        raise ValueError(f"{path}: checksum mismatch")
    return document["data"]


def _write_checked_json(path: Path, data: Any) -> None:
    # Bookkeeping carries its own checksum (a manifest cannot list itself), so damage to it
    # is detected too.
    document = {"data": data, "sha256": hashlib.sha256(_canonical(data)).hexdigest()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path.parent, path.name)
    try:
        with open(tmp, "wb") as handle:
            handle.write(json.dumps(document, indent=1, sort_keys=True).encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)


def _canonical(files: Any) -> bytes:
    return json.dumps(files, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _sync_directory(directory: Path) -> None:
    # The rename itself reaches the disk only when the directory is synced.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError as error:  # some file systems refuse fsync on a directory
        if error.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300]
