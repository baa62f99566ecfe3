"""Uniform W/A recipes: calibrate then quantize, at 8, 6 and 4 bits; `fp` changes nothing (baselines).

The observer per recipe: min/max at 8 bits (ranges are wide enough that clipping only hurts), MSE search
(OMSE) at 6 and 4 bits, where rounding error dominates and clipping outliers pays. Softmax outputs stay float in these
recipes:
on DINOv2-S (257 tokens) quantizing them alone to uint8 costs 20.1 dB output SQNR against 26.6 dB for
everything else together (docs/methods/uniform.md); log2 quantizers for them are the `repq` pass's job.

Decoder-LLM recipes (docs/methods/per-token.md), no calibration pass (they read no calibrated range):
* `w8a8tok`: weights 8-bit per-channel symmetric, activations 8-bit dynamic per-token symmetric (softmax
  outputs stay float);
* `w4a16`: weight-only, 4-bit asymmetric groups of 128 input channels (RTN), activations float.
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

register_recipe(
    "w8a8tok",
    [("quantize", {"weight_bits": 8, "act_bits": 8, "act_granularity": "token", "keep_float": "Softmax"})],
    "quantize MatMul/Gemm: weights 8-bit per-channel symmetric, activations 8-bit dynamic per-token symmetric "
    "(scales computed in the graph, no calibration; softmax outputs stay float)",
)
register_recipe(
    "w4a16",
    [("quantize", {"weight_bits": 4, "weight_group": 128, "weight_symmetric": False, "act_granularity": "none"})],
    "quantize MatMul/Gemm weights only: 4-bit asymmetric, one scale and zero point per group of 128 input "
    "channels (round to nearest); activations stay float",
)
