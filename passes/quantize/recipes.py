"""Uniform W/A recipes: calibrate then quantize, at 8, 6 and 4 bits; `fp` changes nothing (baselines).

The observer per recipe: min/max at 8 bits (ranges are wide enough that clipping only hurts), MSE search
(OMSE) at 6 and 4 bits, where rounding error dominates and clipping outliers pays. Softmax outputs stay float in these
recipes:
on DINOv2-S (257 tokens) quantizing them alone to uint8 costs 20.1 dB output SQNR against 26.6 dB for
everything else together (docs/methods/uniform.md); log2 quantizers for them are the `repq` pass's job.
"""

from qcompile.pipeline.registry import register_recipe

__all__: list[str] = []

register_recipe("fp", [], "no passes: the float model, for baselines")
for _bits, _observer in ((8, "minmax"), (6, "mse"), (4, "mse")):
    register_recipe(
        f"w{_bits}a{_bits}",
        [
            ("calibrate", {"observer": _observer, "bits": _bits}),
            ("quantize", {"weight_bits": _bits, "act_bits": _bits, "keep_float": "Softmax"}),
        ],
        f"calibrate ({_observer}) then quantize MatMul/Gemm: weights {_bits}-bit per-channel symmetric, "
        f"activations {_bits}-bit per-tensor asymmetric (softmax outputs stay float)",
    )
