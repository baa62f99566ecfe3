"""`qcompile.compile`: the CLI's job as a Python call, returning what it wrote."""

from __future__ import annotations

import json

import numpy as np
import pytest

import qcompile
from qcompile import runtime, zoo
from qcompile.errors import InputError

SMALL = {"calib_samples": 8, "eval_samples": 6}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("QCOMPILE_CACHE", str(tmp_path / "cache"))


def test_compile_writes_what_the_cli_writes_and_returns_its_report(tmp_path) -> None:
    result = qcompile.compile("zoo:tiny", passes="w8a8", output_dir=tmp_path / "out", **SMALL)
    assert isinstance(result, qcompile.Result)
    assert result.artifact == tmp_path / "out" / "model.qdq.onnx" and result.artifact.is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in result.files)
    assert result.report == json.loads(result.report_json.read_text())
    assert result.report_html == tmp_path / "out" / "report.html" and result.report_html.is_file()
    assert result.library is None
    assert result.report["passes"] == "w8a8" and result.report["metric"]["name"] == "cosine"


def test_compile_calibrates_and_scores_on_the_users_batches(tmp_path) -> None:
    entry = zoo.get("tiny")
    model = entry.load()
    rng = np.random.default_rng(7)
    name = model.graph.inputs[0].name
    shape = entry.latency_feeds()[name].shape[1:]
    calibration = [{name: rng.normal(0, 1, (4, *shape)).astype(np.float32)} for _ in range(3)]
    evaluation = [{name: rng.normal(0, 1, (5, *shape)).astype(np.float32)} for _ in range(2)]

    result = qcompile.compile(
        model,
        passes="w8a8",
        output_dir=tmp_path / "out",
        calibration=calibration,
        evaluation=evaluation,
        baselines=False,
        html=False,
    )
    report = result.report
    assert report["calibration"]["samples"] == 12  # all of the user's calibration batches
    assert result.report_html is None and "report.html" not in report["files"]
    # the score is the cosine agreement on exactly the user's evaluation batches, recomputed here
    fp = runtime.make_session(entry.load())
    quantized = runtime.make_session(str(result.artifact))
    cosines = []
    for feeds in evaluation:
        a = runtime.run(fp, feeds)["y"].reshape(5, -1).astype(np.float64)
        b = runtime.run(quantized, feeds)["y"].reshape(5, -1).astype(np.float64)
        cosines.extend(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
    assert report["metric"]["quantized"] == pytest.approx(float(np.mean(cosines)), rel=1e-12)
    assert report["metric"]["fp"] == pytest.approx(1.0, abs=1e-12)


def test_compile_takes_a_recipe_file(tmp_path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('passes = ["calibrate:observer=mse"]\n[[pass]]\nname = "quantize"\n')
    result = qcompile.compile("zoo:tiny", recipe=recipe, output_dir=tmp_path / "out", baselines=False, **SMALL)
    assert [p["name"] for p in result.report["per_pass"]] == ["calibrate", "quantize"]
    assert result.report["per_pass"][0]["options"]["observer"] == "mse"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"passes": "w8a8", "recipe": "r.toml"}, "exactly one"),
        ({}, "exactly one"),
        ({"passes": "w8a8", "target": "llvm"}, "add intonly"),
        ({"passes": "w8a9"}, "unknown pass or recipe 'w8a9'"),
    ],
)
def test_compile_refuses_bad_requests_before_writing_anything(tmp_path, kwargs, message) -> None:
    with pytest.raises(InputError, match=message):
        qcompile.compile("zoo:tiny", output_dir=tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_compile_refuses_a_model_of_an_unknown_kind(tmp_path) -> None:
    with pytest.raises(InputError, match="model must be a path"):
        qcompile.compile(42, passes="w8a8", output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
