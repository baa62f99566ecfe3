"""The TVM artifact: save → load in a fresh object runs without the source model and equals ONNX
Runtime; load refuses another CPU's library, a foreign format and feeds of another shape; the CLI's
--target writes model.so + model.tvm.json, checks bit-exactness and times `tvm_int`, and refuses bad
requests with one line and exit code 2, writing nothing."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest

import qcompile
from qcompile import PipelineContext, runtime
from qcompile.backends import tvm as qtvm
from qcompile.passes.lowering.intonly import IntOnlyPass
from qcompile.testing.builders import tiny_encoder


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tiny = tiny_encoder()
    context = PipelineContext(calibration=tiny.calibration, progress=False)
    qcompile.run_passes(tiny.model, "w8a8", context=context)
    IntOnlyPass(context=context)(tiny.model)
    proto = ir.serde.serialize_model(tiny.model)
    directory = tmp_path_factory.mktemp("tvm")
    compiled = qtvm.compile_int_model(proto, "llvm", {"x": tiny.feeds["x"].shape}, threads=2)
    paths = qtvm.save(compiled, directory)
    return directory, paths, proto, tiny.feeds


def test_saved_library_loads_and_equals_onnx_runtime(saved) -> None:
    directory, paths, proto, feeds = saved
    assert sorted(p.name for p in paths) == ["model.so", "model.tvm.json"]
    meta = json.loads((directory / "model.tvm.json").read_text())
    assert meta["kind"] == "llvm" and meta["cpu"] and '"mcpu":"' + meta["cpu"] + '"' in meta["target"].replace(" ", "")
    assert meta["inputs"] == [{"name": "x", "shape": list(feeds["x"].shape), "dtype": "float32"}]
    model = qtvm.load(directory / "model.so")
    expected = runtime.run(runtime.make_session(proto.SerializeToString()), feeds)["y"]
    np.testing.assert_array_equal(model.run(feeds)["y"], expected)


def test_load_refuses_what_it_cannot_run(saved, tmp_path) -> None:
    directory, paths, _, feeds = saved
    model = qtvm.load(directory)
    with pytest.raises(ValueError, match="built for"):
        model.run({"x": feeds["x"][:1]})
    with pytest.raises(KeyError, match="missing input"):
        model.run({})
    with pytest.raises(FileNotFoundError):
        qtvm.load(tmp_path)
    for change, error in (({"cpu": "some-other-cpu"}, RuntimeError), ({"format": "other/9"}, ValueError)):
        copy = tmp_path / str(len(change)) / next(iter(change))
        copy.mkdir(parents=True)
        (copy / "model.so").write_bytes((directory / "model.so").read_bytes())
        meta = json.loads((directory / "model.tvm.json").read_text())
        (copy / "model.tvm.json").write_text(json.dumps({**meta, **change}))
        with pytest.raises(error):
            qtvm.load(copy)


def test_cli_target_writes_checks_and_times_the_library(tmp_path) -> None:
    from qcompile.cli import main

    out = tmp_path / "out"
    args = [
        "zoo:tiny",
        "--passes",
        "w8a8,intonly",
        "--target",
        "llvm",
        "-o",
        str(out),
        "--calib-samples",
        "8",
        "--eval-samples",
        "8",
        "--quiet",
        "--no-baselines",
    ]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "model.int.onnx",
        "model.so",
        "model.tvm.json",
        "report.html",
        "report.json",
    ]
    report = json.loads((out / "report.json").read_text())
    assert report["tvm"]["bit_exact_vs_onnx"] is True and isinstance(report["latency_ms"]["tvm_int"], float)
    # qcompile's score came from the library, and equals ONNX Runtime's score of model.int.onnx on the same samples
    assert report["metric_runtime"]["qcompile"].startswith("TVM llvm library")
    assert report["metric_runtime"]["ort_fp32"].startswith("ONNX Runtime")
    from qcompile import runtime, zoo

    entry = zoo.get("tiny")
    sessions = {"fp": runtime.make_session(entry.load()), "int": runtime.make_session(str(out / "model.int.onnx"))}
    scores = entry.evaluate(
        {label: (lambda feeds, s=s: runtime.run(s, feeds)["y"]) for label, s in sessions.items()}, 8, 0, progress=False
    )
    assert report["metric"]["quantized"] == scores["int"]["cosine"]
    assert report["target"] == report["tvm"]["target"] and "llvm" in report["target"]
    from qcompile.backends.tvm.artifact import kernel_flavour
    from qcompile.backends.tvm.target import host_target

    assert (
        report["tvm"]["kernels"]
        == kernel_flavour(host_target(1))
        == json.loads((out / "model.tvm.json").read_text())["kernels"]
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--passes", "w8a8", "--target", "llvm"], "add intonly"),
        (["--passes", "w8a8,intonly", "--target", "gpu"], "--target must be"),
        (["--passes", "w8a8,intonly", "--target", "llvm", "--input-shape", "x=1x0x32"], "with positive dims"),
        (["--passes", "w8a8,intonly", "--target", "llvm", "--input-shape", "x=1xa"], "NAME=DxDx"),
    ],
)
def test_cli_refuses_bad_target_requests(tmp_path, capsys, extra, message) -> None:
    from qcompile.cli import main

    out = tmp_path / "out"
    assert main(["zoo:tiny", *extra, "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()
