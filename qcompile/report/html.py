"""report.html: one self-contained page built from report.json (schema and page layout: docs/report.md).

The page has no scripts and fetches nothing: the CSS is in a <style> tag and the charts are matplotlib
SVG inlined in the document. Every string from the report is HTML-escaped; every number comes from the
report, shown in the fixed formats of `qcompile.report.html_format`, with its exact value in a
`data-value` attribute (tests/report/test_browser.py compares the page against report.json).

Sections: header (model, passes, artifact, target, command, versions, CPU, seed, threads), metric
table, latency chart, per-layer SQNR along depth, per-pass waterfall, calibration ranges, and, when
the report has them, generations (LLM prompts and outputs). Keys a report lacks (older reports, runs
without baselines or without `--target`) leave their part out or say that nothing was recorded.

matplotlib is imported only when a chart is drawn, so importing this module is fast.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from qcompile.report.html_format import (
    INFINITE_DB,
    data_cell,
    decibels,
    exponent,
    fixed,
    metric_digits,
    ratio,
    significant,
)
from qcompile.report.matplotlib_home import use_private_config

__all__ = [
    "render_html",
    "write_html_report",
    "LABELS",
    "worst_layers",
    "select_ranges",
    "degradation",
    "drop_standard_error",
    "speedup",
    "clip_ratio",
]

LABELS = {
    "ort_fp32": "ONNX Runtime FP32",
    "qcompile": "qcompile",
    "tvm_int": "qcompile · TVM library",
    "ort_int8_static": "ONNX Runtime INT8 static",
    "ort_int8_dynamic": "ONNX Runtime INT8 dynamic",
}
REFERENCE = "ort_fp32"
OURS = ("qcompile", "tvm_int")
WORST_LAYERS = 10
MAX_RANGE_PANELS = 12
_COUNTS = ("lost", "gained")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _label(label: str) -> str:
    return LABELS.get(label, label)


def _ordered(labels) -> list[str]:
    """Known labels in the house order, then any others in the report's order."""
    labels = list(labels)
    return [label for label in LABELS if label in labels] + [label for label in labels if label not in LABELS]


# ---------------------------------------------------------------------------------------------------------------
# Derived numbers (each `data-derived` kind on the page is one of these)


def _metric(report: dict) -> tuple[str | None, bool]:
    metric = report.get("metric") or {}
    return metric.get("name"), bool(metric.get("higher_is_better", True))


def _reference_value(report: dict) -> float | None:
    name, _ = _metric(report)
    scores = (report.get("all_metrics") or {}).get(REFERENCE) or {}
    value = scores.get(name, (report.get("metric") or {}).get("fp"))
    return value if _number(value) else None


def degradation(report: dict, label: str) -> float | None:
    """How much worse than the float model `label` scores: fp − value (higher is better) or value − fp."""
    name, higher_is_better = _metric(report)
    value = ((report.get("all_metrics") or {}).get(label) or {}).get(name)
    fp = _reference_value(report)
    if not _number(value) or fp is None:
        return None
    return fp - value if higher_is_better else value - fp


def drop_standard_error(report: dict, label: str) -> float | None:
    """The paired standard error of `label`'s drop (points), from its `lost`/`gained` counts, or None."""
    from qcompile.zoo.paired import drop_interval

    scores = (report.get("all_metrics") or {}).get(label) or {}
    samples = report.get("eval_samples")
    if not all(isinstance(scores.get(k), int) for k in _COUNTS) or not isinstance(samples, int) or samples < 2:
        return None
    return drop_interval(scores["lost"], scores["gained"], samples)[1]


def speedup(report: dict, label: str) -> float | None:
    """latency(ORT FP32) / latency(label): above 1 is faster than the float model under ONNX Runtime."""
    latency = report.get("latency_ms") or {}
    reference, value = latency.get(REFERENCE), latency.get(label)
    if not _number(reference) or not _number(value) or value <= 0:
        return None
    return reference / value


def clip_ratio(item: dict) -> float | None:
    """Observed span over clip span of a calibration range: above 1 where the observer clipped."""
    try:
        raw, clip = item["raw_max"] - item["raw_min"], item["hi"] - item["lo"]
    except (KeyError, TypeError):
        return None
    if clip <= 0:
        return math.inf if raw > 0 else None
    return raw / clip


