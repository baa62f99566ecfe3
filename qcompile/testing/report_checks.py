"""Checks that report.html shows report.json's numbers: for the unit tests and the browser test.

A page's numbers sit in elements with `data-value` and either `data-key` (a dotted path into report.json)
or `data-derived` (a number computed from it; see `qcompile.report.html_format`). `expected` recomputes
each one from the report here, independently of the page builder, and `shown_matches` says whether the
text the page shows is the value rounded to as many digits as the text has.
"""

from __future__ import annotations

import math
from html.parser import HTMLParser
from typing import Any

__all__ = ["resolve", "expected", "shown_matches", "data_cells"]


def resolve(report: dict, key: str) -> Any:
    """The value at dotted path `key` (list items by index): `per_layer.3.sqnr_db`."""
    value: Any = report
    for part in key.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def expected(report: dict, cell: dict) -> float:
    """The number a `data-value` cell must carry, from the report alone."""
    if cell.get("key"):
        return resolve(report, cell["key"])
    kind, label, index = cell.get("derived"), cell.get("label"), cell.get("index")
    if kind == "degradation":
        metric = report["metric"]
        name = metric["name"]
        fp = report.get("all_metrics", {}).get("ort_fp32", {}).get(name, metric.get("fp"))
        value = report["all_metrics"][label][name]
        return fp - value if metric.get("higher_is_better", True) else value - fp
    if kind == "drop_se":  # docs/report.md: paired standard error, in points
        counts, n = report["all_metrics"][label], report["eval_samples"]
        lost, gained = counts["lost"], counts["gained"]
        return 100.0 * math.sqrt(max((lost + gained - (lost - gained) ** 2 / n) / (n * (n - 1)), 0.0))
    if kind == "speedup":
        return report["latency_ms"]["ort_fp32"] / report["latency_ms"][label]
    if kind == "clip_ratio":
        item = report["calibration_ranges"][int(index)]
        return (item["raw_max"] - item["raw_min"]) / (item["hi"] - item["lo"])
    raise AssertionError(f"unknown derived number {kind!r} in {cell}")


def shown_matches(text: str, value: float) -> bool:
    """True when `text` (as the page shows it: `80.60`, `+1.00`, `2.86×`, `1.1e-06`, `∞`) is `value`
    rounded to the digits `text` has."""
    text = text.strip().removesuffix("×").strip()
    if text == "∞":
        return value >= 1e9
    number = float(text)
    mantissa, _, power = text.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    tolerance = 0.5 * 10.0 ** (int(power or 0) - decimals)
    return abs(number - value) <= tolerance * (1 + 1e-9) + 1e-12


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.cells: list[dict[str, Any]] = []
        self._open: list[tuple[str, dict[str, Any] | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("wbr", "br", "meta", "img", "input", "hr", "link"):
            return
        attributes = dict(attrs)
        cell = None
        if "data-value" in attributes:
            cell = {
                "key": attributes.get("data-key"),
                "derived": attributes.get("data-derived"),
                "label": attributes.get("data-label"),
                "index": None if attributes.get("data-index") is None else int(attributes["data-index"]),
                "value": attributes["data-value"],
                "text": "",
            }
            self.cells.append(cell)
        self._open.append((tag, cell))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            open_tag, _ = self._open.pop()
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, cell in self._open:
            if cell is not None:
                cell["text"] += data


def data_cells(page: str) -> list[dict[str, Any]]:
    """Every `data-value` element of `page`: key, derived, label, index, value (a string) and text."""
    parser = _Cells()
    parser.feed(page)
    for cell in parser.cells:
        cell["text"] = cell["text"].strip()
    return parser.cells
