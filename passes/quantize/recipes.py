"""Uniform W/A recipes: calibrate then quantize, at 8, 6 and 4 bits; `fp` changes nothing (baselines).

The observer per recipe: min/max at 8 bits (ranges are wide enough that clipping only hurts), MSE search
(OMSE) at 6 and 4 bits, where rounding error dominates and clipping outliers pays. Softmax outputs stay float in these
recipes:
on DINOv2-S (257 tokens) quantizing them alone to uint8 costs 20.1 dB output SQNR against 26.6 dB for
everything else together (docs/methods/uniform.md); log2 quantizers for them are the `repq` pass's job.

Decoder-LLM recipes (docs/methods/per-token.md), no calibration pass (they read no calibrated range; GPTQ,
`weight_search=gptq`, reads the calibration data itself). All keep the LM head float and leave the products
of two activations (attention scores and probabilities·V) float, as GPTQ, QuaRot and llm-compressor do:
* `w8a8tok`: weights 8-bit per-channel symmetric, activations 8-bit dynamic per-token symmetric; what `w8a8`
  means on a decoder LLM;
* `w4a16`: weight-only, 4-bit asymmetric groups of 128 input channels (RTN), activations float;
* `w4a8`: weights 4-bit per-channel symmetric (MSE-clipped), activations 8-bit dynamic per-token symmetric;
* `w4a4` on a decoder LLM: weights as `w4a8`, activations 4-bit dynamic per-token **asymmetric** with a clip
  ratio searched per site on the calibration data (`act_clip_ratio=search`). QuaRot's setting (symmetric, 0.9)
  is `w4a4:act_symmetric=true:act_clip_ratio=0.9`; on SmolLM2 with 8-bit weights it gives perplexity ×1.62
  against ×1.42 for this one (docs/methods/per-token.md);
* `w4a4kv4`: `w4a4` and the KV cache 4-bit (`kv-quant:bits=4:clip_ratio=search`: keys after RoPE and values,
  asymmetric per head and token, a clip ratio searched per layer's keys and values).
A recipe name with decoder steps expands to them when the model is a decoder LLM (`job.is_decoder_llm`).
"""

from qcompile.pipeline.registry import register_recipe

__all__: list[str] = []

_LLM = {"act_matmuls": False, "keep_head_float": True, "keep_float": "Softmax"}


def _llm_steps(weight_bits: int, act_bits: int) -> list:
    options = {"weight_bits": weight_bits, "act_bits": act_bits, "act_granularity": "token", **_LLM}
    if weight_bits == 4:
        options["weight_search"] = "mse"
    if act_bits == 4:
        options.update(act_symmetric=False, act_clip_ratio="search")
    return [("quantize", options)]


def _llm_doc(weight_bits: int, act_bits: int) -> str:
    grid = " (MSE-clipped; weight_search=gptq for GPTQ)" if weight_bits == 4 else ""
    rows = "asymmetric, clip ratio searched per site" if act_bits == 4 else "symmetric"
    return (
        f"decoder LLMs: weights {weight_bits}-bit per-channel symmetric{grid}, activations {act_bits}-bit dynamic "
        f"per-token {rows}; the LM head and the attention's activation products stay float"
    )


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
        decoder_steps=_llm_steps(_bits, _bits) if _bits in (8, 4) else None,
        decoder_doc=_llm_doc(_bits, _bits) if _bits in (8, 4) else None,
    )
register_recipe("w8a8tok", _llm_steps(8, 8), _llm_doc(8, 8))
register_recipe(
    "w4a4kv4",
    [*_llm_steps(4, 4), ("kv-quant", {"bits": 4, "clip_ratio": "search"})],
    _llm_doc(4, 4) + "; the keys (after RoPE) and values entering the KV cache 4-bit asymmetric per head and token, "
    "clip ratio searched per layer",
)
register_recipe("w4a8", _llm_steps(4, 8), _llm_doc(4, 8))
register_recipe(
    "w4a16",
    [
        (
            "quantize",
            {"weight_bits": 4, "weight_group": 128, "weight_symmetric": False, "act_granularity": "none", **_LLM},
        )
    ],
    "decoder LLMs, weight-only: 4-bit asymmetric, one scale and zero point per group of 128 input channels "
    "(round to nearest; weight_search=gptq for GPTQ); activations and the LM head stay float",
)

for _bits, _formats in ((4, "E2M1, E3M0 or E1M2"), (8, "E4M3 or E5M2")):
    register_recipe(
        f"fp{_bits}",
        [("fp-quantize", {"bits": _bits})],
        f"LLM-FP4's floating-point W{_bits}A{_bits}: per site the format ({_formats}), the activation scale "
        "(per tensor, per-channel pre-shifted exponent biases) and per-channel weight scales searched on calibration "
        "rows",
        decoder_steps=[("fp-quantize", {"bits": _bits, "act_granularity": "token"})],
        decoder_doc=f"decoder LLMs: floating-point W{_bits}A{_bits}, format ({_formats}) and per-channel weight "
        "scales searched per site, activations dynamic per token (clip ratio searched); the LM head and the attention "
        "stay float",
    )