def worst_layers(report: dict, count: int = WORST_LAYERS) -> list[int]:
    """Indices into `per_layer` of the `count` lowest-SQNR layers, worst first (identical ones excluded)."""
    layers = report.get("per_layer") or []
    measured = [i for i, item in enumerate(layers) if _number(item.get("sqnr_db")) and item["sqnr_db"] < INFINITE_DB]
    return sorted(measured, key=lambda i: (layers[i]["sqnr_db"], i))[:count]


def select_ranges(report: dict, count: int = MAX_RANGE_PANELS) -> list[int]:
    """Indices into `calibration_ranges` to draw: those feeding the worst layers (worst layer first),
    then those with the largest observed-span / clip-span ratio."""
    ranges = report.get("calibration_ranges") or []
    layers = report.get("per_layer") or []
    chosen: list[int] = []
    for layer in worst_layers(report):
        node = layers[layer].get("node")
        for i, item in enumerate(ranges):
            if i not in chosen and node in (item.get("consumers") or []):
                chosen.append(i)
    rest = [i for i in range(len(ranges)) if i not in chosen and clip_ratio(ranges[i]) is not None]
    rest.sort(key=lambda i: (-clip_ratio(ranges[i]), i))
    return (chosen + rest)[:count]


# ---------------------------------------------------------------------------------------------------------------
# Sections


def _fact(term: str, body: str) -> str:
    return f"<div><dt>{_e(term)}</dt><dd>{body}</dd></div>"


def _span(text: str, value: Any, key: str) -> str:
    return data_cell(text, value, key=key, tag="span", cls="")


def _target_summary(target: Any) -> str:
    try:
        parsed = json.loads(target)
    except (TypeError, ValueError):
        parsed = None
    if isinstance(parsed, dict):
        parts = [str(parsed.get("kind", "?"))] + [f"{k}={parsed[k]}" for k in ("mcpu", "arch") if parsed.get(k)]
        return f'<code title="{_e(target)}">{_e(" · ".join(parts))}</code>'
    return f"<code>{_e(target)}</code>"


def _header(report: dict) -> str:
    env = report.get("environment") or {}
    setup = report.get("latency_setup") or {}
    calibration = report.get("calibration") or {}
    name, higher_is_better = _metric(report)
    facts = [
        _fact("passes", f"<code>{_e(report.get('passes', '-'))}</code>"),
        _fact("artifact", f"<code>{_e(report['artifact'])}</code>" if report.get("artifact") else "-"),
        _fact("target", _target_summary(report["target"]) if report.get("target") else "ONNX only (no --target)"),
        _fact(
            "metric",
            f"<code>{_e(name or '-')}</code> ({'higher' if higher_is_better else 'lower'} is better)",
        ),
        _fact(
            "evaluation",
            (_span(str(report["eval_samples"]), report["eval_samples"], "eval_samples") + " samples")
            if _number(report.get("eval_samples"))
            else "-",
        ),
        _fact("seed", _span(str(report["seed"]), report["seed"], "seed") if _number(report.get("seed")) else "-"),
        _fact(
            "threads",
            _span(str(setup["threads"]), setup["threads"], "latency_setup.threads")
            if _number(setup.get("threads"))
            else "-",
        ),
        _fact(
            "calibration",
            " ".join(
                part
                for part in (
                    (_span(str(calibration["samples"]), calibration["samples"], "calibration.samples") + " samples")
                    if _number(calibration.get("samples"))
                    else "",
                    (
                        "· peak RSS "
                        + _span(
                            significant(calibration["peak_rss_mb"]),
                            calibration["peak_rss_mb"],
                            "calibration.peak_rss_mb",
                        )
                        + " MB"
                    )
                    if _number(calibration.get("peak_rss_mb"))
                    else "",
                )
                if part
            )
            or "-",
        ),
        _fact("CPU", _e(env["cpu"]) if env.get("cpu") else "not recorded"),
        _fact("Python · platform", _e(" · ".join(str(env[k]) for k in ("python", "platform") if env.get(k)) or "-")),
    ]
    flags = env.get("cpu_flags")
    if flags:
        chips = "".join(f'<span class="chip">{_e(flag)}</span>' for flag in flags)
        facts.append(_fact("CPU flags", f'<div class="chips">{chips}</div>'))
    versions = env.get("versions") or {}
    if versions:
        chips = "".join(f'<span class="chip">{_e(k)} <b>{_e(v)}</b></span>' for k, v in versions.items())
        facts.append(_fact("versions", f'<div class="chips">{chips}</div>'))
    command = (
        f'<h3>command</h3><pre class="command">{_e(env["command"])}</pre>'
        if env.get("command")
        else '<p class="note">command, versions and CPU not recorded (a report from before `environment`).</p>'
    )
    return (
        '<header class="top" id="top">'
        '<div class="kicker">qcompile quantization report</div>'
        f"<h1>{_e(report.get('model', 'unknown model'))}</h1>"
        f"{_summary_cards(report)}"
        f'<dl class="facts">{"".join(facts)}</dl>'
        f"{command}"
        "</header>"
    )


