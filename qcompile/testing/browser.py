"""Open report.html in a headless Chromium (through Playwright) offline, check it, and screenshot it.

`load_page` opens a page from its file:// URL with every request that is not file:// or data: aborted
and recorded, and collects what a reviewer would look at: console messages, page errors, the bounding
boxes of the charts, and the `data-value` cells with their shown text. `screenshot` writes a full-page
PNG; as a script:

    .venv/bin/python -m qcompile.testing.browser OUTDIR/report.html docs/img/report.png

Needs the `playwright` package (the `test` extra) and a Chromium binary: Debian's `/usr/bin/chromium`
(`apt-get install chromium`), or `$QCOMPILE_CHROMIUM`; Playwright's own downloaded browsers are not used.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path
from typing import Any

__all__ = ["CHROMIUM_ARGS", "PageCheck", "find_chromium", "load_page", "screenshot", "main"]

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# Everything the checks read from the page, gathered in one evaluation.
_COLLECT = """() => ({
  charts: [...document.querySelectorAll('svg.chart')].map(svg => {
    const box = svg.getBoundingClientRect();
    return {name: svg.dataset.chart || '', width: box.width, height: box.height};
  }),
  cells: [...document.querySelectorAll('[data-value]')].map(el => ({
    key: el.dataset.key || null, derived: el.dataset.derived || null, label: el.dataset.label || null,
    index: el.dataset.index === undefined ? null : Number(el.dataset.index),
    value: el.dataset.value, text: el.textContent.trim(),
  })),
  title: document.title,
  width: document.documentElement.scrollWidth,
  viewport: window.innerWidth,
})"""


@dataclasses.dataclass
class PageCheck:
    """What `load_page` saw. `console`: (type, text) pairs; `blocked`: URLs of refused requests."""

    console: list[tuple[str, str]]
    page_errors: list[str]
    blocked: list[str]
    charts: list[dict[str, Any]]
    cells: list[dict[str, Any]]
    title: str
    scroll_width: int
    viewport_width: int
    screenshot: Path | None


def find_chromium() -> str | None:
    """The Chromium binary to drive: `$QCOMPILE_CHROMIUM`, /usr/bin/chromium, or `chromium` on PATH."""
    for candidate in (os.environ.get("QCOMPILE_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def load_page(html_path: Path, screenshot_path: Path | None = None, width: int = 1280) -> PageCheck:
    """Open `html_path` offline in headless Chromium, collect its checks, optionally screenshot it."""
    from playwright.sync_api import sync_playwright

    executable = find_chromium()
    if executable is None:
        raise FileNotFoundError("chromium not installed: apt-get install chromium (or set QCOMPILE_CHROMIUM)")
    url = Path(html_path).resolve().as_uri()
    console: list[tuple[str, str]] = []
    errors: list[str] = []
    blocked: list[str] = []

    def route(route_) -> None:
        request_url = route_.request.url
        if request_url.startswith(("file:", "data:")):
            route_.continue_()
        else:
            if request_url not in blocked:
                blocked.append(request_url)
            route_.abort()

    def request(request_) -> None:
        if not request_.url.startswith(("file:", "data:")) and request_.url not in blocked:
            blocked.append(request_.url)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": width, "height": 900}, offline=True)
            context.route("**/*", route)
            page = context.new_page()
            page.on("console", lambda message: console.append((message.type, message.text)))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", request)
            page.goto(url, wait_until="load")
            collected = page.evaluate(_COLLECT)
            if screenshot_path is not None:
                Path(screenshot_path).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot_path), full_page=True)
            context.close()
        finally:
            browser.close()
    return PageCheck(
        console=console,
        page_errors=errors,
        blocked=blocked,
        charts=collected["charts"],
        cells=collected["cells"],
        title=collected["title"],
        scroll_width=collected["width"],
        viewport_width=collected["viewport"],
        screenshot=None if screenshot_path is None else Path(screenshot_path),
    )


def screenshot(html_path: Path, png_path: Path, width: int = 1280) -> Path:
    """A full-page PNG of `html_path` rendered offline at `width` CSS pixels."""
    load_page(html_path, png_path, width)
    return Path(png_path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (2, 3):
        print("usage: python -m qcompile.testing.browser REPORT.html OUT.png [WIDTH]", file=sys.stderr)
        return 2
    path = screenshot(Path(argv[0]), Path(argv[1]), int(argv[2]) if len(argv) == 3 else 1280)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
