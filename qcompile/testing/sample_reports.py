"""Synthetic report.json dictionaries (schema: docs/report.md) for testing and previewing report.html.

`classifier_report()` looks like a DINOv2-S W8A8 run: top-1 with paired lost/gained counts, four ONNX
Runtime variants, 72 quantized layers, three passes and calibration ranges, some of them clipped.
The other builders derive from it: with a TVM library, without baselines, an LLM-style report
(perplexity, lower is better, with generations), a minimal one (only the keys every report has), and
one with hostile strings in every name.
"""

from __future__ import annotations

import copy
import math
from typing import Any

__all__ = [
    "classifier_report",
    "tvm_report",
    "no_baseline_report",
    "llm_report",
    "minimal_report",
    "hostile_report",
    "HOSTILE",
]

HOSTILE = "<script>alert('x')</script>&\"quoted\" $\\alpha$ </td></table> 模型 🚀"

_PROJECTIONS = (
    "attention/attention/query/MatMul_output_0",
    "attention/attention/key/MatMul_output_0",
    "attention/attention/value/MatMul_output_0",
    "attention/attention/MatMul_output_0",
    "attention/attention/MatMul_1_output_0",
    "attention/output/dense/MatMul_output_0",
)
_MLP = ("mlp/fc1/MatMul_output_0", "mlp/fc2/MatMul_output_0")


def _layer_names(blocks: int) -> list[str]:
    return [f"/backbone/encoder/layer.{b}/{part}" for b in range(blocks) for part in (*_PROJECTIONS, *_MLP)][:72]


def _sqnr(index: int, name: str) -> float:
    """A plausible in-context SQNR: slowly falling with depth, fc2 and the attention MatMuls lower."""
    value = 38.0 - 0.09 * index + 2.5 * math.sin(index * 1.7)
    if "fc2" in name:
        value -= 9.0 + 0.05 * index
    if "MatMul_1" in name:
        value -= 4.0
    return round(value, 6)


def classifier_report() -> dict[str, Any]:
    layers = _layer_names(9)
    per_layer = [{"node": name, "sqnr_db": _sqnr(i, name)} for i, name in enumerate(layers)]
    per_layer[3]["sqnr_db"] = 1e9  # identical outputs
    ranges = []
    for b in range(9):
        for value, consumers, observer, clip in (
            (f"/backbone/encoder/layer.{b}/norm1/LayerNorm_output_0", [layers[8 * b], layers[8 * b + 1]], "mse", 0.7),
            (f"/backbone/encoder/layer.{b}/attention/attention/Softmax_output_0", [layers[8 * b + 4]], "minmax", 1.0),
            (f"/backbone/encoder/layer.{b}/mlp/act/Mul_1_output_0", [layers[8 * b + 7]], "percentile", 0.35),
        ):
            raw_min, raw_max = (-4.0 - 0.6 * b, 5.5 + 2.1 * b) if "Softmax" not in value else (0.0, 0.99)
            if "act" in value:
                raw_min, raw_max = -0.17, 11.0 + 6.5 * b
            ranges.append(
                {
                    "value": value,
                    "raw_min": raw_min,
                    "raw_max": raw_max,
                    "lo": max(raw_min, raw_min * clip),
                    "hi": raw_max * clip,
                    "observer": observer,
                    "consumers": consumers,
                }
            )
    return {
        "model": "zoo:dinov2-s",
        "passes": "smooth:alpha=0.5,w8a8",
        "metric": {
            "name": "top1",
            "fp": 81.6,
            "quantized": 80.6,
            "drop": 1.0,
            "ort_int8_static": 75.8,
            "ort_int8_dynamic": 79.8,
        },
        "all_metrics": {
            "ort_fp32": {"top1": 81.6, "lost": 0, "gained": 0},
            "qcompile": {"top1": 80.6, "lost": 11, "gained": 6},
            "ort_int8_static": {"top1": 75.8, "lost": 38, "gained": 9},
            "ort_int8_dynamic": {"top1": 79.8, "lost": 16, "gained": 7},
        },
        "latency_ms": {
            "ort_fp32": 138.54453099975217,
            "qcompile": 117.73753200031933,
            "ort_int8_static": 112.26889899990056,
            "ort_int8_dynamic": 101.57676299968443,
        },
        "latency_setup": {"threads": 2, "rounds": 15, "statistic": "median", "batch": 1},
        "calibration": {
            "samples": 32,
            "peak_rss_mb": 1594.0234375,
            "seconds": 4.817818356999851,
            "ort_static_seconds": 13.819859129999713,
        },
        "eval_samples": 500,
        "seed": 0,
        "per_pass": [
            {
                "name": "calibrate",
                "numerics": "EXACT",
                "modified": True,
                "seconds": 4.817818356999851,
                "options": {"observer": "mse"},
                "sqnr_vs_float_db": 1e9,
                "max_abs_err": 0.0,
                "max_rel_err": 0.0,
                "stats": {"values": 96, "samples": 32, "observer": "mse", "peak_rss_mb": 1594.0234375},
            },
            {
                "name": "smooth",
                "numerics": "EXACT_IN_REALS",
                "modified": True,
                "seconds": 0.3121,
                "options": {"alpha": 0.5},
                "sqnr_vs_float_db": 121.43,
                "max_abs_err": 3.1e-05,
                "max_rel_err": 4.2e-07,
                "stats": {"smoothed": 36, "skipped": {}},
            },
            {
                "name": "quantize",
                "numerics": "LOSSY",
                "modified": True,
                "seconds": 0.04552249399966968,
                "options": {"weight_bits": 8, "act_bits": 8},
                "sqnr_vs_float_db": 26.287704701953384,
                "sqnr_db": 26.287704701953384,
                "stats": {"weights": 72, "activations": 84, "kept_float": 12, "skipped": {}},
            },
        ],
        "per_layer": per_layer,
        "artifact": "model.qdq.onnx",
        "metric_runtime": {
            label: "ONNX Runtime 1.32.0" for label in ("ort_fp32", "qcompile", "ort_int8_static", "ort_int8_dynamic")
        },
        "calibration_ranges": ranges,
        "environment": {
            "command": "qcompile zoo:dinov2-s --passes smooth:alpha=0.5,w8a8 -o out/dinov2",
            "versions": {"qcompile": "0.1.0", "onnx": "1.23.2", "onnxruntime": "1.32.0", "numpy": "2.4.6"},
            "cpu": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
            "cpu_flags": ["avx2", "avx512f", "avx512bw", "avx512_vnni", "amx_int8"],
            "python": "3.11.7",
            "platform": "Linux-6.1-x86_64-with-glibc2.36",
        },
        "files": ["model.qdq.onnx", "report.json", "report.html"],
    }


