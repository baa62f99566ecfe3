"""The charts of report.html: matplotlib figures rendered to inline SVG strings.

Each function takes plain, already-selected data (the page builder, `qcompile.report.html`, decides
what to show) and returns one `<svg>` element: no XML prolog, no fixed size (it scales to its
container through its viewBox), text kept as text (`svg.fonttype: none`) so it stays sharp and
searchable, and element ids salted with the chart's name so several charts can share one page.

matplotlib is imported inside the functions (importing `qcompile.report` stays fast), and only
`matplotlib.figure.Figure` is used: no pyplot, no global figure state. Strings are never parsed as
mathtext (`text.parse_math: False`): model and value names may contain `$`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import re
import textwrap
import warnings
from collections.abc import Sequence

__all__ = [
    "Bar",
    "PassStep",
    "RangePanel",
    "latency_chart",
    "sqnr_depth_chart",
    "pass_waterfall_chart",
    "range_panels",
    "COLORS",
]

COLORS = {
    "fp": "#475569",
    "qcompile": "#2563eb",
    "tvm": "#7c3aed",
    "baseline": "#a3b1c6",
    "bad": "#dc2626",
    "good": "#16a34a",
    "neutral": "#94a3b8",
    "grid": "#e5e7eb",
    "text": "#1f2937",
    "muted": "#6b7280",
    "raw": "#cbd5e1",
}

_STYLE = {
    "svg.fonttype": "none",
    "text.parse_math": False,
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Helvetica", "Arial"],
    "font.size": 9.5,
    "axes.titlesize": 10.5,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.titlecolor": COLORS["text"],
    "axes.labelcolor": COLORS["text"],
    "axes.edgecolor": "#9ca3af",
    "axes.linewidth": 0.8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": COLORS["grid"],
    "grid.linewidth": 0.8,
    "xtick.color": COLORS["muted"],
    "ytick.color": COLORS["muted"],
    "xtick.labelcolor": COLORS["text"],
    "ytick.labelcolor": COLORS["text"],
    "legend.frameon": False,
    "figure.facecolor": "white",
    "axes.facecolor": "white",
}


@dataclasses.dataclass
class Bar:
    """One latency bar: `label` (a display name), milliseconds, the text beside it, and a color key."""

    label: str
    ms: float
    note: str
    kind: str = "baseline"  # a COLORS key


@dataclasses.dataclass
class PassStep:
    """One pass of the waterfall.

    `level_db`: output SQNR against the float model after this pass (`sqnr_vs_float_db`), or None when
    not recorded; `own_db`: this pass's own output SQNR (LOSSY `sqnr_db`); `exact`: the pass is checked
    exact (EXACT / EXACT_IN_REALS), `note`: its check in words.
    """

    name: str
    numerics: str
    level_db: float | None
    own_db: float | None
    exact: bool
    note: str = ""


@dataclasses.dataclass
class RangePanel:
    """One small multiple: the observed [raw_min, raw_max] and the chosen clip [lo, hi] of a value."""

    title: str
    raw_min: float
    raw_max: float
    lo: float
    hi: float
    note: str
    highlight: bool = False


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _svg(figure, name: str, label: str) -> str:
    """The figure as one `<svg>` element that scales to its container, ids salted with `name`."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": f"qcompile-{name}"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.S)  # RDF creator/date block
    head_end = text.index(">")
    head = text[:head_end]
    head = re.sub(r'\s(width|height)="[^"]*"', "", head)
    head = head.replace("<svg", f'<svg class="chart" data-chart="{name}" role="img" aria-label="{_attr(label)}"', 1)
    return _prefix_ids(head + text[head_end:], f"{name}-")


def _prefix_ids(svg: str, prefix: str) -> str:
    """Prefix every id (and every reference to one) so that several figures' `figure_1`, `axes_1`, …
    stay unique on one page."""
    ids = set(re.findall(r'\sid="([^"]+)"', svg))
    if not ids:
        return svg

    def rename(match: re.Match) -> str:
        return match.group(1) + prefix + match.group(2) + match.group(3) if match.group(2) in ids else match.group(0)

    svg = re.sub(r'(\sid=")([^"]+)(")', rename, svg)
    svg = re.sub(r"(url\(#)([^)]+)(\))", rename, svg)
    return re.sub(r'(href="#)([^"]+)(")', rename, svg)


def _attr(text: str) -> str:
    import html

    return html.escape(text, quote=True)


@contextlib.contextmanager
def _style():
    """The charts' rcParams, and no warnings for glyphs DejaVu Sans lacks (emoji, CJK in value names): the
    text stays text in the SVG and the browser draws it with a font that has them."""
    import matplotlib

    with matplotlib.rc_context(_STYLE), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
        yield


def shorten(name: str, limit: int = 34) -> str:
    """`name`, keeping its end (the distinguishing part of ONNX value names) when longer than `limit`."""
    return name if len(name) <= limit else "…" + name[-(limit - 1) :]


