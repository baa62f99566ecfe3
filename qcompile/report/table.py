"""Human-readable summary of a report: metric and latency side by side, then per-pass checks."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from qcompile.report.html import LABELS

__all__ = ["print_report"]

_LABELS = {label: name for label, name in LABELS.items() if label != "tvm_int"}  # the TVM row is built apart


def _kind(tvm: dict[str, Any]) -> str:
    return "cuda" if "cuda" in tvm["target"] else "llvm"


def _fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _rows(report: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(name, metric, latency ms) per runtime. With a TVM library that scored qcompile's model, that row is
    the library (its latency `tvm_int`) and model.int.onnx in ONNX Runtime, its untimed reference, is left out."""
    metric = report["metric"]["name"]
    scores, latency = report["all_metrics"], report["latency_ms"]
    tvm = report.get("tvm")
    scored_by_tvm = str(report.get("metric_runtime", {}).get("qcompile", "")).startswith("TVM")
    rows = []
    for label, name in _LABELS.items():
        if label not in scores or (label == "qcompile" and scored_by_tvm):
            continue
        if label == "qcompile":
            name = "qcompile integer-only (ONNX Runtime)" if report.get("artifact") == "model.int.onnx" else name
        rows.append((name, scores[label][metric], latency.get(label)))
    if tvm is not None:  # its own score (a decoder library), else bit-exact with qcompile's ONNX model (checked)
        value = scores["tvm_int"][metric] if "tvm_int" in scores else None
        value = scores["qcompile"][metric] if value is None and tvm.get("bit_exact_vs_onnx") else value
        name = f"qcompile TVM {_kind(tvm)} ({tvm['kernels']})"
        rows.insert(1 if scored_by_tvm else len(rows), (name, value, latency.get("tvm_int")))
    return rows


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    metric = report["metric"]["name"]
    table = Table(title=f"{report['model']}  --passes {report['passes']}")
    table.add_column("model")
    table.add_column(metric, justify="right")
    higher_is_better = report["metric"].get("higher_is_better", True)
    table.add_column("drop" if higher_is_better else "increase", justify="right")
    table.add_column("latency ms", justify="right")
    table.add_column("vs FP32", justify="right")
    fp_latency = report["latency_ms"].get("ort_fp32")
    fp_metric = report["all_metrics"]["ort_fp32"][metric]
    digits = 3 if metric == "cosine" else 2
    for name, value, latency in _rows(report):
        speedup = f"{fp_latency / latency:.2f}x" if latency and fp_latency else "-"
        drop = None if value is None else (fp_metric - value if higher_is_better else value - fp_metric)
        table.add_row(name, _fmt(value, digits), _fmt(drop), _fmt(latency), speedup)
    console.print(table)
    for label, why in report.get("latency_not_timed", {}).items():
        console.print(f"not timed: {label}: {why}")
    setup = report["latency_setup"]
    calibration = report["calibration"]
    console.print(
        f"latency: median of {setup['rounds']} runs (alternating blocks of 3 per model), batch {setup['batch']}, "
        f"{setup['threads']} threads; "
        f"calibration: {calibration['samples']} samples, peak RSS {_fmt(calibration['peak_rss_mb'], 0)} MB"
    )
    passes = Table(title="passes")
    for column in ("pass", "numerics", "modified", "seconds", "check"):
        passes.add_column(column)
    for item in report["per_pass"]:
        if "sqnr_db" in item:
            check = f"SQNR {item['sqnr_db']:.1f} dB"
        elif "max_abs_err" in item:
            relative = item.get("max_rel_err")
            check = f"max |err| {item['max_abs_err']:.2g}" + (
                "" if relative is None else f" ({relative:.2g} of max |out|)"
            )
        else:
            check = "-"
        passes.add_row(item["name"], item["numerics"], str(item["modified"]), f"{item['seconds']:.2f}", check)
    if report["per_pass"]:
        console.print(passes)