def tvm_report() -> dict[str, Any]:
    report = classifier_report()
    report["passes"] = "smooth:alpha=0.5,w8a8,intonly"
    report["artifact"] = "model.int.onnx"
    report["target"] = '{"kind":"llvm","keys":["cpu"],"mcpu":"sapphirerapids","num-cores":2}'
    report["tvm"] = {
        "target": report["target"],
        "cpu": "sapphirerapids",
        "kernels": "avx512vnni",
        "build_seconds": 41.25,
        "files": ["model.so", "model.tvm.json"],
        "inputs": [{"name": "pixel_values", "shape": [1, 3, 224, 224], "dtype": "float32"}],
        "threads": 2,
        "bit_exact_vs_onnx": True,
    }
    report["latency_ms"]["tvm_int"] = 48.731
    report["metric_runtime"]["qcompile"] = "TVM llvm library (avx512vnni kernels)"
    report["per_pass"].append(
        {
            "name": "intonly",
            "numerics": "LOSSY",
            "modified": True,
            "seconds": 0.5,
            "options": {},
            "sqnr_vs_float_db": 25.9,
            "sqnr_db": 38.2,
            "stats": {"float_ops": [], "float_values": []},
        }
    )
    return report


def no_baseline_report() -> dict[str, Any]:
    report = classifier_report()
    for label in ("ort_int8_static", "ort_int8_dynamic"):
        del report["all_metrics"][label], report["latency_ms"][label], report["metric"][label]
        del report["metric_runtime"][label]
    report["calibration"]["ort_static_seconds"] = None
    return report


def llm_report() -> dict[str, Any]:
    report = classifier_report()
    report["model"] = "zoo:qwen2-0.5b"
    report["passes"] = "rotate,w4a8"
    report["metric"] = {
        "name": "perplexity",
        "higher_is_better": False,
        "fp": 13.912,
        "quantized": 14.687,
        "drop": -0.775,
    }
    report["all_metrics"] = {
        "ort_fp32": {"perplexity": 13.912},
        "qcompile": {"perplexity": 14.687},
        "ort_int8_dynamic": {"perplexity": 15.304},
    }
    report["latency_ms"] = {"ort_fp32": 412.5, "qcompile": 260.25, "ort_int8_static": None, "ort_int8_dynamic": 301.0}
    report["generations"] = [
        {
            "prompt": "The capital of France is",
            "outputs": {"ort_fp32": " Paris, which is also", "qcompile": " Paris, which is the"},
            "agreement": {"qcompile": 0.75},
        },
        {
            "prompt": "if (a < b && c > d) { <b>bold</b> }",
            "outputs": {"ort_fp32": " return a;", "qcompile": " return a;\n}"},
            "agreement": {"qcompile": 0.5},
        },
    ]
    return report


def minimal_report() -> dict[str, Any]:
    """Only the keys of every report (the CLI's `qcompile report` accepts any dict with these)."""
    return {
        "model": "model.onnx",
        "passes": "w8a8",
        "metric": {"name": "cosine", "fp": 1.0, "quantized": 0.99871, "drop": 0.00129},
        "latency_ms": {"ort_fp32": 2.5, "qcompile": None},
    }


def hostile_report() -> dict[str, Any]:
    report = copy.deepcopy(tvm_report())
    report["model"] = HOSTILE
    report["passes"] = HOSTILE
    report["artifact"] = HOSTILE
    report["environment"]["command"] = HOSTILE
    report["environment"]["cpu"] = HOSTILE
    report["environment"]["versions"][HOSTILE] = HOSTILE
    report["per_layer"][10]["node"] = HOSTILE
    report["per_layer"][10]["sqnr_db"] = -3.0  # the worst layer
    report["calibration_ranges"][0]["value"] = HOSTILE
    report["calibration_ranges"][0]["consumers"] = [HOSTILE]
    report["per_pass"][1]["options"] = {HOSTILE: HOSTILE}
    report["metric_runtime"]["qcompile"] = HOSTILE
    report["all_metrics"][HOSTILE] = {"top1": 1.0}
    report["latency_ms"][HOSTILE] = 1.0
    report["tvm"]["kernels"] = HOSTILE
    report["generations"] = [{"prompt": HOSTILE, "outputs": {"qcompile": HOSTILE}, "agreement": {"qcompile": 0.0}}]
    return report