def latency_chart(bars: Sequence[Bar], title: str, caption: str) -> str:
    """Horizontal bars of median latency, top to bottom in the given order, each annotated with `note`."""
    with _style():
        figure = _figure(10.5, 0.48 * len(bars) + 1.25)
        axes = figure.add_subplot()
        positions = range(len(bars))
        colors = [COLORS.get(bar.kind, COLORS["baseline"]) for bar in bars]
        axes.barh(positions, [bar.ms for bar in bars], color=colors, height=0.62)
        axes.set_yticks(list(positions), [shorten(bar.label, 42) for bar in bars])
        axes.invert_yaxis()
        longest = max(bar.ms for bar in bars)
        for position, bar in zip(positions, bars):
            axes.annotate(
                bar.note,
                (bar.ms, position),
                xytext=(5, 0),
                textcoords="offset points",
                va="center",
                fontsize=9,
                color=COLORS["text"],
            )
        axes.set_xlim(0, longest * 1.42)
        axes.grid(axis="y", visible=False)
        axes.tick_params(axis="y", length=0)
        axes.set_xlabel("median latency (ms)")
        figure.suptitle(title, x=0.01, ha="left", fontsize=10.5, fontweight="bold", color=COLORS["text"])
        axes.set_title(textwrap.fill(caption, 130), fontsize=8.5, fontweight="normal", color=COLORS["muted"], pad=6)
        return _svg(figure, "latency", title)


def sqnr_depth_chart(sqnr_db: Sequence[float], worst: Sequence[int]) -> str:
    """SQNR per layer against graph order; `worst`: indices to mark, worst first (numbered 1, 2, …)."""
    from qcompile.report.html_format import INFINITE_DB

    finite = [value for value in sqnr_db if value < INFINITE_DB]
    ceiling = (max(finite) if finite else 60.0) + 6.0
    floor = min(finite) if finite else 0.0
    shown = [min(value, ceiling) for value in sqnr_db]
    many = len(shown) > 120
    with _style():
        figure = _figure(10.5, 3.5)
        axes = figure.add_subplot()
        index = list(range(len(shown)))
        axes.plot(
            index,
            shown,
            color=COLORS["qcompile"],
            linewidth=1.3,
            marker=None if many else "o",
            markersize=3.2,
            markerfacecolor="white",
            markeredgewidth=1.0,
            label="per-layer SQNR",
        )
        identical = [i for i, value in enumerate(sqnr_db) if value >= INFINITE_DB]
        if identical:
            axes.scatter(
                identical,
                [ceiling] * len(identical),
                marker="^",
                color=COLORS["good"],
                s=26,
                zorder=3,
                label="identical (∞ dB, drawn at the top)",
            )
        if worst:
            axes.scatter(
                list(worst),
                [shown[i] for i in worst],
                s=42,
                color=COLORS["bad"],
                zorder=4,
                label=f"worst {len(worst)}",
            )
            for rank, i in enumerate(worst, start=1):
                axes.annotate(
                    str(rank),
                    (i, shown[i]),
                    xytext=(0, -11),
                    textcoords="offset points",
                    ha="center",
                    fontsize=7.5,
                    color=COLORS["bad"],
                    fontweight="bold",
                )
        axes.set_xlim(-0.5 if len(shown) > 1 else -1, max(len(shown) - 0.5, 1))
        axes.set_ylim(max(0.0, floor - 8.0) if floor >= 0 else floor - 8.0, ceiling + 3.0)
        if len(shown) <= 40:
            axes.set_xticks(index)
        axes.set_xlabel("layer index (graph order)")
        axes.set_ylabel("SQNR (dB)")
        axes.set_title("Per-layer SQNR along depth (higher is better)")
        axes.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=8, ncols=3, borderaxespad=0.2)
        return _svg(figure, "per-layer", "Per-layer SQNR along depth")


def _nice_ceiling(values: Sequence[float]) -> float:
    return 10.0 * math.ceil((max(values) + 12.0) / 10.0) if values else 60.0