def _summary_cards(report: dict) -> str:
    name, higher_is_better = _metric(report)
    digits = metric_digits(name or "")
    scores = report.get("all_metrics") or {}
    cards = []
    value = (scores.get("qcompile") or {}).get(name)
    if _number(value):
        change = degradation(report, "qcompile")
        se = drop_standard_error(report, "qcompile")
        word = "drop" if higher_is_better else "increase"
        sub = []
        if _reference_value(report) is not None:
            sub.append(
                "FP32 "
                + _span(
                    fixed(_reference_value(report), digits), _reference_value(report), f"all_metrics.{REFERENCE}.{name}"
                )
            )
        if change is not None:
            sub.append(
                f"{word} "
                + data_cell(
                    f"{change:+.{digits}f}", change, derived="degradation", label="qcompile", tag="span", cls=""
                )
                + (
                    ""
                    if se is None
                    else " ± "
                    + data_cell(fixed(se, digits), se, derived="drop_se", label="qcompile", tag="span", cls="")
                )
            )
        cards.append(
            f'<div class="stat"><div class="label">{_e(name)} · qcompile</div>'
            f'<div class="big">{_span(fixed(value, digits), value, f"all_metrics.qcompile.{name}")}</div>'
            f'<div class="sub">{" · ".join(sub)}</div></div>'
        )
    latency = report.get("latency_ms") or {}
    for label in OURS:
        ms = latency.get(label)
        if not _number(ms):
            continue
        ratio_value = speedup(report, label)
        sub = (
            data_cell(ratio(ratio_value), ratio_value, derived="speedup", label=label, tag="span", cls="")
            + " speed-up vs ORT FP32"
            if ratio_value is not None
            else ""
        )
        cards.append(
            f'<div class="stat"><div class="label">latency · {_e(_label(label))}</div>'
            f'<div class="big">{_span(significant(ms), ms, f"latency_ms.{label}")} ms</div>'
            f'<div class="sub">{sub}</div></div>'
        )
    worst = worst_layers(report, 1)
    if worst:
        layer = report["per_layer"][worst[0]]
        cards.append(
            '<div class="stat"><div class="label">lowest per-layer SQNR</div>'
            f'<div class="big">{_span(decibels(layer["sqnr_db"]), layer["sqnr_db"], f"per_layer.{worst[0]}.sqnr_db")}'
            f' dB</div><div class="sub mono" title="{_e(layer.get("node", ""))}">{_e(_short(layer.get("node", "")))}'
            "</div></div>"
        )
    passes = report.get("per_pass") or []
    last = next((i for i in range(len(passes) - 1, -1, -1) if _number(passes[i].get("sqnr_vs_float_db"))), None)
    if last is not None:
        value = passes[last]["sqnr_vs_float_db"]
        cards.append(
            '<div class="stat"><div class="label">output SQNR vs float</div>'
            f'<div class="big">{_span(decibels(value), value, f"per_pass.{last}.sqnr_vs_float_db")} dB</div>'
            f'<div class="sub">after <code>{_e(passes[last].get("name", "?"))}</code></div></div>'
        )
    return f'<div class="cards">{"".join(cards)}</div>' if cards else ""


def _name(name: Any) -> str:
    """An escaped value/node name with line-break opportunities after its separators."""
    escaped = _e(name)
    for separator in ("/", ".", "_"):
        escaped = escaped.replace(separator, separator + "<wbr>")
    return escaped


def _short(name: str, limit: int = 36) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1) :]


