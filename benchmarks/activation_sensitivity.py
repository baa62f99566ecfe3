"""Which activations does 8-bit uniform quantization hurt? Output SQNR of one model under quantizer subsets.

For DINOv2-S: calibrate on 16 training images, then measure the SQNR of the CLS feature on 8 other
images when only some quantizers are kept. Reproduces the tables in docs/methods/uniform.md (the
softmax decision and the observer comparison). Reports; asserts nothing.

    python benchmarks/activation_sensitivity.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from qcompile import runtime
from qcompile.calibration.observers import make_observer
from qcompile.calibration.runner import stream_statistics
from qcompile.ir import producer_op, quant_meta
from qcompile.passes.quantize.params import asymmetric_spec
from qcompile.pipeline.context import PipelineContext
from qcompile.pipeline.numerics import sqnr_db
from qcompile.pipeline.run import run_passes
from qcompile.runtime import qdq
from qcompile.zoo.dinov2 import DinoV2Small

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    entry = DinoV2Small()
    calibration = entry.calibration(16, seed=0)
    test = entry.calibration(8, seed=1).first_batch()
    reference = runtime.run(runtime.make_session(entry.load()), test)["cls"]

    def quantized(passes: str, keep=lambda value: True, softmax_observer: str | None = None) -> float:
        model = entry.load()
        run_passes(
            model, passes, context=PipelineContext(calibration=calibration, progress=False), check_numerics=False
        )
        for value in quant_meta.quantized_values(model.graph):
            if not keep(value):
                quant_meta.clear_quant(value)
        if softmax_observer:
            probs = [v for v in quant_meta.quantized_values(model.graph) if producer_op(v) == "Softmax"]
            observers, _ = stream_statistics(
                model, calibration, [v.name for v in probs], lambda _: make_observer(softmax_observer), progress=False
            )
            for value in probs:
                quant_meta.set_quant(value, asymmetric_spec(*observers[value.name].range(), 8))
        output = runtime.run(runtime.make_session(qdq.to_qdq(model)), test)["cls"]
        return sqnr_db(reference, output)

    everything = "calibrate,quantize"
    is_activation = lambda v: v.const_value is None  # noqa: E731
    rows = {
        "all quantizers (minmax)": quantized(everything),
        "weights only": quantized(everything, lambda v: not is_activation(v)),
        "activations only": quantized(everything, is_activation),
        "activations: only the softmax outputs": quantized(everything, lambda v: producer_op(v) == "Softmax"),
        "activations: all but the softmax outputs": quantized(
            everything, lambda v: is_activation(v) and producer_op(v) != "Softmax"
        ),
        "all, softmax range by mse": quantized(everything, softmax_observer="mse"),
        "all, softmax range by percentile": quantized(everything, softmax_observer="percentile"),
        "all, softmax range by entropy": quantized(everything, softmax_observer="entropy"),
        "all quantizers, observer mse": quantized("calibrate:observer=mse,quantize"),
        "all quantizers, observer percentile": quantized("calibrate:observer=percentile,quantize"),
        "all quantizers, observer entropy": quantized("calibrate:observer=entropy,quantize"),
        "w8a8 recipe (softmax outputs float)": quantized("w8a8"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "activation_sensitivity_dinov2-s.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "# DINOv2-S W8A8: output SQNR by quantizer subset",
        "",
        "`python benchmarks/activation_sensitivity.py` "
        "(16 calibration images, SQNR of the CLS feature on 8 other images)",
        "",
        "| quantizers kept | SQNR dB |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in rows.items()],
    ]
    (RESULTS / "activation_sensitivity_dinov2-s.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
