"""The gallery page in a real browser: headless Chromium driven by Playwright.

The page comes from a real ``demo`` run, plus a real ``batch --gallery`` into
the same folder whose prompt carries a ``<script>``. Chromium is Debian's
(``/usr/bin/chromium``; Playwright never downloads a browser here). Without
it, or without the ``playwright`` package, the test is skipped, except under
CI (``$CI`` set), where that is an error: ``.ci/run`` installs Chromium.

Why Playwright rather than Selenium: it drives the Chromium binary itself
(no ChromeDriver of exactly the same version to install beside it), and its
waits (``wait_for_function``) keep the test free of sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from banana_async.cli.gallery import GALLERY, MANIFEST, read_gallery
from tests.test_cli import FAST, ServerThread, env, run_cli, run_main, threaded

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

__all__ = ["env", "threaded"]  # the fixtures, used here by name

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "build" / "gallery.png"
"""Kept after the run (CI keeps build/ as its artifacts)."""

INSTALL = (
    "the browser test needs Chromium and Playwright: `apt-get install -y chromium` "
    "and `pip install -e '.[test]'` (Playwright drives /usr/bin/chromium, it downloads "
    "no browser)"
)

# What lets Chromium start as root in a container and keeps it off the network
# (this machine refuses connections to the outside; without these flags
# Chromium keeps trying its update and sync hosts).
CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

EVIL = "<script>window.__pwned = 1</script><img src=x onerror='window.__pwned = 2'> a red kite"


def _chromium() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture
def chromium() -> str:
    """Chromium's path, or a skip (an error under CI) when it or Playwright is missing."""
    executable = _chromium()
    if importlib.util.find_spec("playwright") is None:
        executable = None
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail(INSTALL)
        pytest.skip(INSTALL)
    return executable


@contextlib.contextmanager
def headless(executable: str, profile: Path) -> Iterator[BrowserContext]:
    """A headless Chromium with a fresh profile (``--user-data-dir``).

    Started only once the CLI has run: Playwright's blocking API keeps an
    event loop running in this thread while it is open.
    """
    # Imported here: the package is optional (see the chromium fixture).
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=executable,
            headless=True,
            args=list(CHROMIUM_FLAGS),
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


def _visible_prompts(page: Page) -> list[str]:
    return [
        text or "" for text in page.locator("figure.card:not([hidden]) .prompt").all_text_contents()
    ]


def test_the_demos_gallery_in_chromium(
    chromium: str,
    capsys: pytest.CaptureFixture[str],
    env: ServerThread,
    tmp_path: Path,
) -> None:
    # The README's command, as a newcomer runs it; then a batch into its folder.
    code, text, err = asyncio.run(run_cli("demo", cwd=tmp_path))
    assert code == 0, err
    out = tmp_path / "banana-demo-out"
    assert f"open it in a browser: {(out / GALLERY).as_uri()}" in text
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(EVIL + "\n")
    code, _, err = run_main(capsys, "batch", str(prompts), "--out", str(out), "--gallery", *FAST)
    assert code == 0, err
    # The batch's image moved into a subfolder (a name to quote), the
    # manifest told so; the page is written again.
    *lines, last = (out / MANIFEST).read_text().splitlines()
    moved = json.loads(last)
    (out / "a sub folder").mkdir()
    Path(moved["file"]).rename(out / "a sub folder" / "kite #1.png")
    moved["file"] = "a sub folder/kite #1.png"
    (out / MANIFEST).write_text("\n".join([*lines, json.dumps(moved)]) + "\n")
    code, _, err = run_main(capsys, "gallery", str(out))
    assert code == 0, err
    assert read_gallery(out).counts()["images"] == 19  # 18 of the demo's, 1 of the batch's

    # Another folder (with a space: the URLs are quoted): the page must not
    # depend on where the run wrote it.
    copy = shutil.copytree(out, tmp_path / "copied elsewhere")
    with headless(chromium, tmp_path / "profile") as browser:
        _check_the_page(browser.new_page(), copy / GALLERY)


def _check_the_page(page: Page, path: Path) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text))
    page.goto(path.as_uri())

    # Thumbnails load lazily: bring each into view, then wait for all of them.
    cards = page.locator("figure.card")
    assert cards.count() == 19
    for index in range(cards.count()):
        cards.nth(index).locator("img").scroll_into_view_if_needed()
    page.wait_for_function(
        "Array.from(document.querySelectorAll('figure.card img')).every(i => i.complete)"
    )
    widths = page.eval_on_selector_all(
        "figure.card img", "images => images.map(i => i.naturalWidth)"
    )
    assert len(widths) == 19
    assert all(width > 0 for width in widths), widths

    # The prompt with a script is shown as text, and nothing of it ran.
    assert EVIL in _visible_prompts(page)
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.locator("img[src=x]").count() == 0
    assert page.locator("#counts").text_content() == "19 images · 2 failed · 0 unconfirmed"
    runs = page.locator("#runs").text_content() or ""
    assert runs.startswith("All 2 runs into this folder are shown"), runs
    assert "19 images in all, 1 of them from the latest run" in runs
    assert page.locator("img[src='a%20sub%20folder/kite%20%231.png']").count() == 1
    assert "content policy violation" in (page.locator(".list").text_content() or "")

    # The filter hides the cards whose prompt lacks the words typed.
    page.fill("#filter", "lighthouse DUSK")
    assert _visible_prompts(page) == ["a lighthouse at dusk, oil painting"]
    assert page.locator("#shown").text_content() == "1 of 21 shown"  # cards and the failure
    page.fill("#filter", "<script>")
    assert _visible_prompts(page) == [EVIL]
    page.fill("#filter", "")
    assert len(_visible_prompts(page)) == 19

    # A click shows the full image, loaded, over the page.
    page.locator("figure.card a.full").first.click()
    viewer = page.locator("dialog#viewer")
    assert viewer.get_attribute("open") is not None
    page.wait_for_function("document.querySelector('dialog#viewer img').complete")
    assert page.evaluate("document.querySelector('dialog#viewer img').naturalWidth") > 0
    viewer.click()
    assert viewer.get_attribute("open") is None

    page.evaluate("window.scrollTo(0, 0)")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOT, full_page=True)
    assert SCREENSHOT.read_bytes().startswith(b"\x89PNG")
    assert errors == []  # no script error, and no blocked script or style
    print(f"screenshot: {SCREENSHOT}", file=sys.stderr)
