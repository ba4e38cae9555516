"""Regenerate README.md's result tables and the times it quotes from the commands it documents.

README's numbers drift whenever the code changes (a faster step, a changed rule); this script
runs each documented command and rewrites what README shows of its output between marker
comments, so a README can always be brought back in line with one command:

    python scripts/readme_numbers.py                 # the quick sections (about 2 minutes)
    python scripts/readme_numbers.py --all           # also the slow ones (study, reference runs)
    python scripts/readme_numbers.py --only tune-default --check   # exit 1 if README would change

A section is a block of README between

    <!-- ravine:begin NAME -->
    ...
    <!-- ravine:end NAME -->

(on their own lines around a fenced block, or inline around a number). Sections named in
``SECTIONS`` are regenerated; a section whose begin marker says ``not rerun`` (the benchmark
tables, which take many minutes of a quiet machine) is left as it is, its command named in the
marker. Every command runs in a fresh temporary folder with ravine's default output folder, so
the paths it prints are the paths a user sees. ``--small`` runs every command at a tiny size
(the test does, to check the format without the wait); its numbers are not for README.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN = re.compile(r"<!-- ravine:begin (?P<name>[a-z0-9-]+)(?P<note>[^>]*)-->")
END = "<!-- ravine:end {name} -->"


@dataclass(frozen=True)
class Output:
    """What one command printed, how long it took (wall seconds, start-up included) and how
    busy the machine was meanwhile (load average over the run's last minute)."""

    text: str
    seconds: float
    load: float = 0.0


@dataclass(frozen=True)
class Section:
    """One README section: the command that produces it, at README's size and a tiny one, and
    how to turn its output into the section's new text."""

    argv: tuple[str, ...]  # after "ravine"
    small: tuple[str, ...]  # the same command at a size the test can afford
    render: Callable[[Output], str]
    slow: bool = False  # minutes: only with --all
    run_as: str = ""  # another section whose run this one reuses (a time it quotes)


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines()]


def first_table(output: Output) -> str:
    """The title line and the first rich table (down to its bottom border), as a text block."""
    lines = _lines(output.text)
    top = next(i for i, line in enumerate(lines) if line.startswith("┏"))
    bottom = next(i for i in range(top, len(lines)) if lines[i].startswith("└"))
    return _fence("\n".join(lines[_title_start(lines, top) : bottom + 1]))


def _title_start(lines: list[str], top: int) -> int:
    """First line of the title above the table starting at ``top`` (a title wider than its
    table wraps onto several lines; a blank line or a table's border ends it)."""
    start = top
    while start > 0 and lines[start - 1].strip() and not lines[start - 1].startswith("└"):
        start -= 1
    return start


def tables_and_lines(first: str, last: str) -> Callable[[Output], str]:
    """Everything from the line starting ``first`` to the line starting ``last``."""

    def render(output: Output) -> str:
        lines = _lines(output.text)
        start = next(i for i, line in enumerate(lines) if line.startswith(first))
        end = max(i for i, line in enumerate(lines) if line.startswith(last))
        return _fence("\n".join(lines[start : end + 1]))

    return render


def all_tables(output: Output) -> str:
    """Every table the command printed, each with its title line, blank lines between."""
    lines = _lines(output.text)
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].startswith("┏"):
            end = next(j for j in range(i, len(lines)) if lines[j].startswith("└"))
            blocks.append("\n".join(lines[_title_start(lines, i) : end + 1]))
            i = end
        i += 1
    return _fence("\n\n".join(blocks))


def seconds(output: Output) -> str:
    """The command's wall time, rounded as README quotes times ("47 s", "9.4 s"), with the
    load average when other work shared the CPUs (a time from a busy machine says so)."""
    value = output.seconds
    text = f"{value:.1f} s" if value < 10 else f"{value:.0f} s"
    busy = output.load >= 1.5
    return text + (f" at load average {output.load:.0f}" if busy else "")


def _fence(text: str) -> str:
    return f"```text\n{text}\n```"