def _metric_rows(report: dict, counted: bool) -> tuple[list[str], list[str]]:
    name, _ = _metric(report)
    digits = metric_digits(name or "")
    scores = report.get("all_metrics") or {}
    runtimes = report.get("metric_runtime") or {}
    extra = []
    for label in scores:
        for key, value in (scores[label] or {}).items():
            if key not in (name, *_COUNTS) and _number(value) and key not in extra:
                extra.append(key)
    labels = [label for label in _ordered(scores) if isinstance(scores[label], dict)]
    others = [label for label in labels if label != REFERENCE]
    # worst first (largest degradation), variants without a score last
    others.sort(
        key=lambda label: -(degradation(report, label) if degradation(report, label) is not None else -math.inf)
    )
    rows = []
    for label in ([REFERENCE] if REFERENCE in labels else []) + others:
        item = scores[label]
        value = item.get(name)
        cells = [f"<td>{_e(_label(label))}</td>", f'<td class="muted">{_e(runtimes.get(label, "-"))}</td>']
        cells.append(data_cell(fixed(value, digits), value, key=f"all_metrics.{label}.{name}"))
        if label == REFERENCE:
            cells += ['<td class="num muted">reference</td>', '<td class="num muted">-</td>']
            if counted:
                cells += [_count_cell(item, label, k) for k in _COUNTS] + ["<td></td>"]
        else:
            change = degradation(report, label)
            se = drop_standard_error(report, label)
            text = "-" if change is None else f"{change:+.{digits}f}"
            css = "num" + (" worse" if change and change > 0 else " better" if change and change < 0 else "")
            cells.append(data_cell(text, change, derived="degradation", label=label, cls=css))
            cells.append(data_cell(fixed(se, digits), se, derived="drop_se", label=label))
            if counted:
                cells += [_count_cell(item, label, k) for k in _COUNTS] + [_noise(change, se)]
        for key in extra:
            cells.append(
                data_cell(fixed(item.get(key), metric_digits(key)), item.get(key), key=f"all_metrics.{label}.{key}")
            )
        css = "ours" if label in OURS else "reference" if label == REFERENCE else ""
        rows.append(f'<tr class="{css}">{"".join(cells)}</tr>')
    return rows, extra


def _noise(change: float | None, se: float | None) -> str:
    """Whether a drop stands out of the sampling noise (2 paired standard errors)."""
    if se is None or change is None:
        return "<td></td>"
    if se == 0 and change == 0:
        return '<td><span class="badge ok">identical</span></td>'
    if abs(change) <= 2 * se:
        return '<td><span class="badge ns">within 2·SE</span></td>'
    return f'<td><span class="badge {"sig" if change > 0 else "ok"}">beyond 2·SE</span></td>'


def _count_cell(item: dict, label: str, key: str) -> str:
    value = item.get(key)
    return data_cell(str(value) if _number(value) else "-", value, key=f"all_metrics.{label}.{key}")


def _metrics_section(report: dict) -> str:
    name, higher_is_better = _metric(report)
    scores = report.get("all_metrics") or {}
    if not name or not scores:
        body = '<p class="empty">no metrics recorded</p>'
    else:
        counted = any(isinstance((item or {}).get(k), int) for item in scores.values() for k in _COUNTS)
        rows, extra = _metric_rows(report, counted)
        word = "drop" if higher_is_better else "increase"
        head = (
            "<tr><th>variant</th><th>runtime</th>"
            f'<th class="num">{_e(name)}</th><th class="num">{word} vs FP32</th><th class="num">± SE (paired)</th>'
            + ('<th class="num">lost</th><th class="num">gained</th><th>vs noise</th>' if counted else "")
            + "".join(f'<th class="num">{_e(key)}</th>' for key in extra)
            + "</tr>"
        )
        samples = report.get("eval_samples")
        body = (
            f'<div class="table-wrap"><table class="metrics"><thead>{head}</thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>"
            f'<p class="note">{word.capitalize()} = '
            + ("FP32 − variant" if higher_is_better else "variant − FP32")
            + f" in {_e(name)} units (positive is worse); rows after the reference are worst first. "
            "The paired standard error comes from the samples the float model got right and the variant wrong "
            "(<em>lost</em>) and the reverse (<em>gained</em>)"
            + (f" on {_e(samples)} evaluation samples" if _number(samples) else "")
            + " (<code>qcompile.zoo.paired.drop_interval</code>); "
            + ("a drop" if higher_is_better else "an increase")
            + " within about 2·SE is not distinguishable from zero. Metrics without lost/gained counts "
            "(e.g. cosine, perplexity) show “-”.</p>"
        )
    return _section("metrics", "Task metric", f"{_e(name or '')} of every variant on the same samples", body)


