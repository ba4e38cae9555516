"""The report in a real browser: headless Chromium (the system's, never a downloaded one)
opens it from disk with the network cut off, every image decodes, nothing logs an error, and a
screenshot is saved.

Skipped, with the reason, only where no Chromium is installed and ``CI`` is not set; in CI
(``.ci/run`` installs Chromium from the distribution's packages) a missing browser fails.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ravine.cli.main import main

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium() -> str:
    """The system's Chromium, or skip (locally) / fail (CI) saying what is missing."""
    found = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        found, missing = None, 'the playwright package (pip install -e ".[dev]")'
    else:
        missing = "a Chromium binary (apt-get install chromium)"
    if found is None:
        message = f"the browser test needs {missing}"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must run it")
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium, started once for the module."""
    path = chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(executable_path=path, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def render(browser, report: Path, screenshot: Path) -> dict:
    """Open ``report`` in a fresh offline page; what rendered, what the console said."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, offline=True)
    try:
        page = context.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
        page.goto(report.as_uri(), wait_until="load")
        images = page.evaluate(
            "Array.from(document.images).map(i => "
            "({alt: i.alt, complete: i.complete, width: i.naturalWidth}))"
        )
        # Every folded table too: open them and measure that rows are laid out.
        page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
        rows = page.evaluate(
            "Array.from(document.querySelectorAll('tbody tr')).filter(r => r.offsetHeight > 0)"
            ".length"
        )
        page.screenshot(path=str(screenshot), full_page=True)
    finally:
        context.close()
    return {"images": images, "problems": problems, "rows": rows}


def test_a_run_report_renders_in_chromium(browser, watched_run, tmp_path):
    seen = render(browser, watched_run / "report.html", tmp_path / "report.png")
    figures = sorted(p.name for p in watched_run.glob("*.png"))
    assert sorted(i["alt"] for i in seen["images"]) == figures
    assert all(i["complete"] and i["width"] > 0 for i in seen["images"]), seen["images"]
    assert seen["problems"] == []
    assert seen["rows"] > 0
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_side_by_side_report_renders_in_chromium(browser, watched_run, compare_run, tmp_path):
    out = tmp_path / "side-by-side.html"
    assert main(["report", str(watched_run), str(compare_run), "--out", str(out)]) == 0
    seen = render(browser, out, tmp_path / "side-by-side.png")
    assert seen["images"] and all(i["complete"] and i["width"] > 0 for i in seen["images"])
    assert seen["problems"] == []