SECTIONS: dict[str, Section] = {
    "compare-default": Section(
        ("compare",),
        ("compare", "--problem", "rosenbrock", "--steps", "20", "--starts", "2", "--no-plots"),
        first_table,
    ),
    "compare-seconds": Section((), (), seconds, run_as="compare-default"),
    "tune-default": Section(
        ("tune",),
        ("tune", "--trials", "2", "--batch", "2", "--epochs", "1"),
        tables_and_lines("adam on digits", "wrote "),
    ),
    "tune-seconds": Section((), (), seconds, run_as="tune-default"),
    "study-default": Section(
        ("study",),
        (
            "study",
            "--optimizer",
            "sgd",
            "--task",
            "digits_mlp",
            "--trials",
            "1",
            "--seeds",
            "2",
            "--tune-seeds",
            "1",
            "--epochs",
            "1",
        ),
        all_tables,
        slow=True,
    ),
    "study-seconds": Section((), (), seconds, slow=True, run_as="study-default"),
}


def run_command(argv: Sequence[str], cwd: Path) -> Output:
    """``ravine ARGV`` in ``cwd`` (a fresh folder: default output folders, nothing resumed),
    printing into a pipe, as README's blocks show it."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else src
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "ravine", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"ravine {' '.join(argv)} exited {done.returncode}: {done.stderr}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return Output(done.stdout, elapsed, load)


def sections_in(readme: str) -> dict[str, tuple[int, int, str]]:
    """``{name: (start, end, note)}``: the text between each pair of markers; a begin marker
    without its end, or a name used twice, is an error naming it."""
    found: dict[str, tuple[int, int, str]] = {}
    for match in BEGIN.finditer(readme):
        name = match["name"]
        if name in found:
            raise ValueError(f"README section {name!r} appears twice")
        end = readme.find(END.format(name=name), match.end())
        if end < 0:
            raise ValueError(f"README section {name!r} has no {END.format(name=name)!r}")
        found[name] = (match.end(), end, match["note"].strip())
    return found


def regenerate(
    readme: str,
    names: Sequence[str] | None = None,
    *,
    slow: bool = False,
    small: bool = False,
    runner: Callable[[Sequence[str], Path], Output] = run_command,
) -> tuple[str, dict[str, str]]:
    """README with the chosen sections rewritten; also ``{name: new text}``. Unknown names in
    README (neither regenerated here nor marked ``not rerun``) are an error, so a section can
    not silently stop being maintained."""
    present = sections_in(readme)
    for name, (_, _, note) in present.items():
        if name not in SECTIONS and "not rerun" not in note:
            raise ValueError(
                f"README section {name!r} is neither regenerated by this script nor marked "
                "'not rerun'"
            )
    chosen = [n for n in (names or SECTIONS) if n in SECTIONS and (slow or not SECTIONS[n].slow)]
    missing = [n for n in chosen if n not in present]
    if names and missing:
        raise ValueError(f"README has no section {', '.join(map(repr, missing))}")
    outputs: dict[str, Output] = {}
    texts: dict[str, str] = {}
    for name in chosen:
        if name not in present:
            continue
        section = SECTIONS[name]
        source = section.run_as or name
        if source not in outputs:
            spec = SECTIONS[source]
            with tempfile.TemporaryDirectory(prefix="ravine-readme-") as folder:
                outputs[source] = runner(spec.small if small else spec.argv, Path(folder))
        texts[name] = section.render(outputs[source])
    for name, text in texts.items():  # rewrite back to front would be safer; re-find instead
        start, end, _ = sections_in(readme)[name]
        inline = "\n" not in readme[start:end]
        readme = readme[:start] + (text if inline else f"\n{text}\n") + readme[end:]
    return readme, texts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--only", nargs="+", choices=sorted(SECTIONS), help="these sections")
    parser.add_argument("--all", action="store_true", help="also the slow sections")
    parser.add_argument("--small", action="store_true", help="tiny commands (format check)")
    parser.add_argument("--check", action="store_true", help="exit 1 if README would change")
    args = parser.parse_args(argv)
    before = args.readme.read_text(encoding="utf-8")
    after, texts = regenerate(before, args.only, slow=args.all or bool(args.only), small=args.small)
    for name, text in texts.items():
        print(f"{name}: {len(text.splitlines())} lines")
    if args.check:
        return int(after != before)
    if after != before:
        args.readme.write_text(after, encoding="utf-8")
        print(f"rewrote {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