def pass_waterfall_chart(steps: Sequence[PassStep]) -> str:
    """Output SQNR against the float model after each pass, as a waterfall from "float" (∞ dB).

    Each pass is a floating bar from the level before it to the level after it: red where it lowered
    the SQNR, green where it raised it, a gray tick where it did not move it (exact passes). Levels
    above the chart's ceiling (exact passes reach 100+ dB) are drawn at the ceiling with their value
    written. Without `level_db` (reports before `sqnr_vs_float_db`), each LOSSY pass's own SQNR is
    drawn as a plain bar and exact passes as a tick at the ceiling.
    """
    from qcompile.report.html_format import INFINITE_DB, decibels

    cumulative = any(step.level_db is not None for step in steps)
    measured = [
        value
        for step in steps
        for value in ((step.level_db,) if cumulative else (step.own_db,))
        if value is not None and value < INFINITE_DB and not (step.exact and value > 80)
    ]
    ceiling = _nice_ceiling(measured)
    with _style():
        figure = _figure(10.5, 3.9)
        axes = figure.add_subplot()
        previous = ceiling
        for i, step in enumerate(steps):
            value = step.level_db if cumulative else step.own_db
            if value is None:
                if cumulative:  # not measured: carry the level over, as a dashed outline
                    axes.bar(i, 0.6, bottom=previous - 0.3, width=0.55, color="none", edgecolor=COLORS["neutral"])
                    axes.annotate(
                        "not measured",
                        (i, previous),
                        xytext=(0, 8),
                        textcoords="offset points",
                        ha="center",
                        fontsize=7.5,
                        color=COLORS["muted"],
                    )
                    continue
                value = INFINITE_DB if step.exact else None
                if value is None:
                    continue
            level = min(value, ceiling)
            base = previous if cumulative else 0.0
            delta = level - base
            if cumulative and abs(delta) < 0.05:
                color = COLORS["neutral"]
                axes.plot([i - 0.3, i + 0.3], [level, level], color=color, linewidth=2.5, solid_capstyle="butt")
            else:
                color = (
                    (COLORS["bad"] if delta < 0 else COLORS["good"])
                    if cumulative
                    else (COLORS["neutral"] if step.exact else COLORS["qcompile"])
                )
                axes.bar(i, delta, bottom=base, width=0.55, color=color, alpha=0.9)
            text = f"{decibels(value)} dB"
            axes.annotate(
                text,
                (i, level),
                xytext=(0, 4 if (not cumulative or delta >= 0) else -11),
                textcoords="offset points",
                ha="center",
                fontsize=8,
                color=COLORS["text"],
                fontweight="bold",
            )
            if cumulative and i + 1 < len(steps):
                axes.plot([i + 0.275, i + 0.725], [level, level], color=COLORS["muted"], linewidth=0.8, linestyle=":")
            if cumulative:
                previous = level
        axes.axhline(ceiling, color=COLORS["muted"], linewidth=0.8, linestyle="--")
        axes.annotate(
            "float model (∞ dB)" if cumulative else "exact (∞ dB)",
            (1.0, ceiling),
            xycoords=("axes fraction", "data"),
            xytext=(-2, 3),
            textcoords="offset points",
            ha="right",
            fontsize=7.5,
            color=COLORS["muted"],
        )
        axes.set_xticks(
            range(len(steps)), [f"{shorten(step.name, 24)}\n{step.numerics}" for step in steps], fontsize=8.5
        )
        if len(steps) > 8:
            for label in axes.get_xticklabels():
                label.set_rotation(30)
                label.set_ha("right")
        axes.set_xlim(-0.6, len(steps) - 0.4)
        low = min([v for v in measured if v is not None] or [0.0])
        axes.set_ylim(max(0.0, low - 10.0), ceiling + 6.0)
        axes.grid(axis="x", visible=False)
        axes.set_ylabel("output SQNR vs float (dB)" if cumulative else "output SQNR of the pass (dB)")
        axes.set_title(
            "Output SQNR against the float model after each pass"
            if cumulative
            else "Output SQNR of each pass against its input (LOSSY passes)"
        )
        return _svg(figure, "per-pass", "Per-pass output SQNR waterfall")


def range_panels(panels: Sequence[RangePanel], columns: int = 3) -> str:
    """Small multiples: per value, the observed range (light bar) over the clip range (dark bar)."""
    rows = math.ceil(len(panels) / columns)
    with _style():
        figure = _figure(10.5, 1.22 * rows + 0.25)
        grid = figure.subplots(rows, columns, squeeze=False)
        for axes in grid.flat[len(panels) :]:
            axes.set_visible(False)
        for axes, panel in zip(grid.flat, panels):
            left = min(panel.raw_min, panel.lo, 0.0)
            right = max(panel.raw_max, panel.hi, 0.0)
            pad = 0.06 * ((right - left) or 1.0)
            axes.barh([1], [panel.raw_max - panel.raw_min], left=panel.raw_min, height=0.6, color=COLORS["raw"])
            axes.barh([0], [panel.hi - panel.lo], left=panel.lo, height=0.6, color=COLORS["qcompile"])
            if panel.highlight:
                for spine in ("left", "bottom"):
                    axes.spines[spine].set_color(COLORS["bad"])
            axes.axvline(0.0, color=COLORS["muted"], linewidth=0.7)
            axes.set_xlim(left - pad, right + pad)
            axes.set_ylim(-0.6, 1.9)
            axes.set_yticks([0, 1], ["clip", "raw"], fontsize=7.5)
            axes.tick_params(axis="x", labelsize=7.5)
            axes.tick_params(axis="y", length=0)
            axes.grid(axis="y", visible=False)
            axes.set_title(
                shorten(panel.title), fontsize=8.5, color=COLORS["bad"] if panel.highlight else COLORS["text"]
            )
            axes.text(
                0.99,
                0.97,
                panel.note,
                transform=axes.transAxes,
                ha="right",
                va="top",
                fontsize=7,
                color=COLORS["muted"],
            )
        return _svg(figure, "ranges", "Calibration ranges of selected values")