def _section(anchor: str, title: str, lead: str, body: str) -> str:
    return (
        f'<section class="card" id="{anchor}"><h2>{_e(title)}</h2>'
        + (f'<p class="lead">{lead}</p>' if lead else "")
        + body
        + "</section>"
    )


def _latency_section(report: dict) -> str:
    from qcompile.report import plots

    latency = {label: ms for label, ms in (report.get("latency_ms") or {}).items() if _number(ms)}
    if not latency:
        return _section("latency", "Latency", "", '<p class="empty">no latency measured</p>')
    setup = report.get("latency_setup") or {}
    env = report.get("environment") or {}
    tvm = report.get("tvm") or {}
    ort_version = (env.get("versions") or {}).get("onnxruntime")
    ort = "ONNX Runtime" + (f" {ort_version}" if ort_version else "")
    cpu = env.get("cpu") or tvm.get("cpu") or "CPU not recorded"
    parts = [str(cpu)]
    if _number(setup.get("threads")):
        parts.append(f"{setup['threads']} threads")
    if _number(setup.get("batch")):
        parts.append(f"batch {setup['batch']}")
    if _number(setup.get("rounds")):
        parts.append(f"{setup.get('statistic', 'median')} of {setup['rounds']} rounds")
    if tvm.get("kernels"):
        parts.append(f"TVM kernels: {tvm['kernels']}")
    caption = " · ".join(parts)
    bars, rows = [], []
    for label in _ordered(latency):
        ms = latency[label]
        ratio_value = speedup(report, label)
        note = f"{significant(ms)} ms" + ("" if ratio_value is None else f" · {ratio(ratio_value)} speed-up")
        kind = (
            "fp"
            if label == REFERENCE
            else "qcompile"
            if label == "qcompile"
            else "tvm"
            if label == "tvm_int"
            else ("baseline")
        )
        display = _label(label) + (f" ({tvm['kernels']})" if label == "tvm_int" and tvm.get("kernels") else "")
        bars.append(plots.Bar(display, ms, note, kind))
        runtime = f"TVM library ({tvm.get('kernels', '?')} kernels)" if label == "tvm_int" else ort
        rows.append(
            f'<tr class="{"ours" if label in OURS else "reference" if label == REFERENCE else ""}">'
            f"<td>{_e(display)}</td>"
            + data_cell(significant(ms), ms, key=f"latency_ms.{label}")
            + data_cell(ratio(ratio_value), ratio_value, derived="speedup", label=label)
            + f'<td class="muted">{_e(runtime)}</td></tr>'
        )
    chart = plots.latency_chart(bars, "Median latency per variant (lower is better)", caption)
    tvm_facts = ""
    if tvm:
        bit_exact = tvm.get("bit_exact_vs_onnx")
        check = (
            '<span class="badge ok">bit-exact vs model.int.onnx</span>'
            if bit_exact
            else '<span class="badge flag">outputs differ</span>'
            if bit_exact is False
            else f'<span class="badge ns">not checked</span> {_e(tvm.get("not_run", ""))}'
        )
        facts = [
            _fact("TVM target", _target_summary(tvm.get("target", "-"))),
            _fact("kernels", f"<code>{_e(tvm.get('kernels', '-'))}</code>"),
            _fact(
                "build",
                _span(fixed(tvm["build_seconds"], 3), tvm["build_seconds"], "tvm.build_seconds") + " s"
                if _number(tvm.get("build_seconds"))
                else "-",
            ),
            _fact("check", check),
        ]
        tvm_facts = f'<dl class="facts">{"".join(facts)}</dl>'
    body = (
        f"<figure>{chart}<figcaption>Speed-up = latency of ONNX Runtime FP32 / latency of the variant (above 1× "
        "is faster); all variants timed in one process on the same input, in alternating blocks. qcompile's "
        "ONNX model runs in ONNX Runtime; with <code>--target</code> its TVM library is timed as well.</figcaption>"
        "</figure>"
        '<div class="table-wrap"><table class="latency"><thead><tr><th>variant</th><th class="num">ms</th>'
        '<th class="num">speed-up vs ORT FP32</th><th>runtime</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>{tvm_facts}"
    )
    return _section("latency", "Latency", f"on {_e(cpu)}", body)


