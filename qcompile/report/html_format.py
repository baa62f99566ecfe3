"""How report.html writes numbers, and the table cells that carry them with a machine-readable copy.

Every number the page shows comes from report.json, either as is (a `data-key` cell: the dotted path of
the value in report.json, e.g. `all_metrics.qcompile.top1` or `per_layer.3.sqnr_db`) or computed from
it (a `data-derived` cell: `degradation`, `drop_se`, `speedup` or `clip_ratio`, with `data-label` or
`data-index` naming its inputs). Both carry the unrounded number in `data-value` (Python's `repr`), and
show it with one fixed format per kind:

| kind | format | example |
|---|---|---|
| metric in points (`top1`, `accuracy`), its drop and standard error | 2 decimals | `80.60`, `0.45` |
| `cosine` and its change | 4 decimals | `0.9995` |
| `perplexity` and its change | 3 decimals | `6.012` |
| ms, range bounds | 4 significant figures (exponent form below 1e-3, from 1e7) | `117.7`, `0.03415`, `3.419e-10` |
| speed-up and clip ratio | 2 decimals and `×` | `1.18×` |
| SQNR (dB) | 1 decimal; `1e9` (identical outputs) as `∞` | `26.3`, `∞` |
| max abs / rel error | 2 significant figures, exponent form | `1.1e-06` |
| seconds | 3 decimals | `0.077` |
| agreement (generations) | 3 decimals | `0.938` |
| counts | integer | `12` |

A missing value is shown as `-` and carries no `data-value`.
"""

from __future__ import annotations

import html
import math
from typing import Any

__all__ = [
    "INFINITE_DB",
    "metric_digits",
    "fixed",
    "significant",
    "decibels",
    "exponent",
    "ratio",
    "data_cell",
]

INFINITE_DB = 1e9  # report.json's SQNR for identical outputs
_METRIC_DIGITS = {"cosine": 4, "perplexity": 3}


def metric_digits(metric: str) -> int:
    """Decimals for a metric's values and changes (2 for metrics in points)."""
    return _METRIC_DIGITS.get(metric, 2)


def _missing(value: Any) -> bool:
    return value is None or not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value)


def fixed(value: Any, digits: int) -> str:
    if _missing(value):
        return "-"
    text = f"{value:.{digits}f}"
    return text.lstrip("-") if float(text) == 0 else text  # "0.00", never "-0.00"


SMALLEST_FIXED, LARGEST_FIXED = 1e-3, 1e7


def significant(value: Any, figures: int = 4) -> str:
    """`figures` significant figures: fixed point (117.7, 0.03415, 1234), exponent form for magnitudes
    below 1e-3 or from 1e7 (3.419e-10), where fixed point would be a row of zeros."""
    if _missing(value):
        return "-"
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    if not SMALLEST_FIXED <= abs(value) < LARGEST_FIXED:
        return f"{value:.{figures - 1}e}"
    digits = max(0, figures - 1 - math.floor(math.log10(abs(value))))
    return fixed(value, digits)


def decibels(value: Any) -> str:
    if _missing(value):
        return "-"
    return "∞" if value >= INFINITE_DB else fixed(value, 1)


def exponent(value: Any) -> str:
    if _missing(value):
        return "-"
    return "0" if value == 0 else f"{value:.1e}"


def ratio(value: Any) -> str:
    return "-" if _missing(value) or not math.isfinite(value) else f"{value:.2f}×"


def data_cell(
    text: str,
    value: Any = None,
    *,
    key: str | None = None,
    derived: str | None = None,
    label: str | None = None,
    index: int | None = None,
    tag: str = "td",
    cls: str = "num",
) -> str:
    """A table cell (or span) showing `text`, with `value` in `data-value` and where it came from."""
    attrs = [f'class="{cls}"'] if cls else []
    if not _missing(value):
        if key is not None:
            attrs.append(f'data-key="{html.escape(key)}"')
        if derived is not None:
            attrs.append(f'data-derived="{html.escape(derived)}"')
        if label is not None:
            attrs.append(f'data-label="{html.escape(label)}"')
        if index is not None:
            attrs.append(f'data-index="{index}"')
        attrs.append(f'data-value="{value!r}"')
    return f"<{tag} {' '.join(attrs)}>{html.escape(text)}</{tag}>"
