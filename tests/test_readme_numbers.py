"""scripts/readme_numbers.py: README's result sections are regenerated from the commands."""

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "readme_numbers", ROOT / "scripts" / "readme_numbers.py"
)
readme_numbers = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("readme_numbers", readme_numbers)  # dataclasses look their module up
_spec.loader.exec_module(readme_numbers)


def test_every_readme_section_is_regenerated_or_names_its_benchmark():
    sections = readme_numbers.sections_in((ROOT / "README.md").read_text())
    assert set(readme_numbers.SECTIONS) <= set(sections)  # nothing the script makes is lost
    for name, (_, _, note) in sections.items():
        if name not in readme_numbers.SECTIONS:
            assert note.startswith("(not rerun: ") and ("benchmarks/" in note or "ravine" in note)


def test_markers_must_pair_and_unknown_sections_are_refused():
    with pytest.raises(ValueError, match="has no '<!-- ravine:end x -->'"):
        readme_numbers.sections_in("<!-- ravine:begin x -->\n```text\n```\n")
    with pytest.raises(ValueError, match="neither regenerated"):
        readme_numbers.regenerate("<!-- ravine:begin odd -->1<!-- ravine:end odd -->", [])


def test_small_run_rewrites_a_copy_of_readme_in_readmes_format(tmp_path):
    # The real commands at a tiny size, on a copy: the tables must come out as README shows
    # them (title line, rich table, nothing cut off) and the times as "N s".
    copy = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", copy)
    before = copy.read_text()
    code = readme_numbers.main(
        ["--readme", str(copy), "--small", "--only", "compare-default", "compare-seconds"]
    )
    assert code == 0
    after = copy.read_text()
    sections = readme_numbers.sections_in(after)
    start, end, _ = sections["compare-default"]
    block = after[start:end].strip().splitlines()
    assert block[0] == "```text" and block[-1] == "```"
    assert block[1].startswith("rosenbrock: Rosenbrock valley")  # the title, then the table
    top = next(i for i, line in enumerate(block) if line.startswith("┏"))
    assert block[-2].startswith("└")
    header = block[top + 1]
    for column in ("optimizer", "success", "steps", "final", "best", "dist", "div."):
        assert column in header
    rows = [line for line in block if line.startswith("│ ")]
    assert len(rows) == 8 and "…" not in "".join(block)  # 8 optimizers, no number cut off
    start, end, _ = sections["compare-seconds"]
    assert re.fullmatch(r"[0-9.]+ s( at load average [0-9]+)?", after[start:end])
    untouched = readme_numbers.sections_in(before)["tune-default"]
    assert before[untouched[0] : untouched[1]] in after  # sections not asked for stay as they were