def _per_layer_section(report: dict) -> str:
    from qcompile.report import plots

    layers = [item for item in report.get("per_layer") or [] if isinstance(item, dict)]
    if not layers or len(layers) != len(report.get("per_layer") or []):
        return _section("layers", "Per-layer SQNR", "", '<p class="empty">no per-layer SQNR recorded</p>')
    values = [item["sqnr_db"] if _number(item.get("sqnr_db")) else INFINITE_DB for item in layers]
    worst = worst_layers(report)
    chart = plots.sqnr_depth_chart(values, worst)
    rows = "".join(
        f'<tr><td class="num idx">{rank}</td><td class="num idx">{i}</td>'
        f'<td class="name">{_name(layers[i].get("node", ""))}</td>'
        + data_cell(decibels(layers[i]["sqnr_db"]), layers[i]["sqnr_db"], key=f"per_layer.{i}.sqnr_db")
        + "</tr>"
        for rank, i in enumerate(worst, start=1)
    )
    table = (
        f'<h3>worst {len(worst)} layers</h3><div class="table-wrap"><table class="worst-layers"><thead><tr>'
        '<th class="num idx">rank</th><th class="num idx">layer #</th><th>output of</th><th class="num">SQNR (dB)</th>'
        f"</tr></thead><tbody>{rows}</tbody></table></div>"
    )
    body = (
        f"<figure>{chart}<figcaption>Each quantized MatMul/Gemm/Conv output against the same value before the "
        "last LOSSY pass, on the numeric-check batch; errors accumulate through earlier layers (in-context SQNR). "
        "Identical outputs (1e9 in report.json) are drawn at the top and shown as ∞.</figcaption></figure>" + table
    )
    return _section("layers", "Per-layer SQNR along depth", f"{len(layers)} quantized layers in graph order", body)


def _options(options: Any) -> str:
    if not isinstance(options, dict) or not options:
        return '<span class="muted">-</span>'
    return (
        '<div class="chips">'
        + "".join(f'<span class="chip">{_e(k)}=<b>{_e(v)}</b></span>' for k, v in options.items())
        + "</div>"
    )


def _check(item: dict, i: int) -> str:
    if _number(item.get("sqnr_db")):
        return "SQNR " + _span(decibels(item["sqnr_db"]), item["sqnr_db"], f"per_pass.{i}.sqnr_db") + " dB"
    if _number(item.get("max_abs_err")):
        text = "max |err| " + _span(exponent(item["max_abs_err"]), item["max_abs_err"], f"per_pass.{i}.max_abs_err")
        if _number(item.get("max_rel_err")):
            text += " · rel " + _span(exponent(item["max_rel_err"]), item["max_rel_err"], f"per_pass.{i}.max_rel_err")
        return text
    return '<span class="muted">-</span>'


