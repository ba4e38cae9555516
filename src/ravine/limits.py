"""The bounds ravine puts on sizes and counts, in one place (the README's "Limits" lists them).

They sit far beyond what a real run needs. They exist so that a slip (three zeros too many, a
seed pasted from elsewhere) is refused at once with a message, instead of overflowing a 64-bit
integer deep inside torch, exhausting memory, or starting a run that would never end.

This module imports nothing heavy: the CLI checks input against it before ``import torch``.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Every integer setting fits a signed 64-bit integer (torch sizes, numpy, TOML).
MAX_INT = 2**63 - 1
#: A training run's seed: ``ravine.train.loop.seeds`` derives ``4 * seed + 3`` (and restart k
#: uses ``seed + k``), and torch's generators take seeds below 2**64.
MAX_SEED = 2**62 - 1
#: ``ravine compare``'s seed: problem i's starts are drawn from seed ``seed * 1_000_003 + i``.
MAX_COMPARE_SEED = 2**44 - 1
#: Updates one run may ask for (a training run, or one optimizer on one compare problem).
#: ``RAVINE_MAX_UPDATES`` raises (or lowers) it.
DEFAULT_MAX_UPDATES = 100_000_000
#: Hidden layers of a model (Xiao et al. 2018 trained 10,000-layer CNNs).
MAX_DEPTH = 10_000
#: Units of a hidden layer and channels of a convolution.
MAX_WIDTH = 1_000_000
#: Coordinates of an analytic problem; the rotated quadratic holds a dense (dim, dim) matrix.
MAX_PROBLEM_DIM = 1_000_000
MAX_QUADRATIC_DIM = 4_096
#: ``ravine landscape --resolution``: grid points per axis (a surface evaluates the square).
MAX_RESOLUTION = 1_000
#: ``ravine probe --k``: top and bottom Hessian eigenvalues (Lanczos keeps about 2k vectors).
MAX_EIGENVALUES = 1_000
#: Arrays and inline tables inside a config value (a per-layer list is one level).
MAX_NESTING = 8
#: A config file larger than this is not a ravine config (and /dev/zero would never end).
MAX_CONFIG_BYTES = 1 << 20


class SettingError(ValueError):
    """An environment variable that sets a limit (``RAVINE_MAX_UPDATES``, ...) is unusable."""


def max_updates() -> int:
    """:data:`DEFAULT_MAX_UPDATES`, or ``RAVINE_MAX_UPDATES`` when set to a positive integer."""
    raw = os.environ.get("RAVINE_MAX_UPDATES", "").strip().replace("_", "")
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value >= 1:
            return value
        raise SettingError(f"RAVINE_MAX_UPDATES must be a positive integer, got {raw!r}")
    return DEFAULT_MAX_UPDATES


def memory_limit() -> int | None:
    """Bytes a run may plan to use: ``RAVINE_MEMORY_LIMIT`` (e.g. ``64G``) when set, else the
    machine's physical memory (or the container's cgroup limit, when lower); ``None`` when
    neither can be read, in which case nothing is refused for its size."""
    raw = os.environ.get("RAVINE_MEMORY_LIMIT", "").strip()
    if raw:
        return parse_bytes(raw, "RAVINE_MEMORY_LIMIT")
    sizes = [s for s in (_physical_memory(), _cgroup_memory()) if s]
    return min(sizes) if sizes else None


def parse_bytes(text: str, name: str) -> int:
    """``"512M"``, ``"64G"``, ``"1.5T"`` or a plain number of bytes."""
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    body = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = body[-1:] if body[-1:] in units else ""
    try:
        value = float(body[: len(body) - len(unit)]) * units[unit]
    except ValueError:
        value = -1.0
    if not 0 < value < 2**63:
        raise SettingError(f"{name} must be a size such as 64G or 512M, got {text!r}")
    return int(value)


def format_bytes(n: float) -> str:
    """``1536 -> "1.5 KiB"``: sizes in messages."""
    if n >= 1024**6:
        return f"{float(n):.1e} bytes"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.0f} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def format_count(n: int) -> str:
    """``123456789 -> "123,456,789"``, and huge numbers as powers of ten (``"1.0e+30"``)."""
    return f"{n:,}" if n < 10**15 else f"{float(n):.1e}"


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX (Windows), or not reported
        return None


def _cgroup_memory() -> int | None:
    # A container may hold far less than the machine it runs on (cgroup v2, then v1).
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < 2**62:  # "max", or v1's huge "no limit"
            return int(text)
    return None


#: Intra-op threads ``--threads`` may ask for (torch allocates a pool of that many).
MAX_THREADS = 1_024
