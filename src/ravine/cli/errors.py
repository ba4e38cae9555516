"""The CLI's one error boundary: which failures are the user's to fix, and the line each prints.

Exit codes:

- 0: done.
- 1: a run diverged (NaN/Inf, documented by ``ravine train``), or a bug in ravine: one line
  says which, and ``RAVINE_DEBUG=1`` prints the traceback to put in a bug report.
- 2: something the user can fix: bad options or values, a config or run folder that cannot
  be used, files and disks (missing, unreadable, read-only, full), not enough memory.
  One line, ``error: ...``, never a traceback.
- 130: interrupted (Ctrl-C).

Every exception is mapped here and only here (:func:`describe`); commands raise
:class:`UsageFailure` for what they check themselves, the library raises ``ConfigError``
(``ravine.train``) for bad configs and run folders.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import traceback

EXIT_FAILED = 1  # a diverged run, or a bug
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DEBUG_ENV = "RAVINE_DEBUG"
_MAX_LINE = 600  # characters of one message; longer ones are cut


class UsageFailure(Exception):
    """Bad input found by a command; ``main`` prints it on one line and exits 2."""


class Interrupted(Exception):
    """Ctrl-C during a run; the message says where its last checkpoint is and the command
    that resumes it (exit 130)."""


# What the operating system says, in words that name the fix. ``{path}`` is the file.
_OS_ERRORS = {
    errno.ENOSPC: "no space left on the device while writing {path}; free some space "
    "(a training run resumes from its last checkpoint when run again)",
    errno.EDQUOT: "disk quota exceeded while writing {path}",
    errno.EROFS: "{path} is on a read-only file system; choose another output folder",
    errno.EACCES: "permission denied: {path}",
    errno.EPERM: "operation not permitted: {path}",
    errno.ENOENT: "no such file or folder: {path}",
    errno.EISDIR: "{path} is a folder, expected a file",
    errno.ENOTDIR: "{path}: part of this path is a file, not a folder",
    errno.EEXIST: "{path} already exists and is not a folder",
    errno.ENAMETOOLONG: "file name too long: {path}",
    errno.ELOOP: "too many levels of symbolic links: {path}",
    errno.EFBIG: "file too large: {path}",
    errno.EIO: "input/output error on {path} (a failing disk?)",
    errno.EMFILE: "too many open files (raise the limit with ulimit -n)",
    errno.ENFILE: "too many open files in the system",
    errno.ENOMEM: "not enough memory",
    errno.ENXIO: "{path}: no such device",
    errno.ENODEV: "{path}: no such device",
    errno.ETXTBSY: "{path} is busy",
    errno.EBUSY: "{path} is busy",
}
_OOM = re.compile(r"can't allocate memory|out of memory|not enough memory", re.IGNORECASE)
_ALLOC_BYTES = re.compile(r"allocate (\d+) bytes")


class _Context:
    """What the command was doing, so an OS error without a file name can still name one."""

    output: str | None = None


def note_output(path: os.PathLike | str) -> None:
    """Record the folder the running command writes to (named in disk-full messages)."""
    _Context.output = str(path)


def describe(error: BaseException) -> tuple[int, str]:
    """``(exit code, one line)`` for an exception that reached the top of a command."""
    from ravine.train.config import ConfigError  # torch-free

    try:  # recent typer vendors its own click; older releases use click itself
        from typer._click import exceptions as click
    except ImportError:  # pragma: no cover - depends on the installed typer
        from click import exceptions as click

    from ravine.folders import DamagedFileError, FolderInUseError, FolderTakenError
    from ravine.limits import SettingError

    if isinstance(error, Interrupted):
        return EXIT_INTERRUPTED, one_line(str(error))
    user = (UsageFailure, ConfigError, SettingError, DamagedFileError, FolderInUseError,
            FolderTakenError)  # fmt: skip
    if isinstance(error, user):
        return EXIT_USAGE, one_line(str(error))
    if isinstance(error, click.UsageError):  # unknown option or command, unparsable value
        command = error.ctx.command_path if error.ctx else "ravine"
        return EXIT_USAGE, one_line(f"{error.format_message()} (see '{command} --help')")
    if isinstance(error, click.ClickException):
        return EXIT_USAGE, one_line(error.format_message())
    import typer

    if isinstance(error, KeyboardInterrupt | typer.Abort):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(error, MemoryError) or (
        isinstance(error, RuntimeError) and _OOM.search(str(error))
    ):
        return EXIT_USAGE, _memory_message(error)
    if isinstance(error, RecursionError):
        return EXIT_USAGE, "the input nests too deeply to read (RecursionError)"
    if isinstance(error, UnicodeDecodeError):
        return EXIT_USAGE, (
            f"a file is not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset "
            f"{error.start}): {one_line(error.reason)}"
        )
    if isinstance(error, OSError):
        return EXIT_USAGE, _os_message(error)
    return EXIT_FAILED, (
        f"internal error (a bug in ravine): {type(error).__name__}: {one_line(str(error))}. "
        f"Please report it with the traceback that {DEBUG_ENV}=1 prints"
    )


def report(error: BaseException) -> int:
    """Print ``error`` as :func:`describe` says (its traceback first under ``RAVINE_DEBUG``);
    return the exit code."""
    code, message = describe(error)
    if os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
        _print_traceback(error)
    prefix = "" if code == EXIT_INTERRUPTED else "error: "
    print_line(prefix + message)
    return code


def print_line(text: str) -> None:
    """One line on stderr, whatever the text holds (undecodable file names included)."""
    stream = sys.stderr
    encoding = getattr(stream, "encoding", None) or "utf-8"
    safe = text.encode(encoding, "backslashreplace").decode(encoding, "replace")
    try:
        stream.write(safe + "\n")
        stream.flush()
    except (OSError, ValueError):  # stderr closed: nothing left to tell
        pass


def one_line(text: str) -> str:
    """``text`` as one line of at most 600 characters, without torch's C++ backtrace."""
    # torch appends a C++ backtrace ("Exception raised from ...") to some messages.
    lines = []
    for line in str(text).splitlines():
        if line.startswith("Exception raised from"):
            break
        if line.strip():
            lines.append(line.strip())
    text = " ".join(lines) or "(no message)"
    return text if len(text) <= _MAX_LINE else text[: _MAX_LINE - 3] + "..."


