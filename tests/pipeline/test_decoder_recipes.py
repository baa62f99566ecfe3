"""Recipes that mean other steps on decoder LLMs (`w8a8`, `w4a4`), the decoder-LLM signature, and the job
re-planning a pass list once the model turns out to be one."""

from __future__ import annotations

import json
from pathlib import Path

import onnx_ir as ir
import pytest

from qcompile.cli import main
from qcompile.errors import InputError
from qcompile.frontends.model_kind import is_decoder_llm
from qcompile.frontends.onnx import load
from qcompile.pipeline.registry import decoder_recipes, expand, parse_pass_list
from qcompile.pipeline.run import plan_for_any_model
from qcompile.testing.builders import tiny_encoder_proto


def _steps(text: str, decoder: bool) -> list[tuple[str, dict]]:
    return [(s.name, s.options) for s in expand(parse_pass_list(text), decoder)]


def test_w8a8_is_per_tensor_on_encoders_and_per_token_on_decoders() -> None:
    encoder = _steps("w8a8", decoder=False)
    assert [name for name, _ in encoder] == ["calibrate", "quantize"]
    assert encoder[1][1].get("act_granularity", "tensor") == "tensor"
    (decoder,) = _steps("w8a8", decoder=True)
    assert decoder[0] == "quantize" and decoder[1]["act_granularity"] == "token"
    assert decoder[1]["keep_head_float"] is True and decoder[1]["act_matmuls"] is False
    assert _steps("w8a8tok", decoder=False) == _steps("w8a8", decoder=True)


def test_only_w8a8_w4a4_and_the_fp_recipes_have_decoder_steps() -> None:
    assert sorted(decoder_recipes()) == ["fp4", "fp8", "w4a4", "w8a8"]
    for bits in (4, 8):
        (encoder,) = _steps(f"fp{bits}", decoder=False)
        (decoder,) = _steps(f"fp{bits}", decoder=True)
        assert encoder == ("fp-quantize", {"bits": bits})
        assert decoder == ("fp-quantize", {"bits": bits, "act_granularity": "token"})
    assert _steps("w6a6", decoder=True) == _steps("w6a6", decoder=False)
    (w4a4,) = _steps("w4a4", decoder=True)
    assert w4a4[1]["act_bits"] == 4 and w4a4[1]["weight_search"] == "mse"
    assert w4a4[1]["act_symmetric"] is False and w4a4[1]["act_clip_ratio"] == "search"


def test_options_valid_only_for_the_decoder_steps_plan_for_a_decoder() -> None:
    assert plan_for_any_model("w8a8")[2] is False
    _, passes, decoder = plan_for_any_model("w4a4:act_clip_ratio=0.8")
    assert decoder is True and passes[0].act_clip_ratio == 0.8
    with pytest.raises(InputError, match="bogus"):  # valid for neither: the encoder plan's error
        plan_for_any_model("w4a4:bogus=1")


def test_the_decoder_signature(tiny_llama_export) -> None:
    assert is_decoder_llm(load(tiny_llama_export("pow2")))
    assert not is_decoder_llm(ir.serde.deserialize_model(tiny_encoder_proto()))


def test_the_cli_runs_w8a8_per_token_on_a_decoder(tmp_path: Path, isolated_cache: Path) -> None:
    out = tmp_path / "out"
    args = ["zoo:tiny-llama", "--passes", "w8a8", "-o", str(out), "--eval-samples", "2", "--quiet", "--no-baselines"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["decoder_llm"] is True and report["passes"] == "w8a8"
    assert [p["name"] for p in report["per_pass"]] == ["quantize"]  # no calibrate step
    assert report["per_pass"][0]["options"]["act_granularity"] == "token"
