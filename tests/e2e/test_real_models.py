"""Real models end to end (marked slow). `make test` runs them in a bounded form; QCOMPILE_FULL=1 runs
the issue's acceptance sizes (1000 evaluation samples, the full 2000-image probe, 512-sample calibration).

Bounded thresholds are looser than the acceptance ones only because fewer evaluation samples are noisier;
each is stated next to its assertion.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from qcompile import runtime
from qcompile.job import JobConfig, run_job
from qcompile.pipeline.numerics import sqnr_db

pytestmark = pytest.mark.slow
FULL = os.environ.get("QCOMPILE_FULL") == "1"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A shared cache (probes) for this module unless the caller set QCOMPILE_CACHE (make test does)."""
    if "QCOMPILE_CACHE" in os.environ:
        yield
        return
    os.environ["QCOMPILE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    del os.environ["QCOMPILE_CACHE"]


def _check_report_fields(report: dict) -> None:
    for key in ("name", "fp", "quantized", "drop"):
        assert report["metric"][key] is not None
    for key in ("ort_fp32", "qcompile", "ort_int8_static", "ort_int8_dynamic"):
        assert report["latency_ms"][key] > 0
    assert report["calibration"]["samples"] > 0 and report["calibration"]["peak_rss_mb"] > 0
    assert [p["name"] for p in report["per_pass"]] == ["calibrate", "quantize"]
    assert "max_abs_err" in report["per_pass"][0] and "sqnr_db" in report["per_pass"][1]
    assert report["per_layer"] and all(np.isfinite(layer["sqnr_db"]) for layer in report["per_layer"])


def test_dinov2_w8a8_keeps_accuracy_and_beats_onnx_runtime_static(tmp_path, cache):
    from qcompile.zoo.dinov2 import DinoV2Small

    entry = DinoV2Small() if FULL else DinoV2Small(probe_train=200)
    config = JobConfig(
        model=entry,
        passes="w8a8",
        output_dir=tmp_path,
        calib_samples=32 if FULL else 8,
        eval_samples=1000 if FULL else 48,
        progress=False,
        latency_rounds=3,
    )
    report = run_job(config, log=lambda _: None)
    _check_report_fields(report)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.qdq.onnx", "report.html", "report.json"]
    metric = report["metric"]
    # Acceptance: drop ≤ 1.0 point on 1000 images; bounded run (48 images, one image = 2.1 points): ≤ 4.2.
    assert metric["drop"] <= (1.0 if FULL else 4.2)
    if FULL:
        assert metric["quantized"] >= metric["ort_int8_static"]
    # The exported artifact runs in ONNX Runtime and stays close to the float features.
    feeds = entry.calibration(4, seed=123).first_batch()
    quantized = runtime.run(runtime.make_session(str(tmp_path / "model.qdq.onnx")), feeds)["cls"]
    reference = runtime.run(runtime.make_session(entry.load()), feeds)["cls"]
    assert sqnr_db(reference, quantized) > 20.0  # measured 26 dB; uniform-softmax W8A8 gives 19 dB


def test_minilm_w8a8_keeps_accuracy(tmp_path, cache):
    from qcompile.zoo.data.polarity import polarity_path

    if not polarity_path().is_file():
        pytest.skip(f"{polarity_path()} missing: run `make data`")
    config = JobConfig(
        model="zoo:minilm-l6",
        passes="w8a8",
        output_dir=tmp_path,
        calib_samples=32,
        eval_samples=1000 if FULL else 300,
        progress=False,
        latency_rounds=3,
    )
    report = run_job(config, log=lambda _: None)
    _check_report_fields(report)
    # Acceptance: ≤ 1.0 point on 1000 sentences; bounded (300 sentences, one = 0.33 points): ≤ 2.0.
    assert report["metric"]["drop"] <= (1.0 if FULL else 2.0)
    assert report["all_metrics"]["qcompile"]["cosine"] > 0.97  # measured 0.988
    if FULL:
        assert report["metric"]["quantized"] >= report["metric"]["ort_int8_static"]


_CALIBRATE_CHILD = """
import json, sys
from qcompile.zoo.dinov2 import DinoV2Small
from qcompile.pipeline.context import PipelineContext
from qcompile.pipeline.run import run_passes
entry = DinoV2Small(); model = entry.load()
records = run_passes(model, "calibrate",
                     context=PipelineContext(calibration=entry.calibration(int(sys.argv[1]), seed=0), progress=False),
                     check_numerics=False)
print(json.dumps(records[0]["stats"]["peak_rss_mb"]))
"""


def test_calibration_peak_memory_does_not_grow_with_samples(cache):
    large = 512 if FULL else 128

    def peak(samples: int) -> float:
        done = subprocess.run(
            [sys.executable, "-c", _CALIBRATE_CHILD, str(samples)], capture_output=True, text=True, check=True
        )
        return json.loads(done.stdout.strip().splitlines()[-1])

    small_peak, large_peak = peak(16), peak(large)
    assert large_peak <= 1.10 * small_peak, (small_peak, large_peak)


EQUIVALENCE_LISTS = ["smooth", "repq-ln", "noisy", "rotate"]


@pytest.mark.parametrize("name", ["dinov2-s", "minilm-l6"])
def test_equivalence_passes_reproduce_real_model_outputs(name, cache):
    """Issue 3: every EXACT_IN_REALS pass reproduces the float outputs within 1e-4 of max |output| on the
    real models (CheckNumerics would already fail the run; the bound is asserted here explicitly), and
    the structural changes happened where the model allows them."""
    from qcompile import zoo
    from qcompile.pipeline.context import PipelineContext
    from qcompile.pipeline.run import run_passes

    entry = zoo.get(name)
    for passes in EQUIVALENCE_LISTS:
        model = entry.load()
        context = PipelineContext(calibration=entry.calibration(4, 0), seed=0, progress=False)
        records = run_passes(model, passes, context=context)
        checked = [r for r in records if str(r["numerics"]) == "EXACT_IN_REALS"]
        assert checked, passes
        for record in checked:
            if record["modified"]:
                assert record["max_rel_err"] < 1e-4, (passes, record["name"], record["max_rel_err"])
        stats = checked[-1]["stats"]
        if name == "minilm-l6" and passes in ("smooth", "repq-ln"):  # post-LN: every norm site refused
            assert not checked[-1]["modified"] and len(stats["skipped"]) == 13
        if name == "dinov2-s":  # pre-LN ViT: 24 block norms foldable, the final norm read by the CLS Gather
            if passes == "rotate":
                assert stats["residual"]["writers"] == 24 and stats["residual"]["rotation"] == "hadamard"
                assert len(stats["online"]) == 24
            if passes == "repq-ln":
                assert stats["reparameterized"] == 24
        elif passes == "rotate":  # post-LN BERT: residual rotation refused with the reason, online ones done
            assert "post-LN" in stats["residual"] and len(stats["online"]) == 12
            # the embedding norm and the 11 block norms before Q/K/V (3 linears) or FC1 (1) are rotated
            # online; the last norm's output is the model output
            rotated = [n for n in stats["norm_online"] if isinstance(n, dict)]
            assert [len(n["linears"]) for n in rotated] == [3, 1] * 6
            assert stats["norm_online"][-1].endswith("no linear reads the norm output")


def test_gptq_beats_round_to_nearest_on_rotated_minilm_at_4_bits(cache):
    """Issue 3: `weight_search=gptq` lowers every linear's layer loss and raises the held-out output SQNR
    of rotated MiniLM at W4A4 (the accuracy it buys is in benchmarks/results/outlier_minilm-l6.md)."""
    from qcompile import zoo
    from qcompile.pipeline.context import PipelineContext
    from qcompile.pipeline.run import run_passes
    from qcompile.runtime import qdq

    entry = zoo.get("minilm-l6")
    held_out = entry.calibration(16, seed=1).first_batch()
    reference = runtime.run(runtime.make_session(entry.load()), held_out)
    sqnr = {}
    for search in ("minmax", "gptq"):
        model = entry.load()
        context = PipelineContext(calibration=entry.calibration(16, 0), seed=0, progress=False)
        records = run_passes(model, f"rotate,w4a4:weight_search={search}", context=context)
        if search == "gptq":
            stats = records[-1]["stats"]["gptq"]
            assert stats["linears"] == 36 and stats["loss_vs_nearest"]["max"] < 1.0
        out = runtime.run(runtime.make_session(qdq.to_qdq(model)), held_out)
        sqnr[search] = min(sqnr_db(reference[k], out[k]) for k in reference)
    assert sqnr["gptq"] > sqnr["minmax"] + 1.0, sqnr


@pytest.mark.parametrize("name", ["dinov2-s", "minilm-l6"])
def test_intonly_lowers_the_zoo_models_bit_exactly(name, cache, tmp_path):
    """Issue 4: the saved model.int.onnx of w8a8,intonly has no float tensor between the quantizers of the
    real models, and ONNX Runtime's run of it equals the NumPy reference interpreter bit for bit on real
    inputs."""
    import onnx_ir as ir

    from qcompile import zoo
    from qcompile.backends.onnx.export import export
    from qcompile.intops.reference import run_reference
    from qcompile.passes.lowering.intonly import float_values
    from qcompile.pipeline.context import PipelineContext
    from qcompile.pipeline.run import run_passes

    entry = zoo.get(name)
    model = entry.load()
    records = run_passes(
        model, "w8a8,intonly", context=PipelineContext(calibration=entry.calibration(8, 0), seed=0, progress=False)
    )
    assert records[-1]["stats"]["float_values"] == [] and records[-1]["stats"]["float_ops"] == []
    model = ir.load(export(model, tmp_path / "model.int.onnx", fmt="int"))
    assert float_values(model) == []  # on the saved file, through its metadata_props tags
    feeds = {k: v[:2] for k, v in entry.calibration(2, seed=1).first_batch().items()}
    expected = runtime.run(runtime.make_session(model), feeds)
    actual = run_reference(ir.serde.serialize_model(model), feeds)
    for output, array in expected.items():
        np.testing.assert_array_equal(actual[output], array)


def test_dinov2_saved_with_external_data_gives_the_same_report_metrics(tmp_path, cache):
    """The package's DINOv2-S file re-saved with its weights as external data (one file, beside it) and
    read from another working directory: the same metrics and the same artifact as the original file."""
    import onnx

    from qcompile.zoo.dinov2 import DinoV2Small, onnx_path

    folder = tmp_path / "saved"
    folder.mkdir()
    onnx.save(
        onnx.load(str(onnx_path())),
        str(folder / "dinov2.onnx"),
        save_as_external_data=True,
        location="dinov2.onnx.data",
        size_threshold=0,
    )
    assert (folder / "dinov2.onnx").stat().st_size < 1_000_000 < (folder / "dinov2.onnx.data").stat().st_size
    reports = {}
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        for label, entry in (
            ("own", DinoV2Small(probe_train=200)),
            ("external", DinoV2Small(probe_train=200, onnx_file=folder / "dinov2.onnx")),
        ):
            config = JobConfig(
                model=entry,
                passes="w8a8",
                output_dir=tmp_path / label,
                calib_samples=8,
                eval_samples=32 if FULL else 16,
                progress=False,
                baselines=False,
                latency_rounds=1,
            )
            reports[label] = run_job(config, log=lambda _: None)
    finally:
        os.chdir(cwd)
    assert reports["external"]["metric"] == reports["own"]["metric"]
    assert reports["external"]["all_metrics"] == reports["own"]["all_metrics"]
    assert (tmp_path / "external" / "model.qdq.onnx").read_bytes() == (tmp_path / "own" / "model.qdq.onnx").read_bytes()
