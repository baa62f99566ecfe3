"""report.html in a real browser: headless Chromium, offline, from a file:// URL.

Checks what only a browser can: no console errors or page errors, no request leaves the file, every
chart has a size on the page, nothing overflows the viewport sideways, the numbers the page shows (its
`data-value` elements) equal report.json's, and the full-page screenshot is not blank.
"""

from __future__ import annotations

import importlib.util

import pytest

from qcompile.report.html import write_html_report
from qcompile.testing import sample_reports
from qcompile.testing.browser import find_chromium, load_page
from qcompile.testing.report_checks import expected, shown_matches

if importlib.util.find_spec("playwright") is None:
    pytest.skip("playwright not installed: pip install -e '.[test]'", allow_module_level=True)
if find_chromium() is None:
    pytest.skip(
        "chromium not installed: apt-get install chromium (or set QCOMPILE_CHROMIUM to a Chromium binary)",
        allow_module_level=True,
    )

CHARTS = {"latency", "per-layer", "per-pass", "ranges"}


@pytest.mark.parametrize(
    "builder",
    [sample_reports.tvm_report, sample_reports.llm_report, sample_reports.hostile_report],
    ids=lambda b: b.__name__,
)
def test_the_page_renders_offline_without_errors_and_shows_the_reports_numbers(builder, tmp_path):
    report = builder()
    page_path = write_html_report(report, tmp_path / "report.html")
    seen = load_page(page_path, tmp_path / "report.png")

    assert [text for kind, text in seen.console if kind == "error"] == []
    assert seen.page_errors == []
    assert seen.blocked == []
    assert {chart["name"] for chart in seen.charts} == CHARTS
    for chart in seen.charts:
        assert chart["width"] > 300 and chart["height"] > 100, chart
    assert seen.scroll_width <= seen.viewport_width  # nothing (long names included) overflows sideways

    assert len(seen.cells) > 20
    for cell in seen.cells:
        value = expected(report, cell)
        assert float(cell["value"]) == value, cell
        assert shown_matches(cell["text"], value), cell
    assert report["model"] in seen.title  # the title shows the name, escaped, as text

    from PIL import Image, ImageStat

    with Image.open(seen.screenshot) as image:
        width, height = image.size
        spread = ImageStat.Stat(image.convert("L")).stddev[0]
    assert width == 1280 and height > 2500
    assert spread > 10  # not a blank page
    assert seen.screenshot.stat().st_size > 100_000


def test_requests_leaving_the_file_are_blocked_and_recorded(tmp_path):
    """The harness itself: an external image would be refused and listed, so an empty list means none."""
    page = tmp_path / "leaky.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://example.invalid/x.png"></body></html>')
    seen = load_page(page)
    assert seen.blocked == ["http://example.invalid/x.png"]