def _os_message(error: OSError) -> str:
    path = error.filename
    if path is None:
        path = _Context.output or "the output folder"
    path = os.fsdecode(path) if isinstance(path, bytes) else str(path)
    # The atomic writer's temporary sibling ".NAME.RANDOM.tmp" stands for NAME.
    head, _, name = path.rpartition("/")
    temporary = re.fullmatch(r"\.(.+)\.[^.]+\.tmp", name)
    if temporary:
        path = f"{head}/{temporary.group(1)}" if head else temporary.group(1)
    template = _OS_ERRORS.get(error.errno) if error.errno is not None else None
    if template is not None:
        return one_line(template.format(path=path))
    if error.errno is None:  # raised by ravine or a library with its own message
        return one_line(str(error))
    reason = error.strerror or str(error)
    return one_line(f"{reason}: {path}")


def _memory_message(error: BaseException) -> str:
    found = _ALLOC_BYTES.search(str(error))
    from ravine.limits import format_bytes

    wanted = f" (it tried to allocate {format_bytes(int(found.group(1)))})" if found else ""
    return (
        f"not enough memory{wanted}; use a smaller model, fewer restarts or starts, or "
        "smaller batches"
    )


def _print_traceback(error: BaseException) -> None:
    # Show the causes that ``raise ... from None`` hid: a bug report wants all of them.
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__suppress_context__ = False
        link = link.__cause__ or link.__context__
    traceback.print_exception(error, file=sys.stderr)