def _per_pass_section(report: dict) -> str:
    from qcompile.report import plots

    passes = [item for item in report.get("per_pass") or [] if isinstance(item, dict)]
    if not passes:
        return _section("passes", "Passes", "", '<p class="empty">no passes recorded</p>')
    steps = []
    for item in passes:
        numerics = str(item.get("numerics", "?"))
        exact = numerics != "LOSSY"
        steps.append(
            plots.PassStep(
                name=str(item.get("name", "?")),
                numerics=numerics,
                level_db=item["sqnr_vs_float_db"] if _number(item.get("sqnr_vs_float_db")) else None,
                own_db=item["sqnr_db"] if _number(item.get("sqnr_db")) else None,
                exact=exact,
            )
        )
    chart = plots.pass_waterfall_chart(steps)
    cumulative = any(step.level_db is not None for step in steps)
    rows = []
    for i, item in enumerate(passes):
        numerics = str(item.get("numerics", "?"))
        stats = item.get("stats")
        stats_html = ""
        if stats:
            text = json.dumps(stats, indent=1, default=str)
            text = text if len(text) <= 4000 else text[:4000] + "\n…"
            stats_html = f'<details><summary class="muted">stats</summary><pre class="mono">{_e(text)}</pre></details>'
        rows.append(
            "<tr>"
            f'<td class="num idx">{i + 1}</td>'
            f'<td class="pass"><code>{_e(item.get("name", "?"))}</code>{stats_html}</td>'
            f'<td><span class="badge {_e(numerics)}">{_e(numerics)}</span></td>'
            f"<td>{_options(item.get('options'))}</td>"
            f"<td>{'yes' if item.get('modified') else 'no' if 'modified' in item else '-'}</td>"
            + data_cell(fixed(item.get("seconds"), 3), item.get("seconds"), key=f"per_pass.{i}.seconds")
            + f'<td class="num">{_check(item, i)}</td>'
            + data_cell(
                decibels(item.get("sqnr_vs_float_db")),
                item.get("sqnr_vs_float_db"),
                key=f"per_pass.{i}.sqnr_vs_float_db",
            )
            + "</tr>"
        )
    table = (
        '<div class="table-wrap"><table class="passes"><thead><tr><th class="num idx">#</th>'
        "<th>pass</th><th>numerics</th>"
        '<th>options</th><th>modified</th><th class="num">seconds</th><th class="num">check</th>'
        '<th class="num">SQNR vs float (dB)</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )
    caption = (
        "Each bar runs from the output SQNR against the float model before the pass to the one after it "
        "(<code>sqnr_vs_float_db</code>): red where the pass added error, green where it removed some, gray where "
        "it changed nothing measurable. Levels above the dashed line are drawn on it."
        if cumulative
        else "This report has no <code>sqnr_vs_float_db</code>: each LOSSY pass's own output SQNR against its "
        "input (<code>sqnr_db</code>) is drawn; exact passes are checked within tolerance instead."
    )
    body = (
        f"<figure>{chart}<figcaption>{caption} The check column is CheckNumerics' verdict: LOSSY passes give their "
        "lowest output SQNR, EXACT / EXACT_IN_REALS passes their largest output deviation (absolute, and relative "
        "to the largest output magnitude).</figcaption></figure>" + table
    )
    return _section("passes", "Per-pass attribution", "how each pass moved the output error, in pipeline order", body)


def panel_titles(names: list[str]) -> list[str]:
    """Short panel titles: the names without the path folders they all share and without ONNX's
    `_output_0` suffix (`/backbone/encoder/layer.3/mlp/fc1/MatMul_output_0` → `layer.3/mlp/fc1/MatMul`)."""
    folders = [name.split("/")[:-1] for name in names]
    shared = 0
    while folders and all(len(f) > shared and f[shared] == folders[0][shared] for f in folders):
        shared += 1
    titles = []
    for name in names:
        title = "/".join(name.split("/")[shared:]) if shared else name
        titles.append(title.removesuffix("_output_0") or name)
    return titles


def _ranges_section(report: dict) -> str:
    from qcompile.report import plots

    ranges = report.get("calibration_ranges") or []
    if not ranges:
        return _section("ranges", "Calibration ranges", "", '<p class="empty">no calibration ranges recorded</p>')
    layers = report.get("per_layer") or []
    rank_of = {layers[i].get("node"): rank for rank, i in enumerate(worst_layers(report), start=1)}
    chosen = select_ranges(report)
    titles = panel_titles([str(ranges[i].get("value", "?")) for i in chosen])
    panels, rows = [], []
    for i, title in zip(chosen, titles):
        item = ranges[i]
        ranks = sorted(rank_of[c] for c in item.get("consumers") or [] if c in rank_of)
        clip = clip_ratio(item)
        note = f"{item.get('observer', '?')} · raw/clip {ratio(clip)}"
        panels.append(
            plots.RangePanel(title, item["raw_min"], item["raw_max"], item["lo"], item["hi"], note, bool(ranks))
        )
        feeds = (
            " ".join(f'<span class="badge flag">#{rank}</span>' for rank in ranks)
            if ranks
            else '<span class="muted">-</span>'
        )
        rows.append(
            f'<tr><td class="name">{_name(item.get("value", "?"))}</td><td>{_e(item.get("observer", "-"))}</td>'
            + "".join(
                data_cell(significant(item.get(k)), item.get(k), key=f"calibration_ranges.{i}.{k}")
                for k in ("raw_min", "raw_max", "lo", "hi")
            )
            + data_cell(
                ratio(clip), clip if clip is not None and math.isfinite(clip) else None, derived="clip_ratio", index=i
            )
            + f"<td>{feeds}</td></tr>"
        )
    chart = plots.range_panels(panels)
    table = (
        '<div class="table-wrap"><table class="ranges"><thead><tr><th>value</th><th>observer</th>'
        '<th class="num">raw min</th><th class="num">raw max</th>'
        '<th class="num">clip lo</th><th class="num">clip hi</th>'
        '<th class="num">raw / clip span</th><th>feeds worst layer</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )
    body = (
        f"<figure>{chart}<figcaption>Per value: the observed range over the calibration samples (light, raw) and "
        "the clipping range the observer chose (dark, clip); panels titled in red feed one of the worst layers "
        "above. Shown: "
        "the values feeding the worst layers first, then those the observer clipped most (largest raw/clip span), "
        f"{len(chosen)} of {len(ranges)}.</figcaption></figure>" + table
    )
    return _section("ranges", "Calibration ranges", "the quantized activations most worth a look", body)


def _generations_section(report: dict) -> str:
    generations = [item for item in report.get("generations") or [] if isinstance(item, dict)]
    if not generations:
        return ""
    labels = _ordered({label: None for item in generations for label in (item.get("outputs") or {})})

    def worst_agreement(index: int) -> float:
        agreement = [v for v in (generations[index].get("agreement") or {}).values() if _number(v)]
        return min(agreement) if agreement else math.inf

    order = sorted(range(len(generations)), key=lambda i: (worst_agreement(i), i))
    head = '<tr><th class="num">#</th><th>prompt</th>' + "".join(f"<th>{_e(_label(k))}</th>" for k in labels) + "</tr>"
    rows = []
    for i in order:
        item = generations[i]
        outputs, agreement = item.get("outputs") or {}, item.get("agreement") or {}
        cells = [f'<td class="num">{i + 1}</td><td class="text">{_e(item.get("prompt", ""))}</td>']
        for label in labels:
            score = agreement.get(label)
            badge = (
                '<div class="muted">agreement '
                + data_cell(fixed(score, 3), score, key=f"generations.{i}.agreement.{label}", tag="span", cls="")
                + "</div>"
                if _number(score)
                else ""
            )
            cells.append(f'<td class="text">{_e(outputs.get(label, "-"))}{badge}</td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
    body = (
        f'<div class="table-wrap"><table class="generations"><thead>{head}</thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
        '<p class="note">Prompts ordered by their lowest agreement with the float model first; # is the prompt\'s '
        "position in report.json.</p>"
    )
    return _section("generations", "Generations", "the same prompts through each variant", body)


def _toc(sections: list[tuple[str, str]]) -> str:
    return '<nav class="toc">' + "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in sections) + "</nav>"


def render_html(report: dict) -> str:
    """The page for `report` (a report.json dictionary) as one HTML string."""
    use_private_config()  # before the charts import matplotlib: nothing written under ~/.cache or ~/.config
    parts = [
        ("metrics", "Metrics", _metrics_section(report)),
        ("latency", "Latency", _latency_section(report)),
        ("layers", "Per-layer SQNR", _per_layer_section(report)),
        ("passes", "Passes", _per_pass_section(report)),
        ("ranges", "Calibration ranges", _ranges_section(report)),
        ("generations", "Generations", _generations_section(report)),
    ]
    parts = [part for part in parts if part[2]]
    from qcompile.report.html_style import CSS

    version = ((report.get("environment") or {}).get("versions") or {}).get("qcompile")
    title = f"{report.get('model', 'qcompile')} · {report.get('passes', '')} · qcompile report"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="color-scheme" content="light">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head>"
        '<body><div class="page">'
        + _header(report)
        + _toc([(anchor, name) for anchor, name, _ in parts])
        + "".join(body for _, _, body in parts)
        + f"<footer>qcompile{' ' + _e(version) if version else ''} · built from report.json · "
        "self-contained: no scripts, no network</footer>"
        "</div></body></html>\n"
    )


def write_html_report(report: dict, path: Path) -> Path:
    """Write `render_html(report)` to `path` (UTF-8) and return the path. The page is rendered first and the
    file replaced in one rename, so an earlier report.html is never left half-written."""
    path = Path(path)
    page = render_html(report)
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(page, encoding="utf-8")
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path
