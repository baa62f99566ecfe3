"""Tests of the `qcompile` command: listing passes, one-line errors with exit code 2 for bad input, exit
code 1 for a pass failure, and a full zoo:tiny run whose report has every field."""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from qcompile import zoo
from qcompile.cli import main
from qcompile.pipeline.registry import registered_passes, registered_recipes
from qcompile.testing.builders import tiny_encoder_proto

TINY_RUN = ["--calib-samples", "8", "--eval-samples", "6", "--quiet"]


def _assert_one_error_line(stderr: str, prefix: str = "qcompile: error:") -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(prefix), stderr
    assert "Traceback" not in stderr
    return lines[0]


def _single_node_model(path: Path, op_type: str, inputs: list[str], node_name: str) -> Path:
    graph = helper.make_graph(
        [helper.make_node(op_type, inputs, ["y"], name=node_name)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _malformed(tmp_path: Path, kind: str) -> tuple[Path, str]:
    """A malformed model file of the given kind and the text its error message must contain."""
    if kind == "truncated":
        path = tmp_path / "truncated.onnx"
        path.write_bytes(tiny_encoder_proto().SerializeToString()[:5000])
        return path, "truncated.onnx: not a valid ONNX file"
    if kind == "unknown_op":
        return _single_node_model(
            tmp_path / "unknown_op.onnx", "Frobnicate", ["x"], "frob"
        ), "node 'frob' uses unknown op 'Frobnicate'"
    if kind == "missing_initializer":
        path = _single_node_model(tmp_path / "missing_init.onnx", "MatMul", ["x", "weight"], "mm")
        return path, "node 'mm' (MatMul) reads 'weight'"
    path = tmp_path / "not_onnx.onnx"
    path.write_text("name,value\nalpha,1\n")
    return path, "not_onnx.onnx: not a valid ONNX file"


@pytest.mark.parametrize("kind", ["truncated", "unknown_op", "missing_initializer", "not_onnx"])
def test_a_malformed_model_exits_2_with_one_error_line_in_a_subprocess(
    tmp_path: Path, isolated_cache: Path, kind: str
) -> None:
    path, expected = _malformed(tmp_path, kind)
    out = tmp_path / "out"

    completed = subprocess.run(
        [sys.executable, "-m", "qcompile.cli", str(path), "--passes", "w8a8", "-o", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
        env={**os.environ, "QCOMPILE_CACHE": str(isolated_cache)},
    )

    assert completed.returncode == 2, completed.stderr
    line = _assert_one_error_line(completed.stderr)
    assert expected in line and str(path) in line
    assert completed.stdout == ""
    assert not out.exists()


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["zoo:tiny", "-o", "{out}"], "--passes is required"),
        (["zoo:tiny", "--passes", "w8a8,quantise", "-o", "{out}"], "unknown pass or recipe 'quantise'"),
        (
            ["zoo:tiny", "--passes", "w8a8:colour=red", "-o", "{out}"],
            "recipe 'w8a8' has no step taking option(s) colour",
        ),
        (["zoo:tiny", "--passes", "w8a8,,fp", "-o", "{out}"], "empty pass name"),
        (["zoo:nonesuch", "--passes", "w8a8", "-o", "{out}"], "unknown zoo model 'nonesuch'"),
        (
            ["zoo:tiny", "--passes", "w8a8", "-o", "{out}", "--calib-samples", "-1"],
            "--calib-samples must be at least 0, got -1",
        ),
        (
            ["zoo:tiny", "--passes", "w8a8", "-o", "{out}", "--eval-samples", "0"],
            "--eval-samples must be at least 1, got 0",
        ),
        (["zoo:tiny", "--passes", "w8a8", "-o", "{out}", "--threads", "0"], "--threads must be at least 1, got 0"),
        (["zoo:tiny", "--passes", "w8a8"], "-o/--output OUTDIR is required"),
        (["zoo:tiny", "--passes", "quantize", "-o", "{out}"], "requires CALIBRATED"),
        (
            ["zoo:tiny", "--passes", "calibrate:observer=magic", "-o", "{out}"],
            "pass 'calibrate': unknown observer 'magic'",
        ),
        (["{tmp}/absent.onnx", "--passes", "w8a8", "-o", "{out}"], "absent.onnx: no such file"),
        (["{tmp}", "--passes", "w8a8", "-o", "{out}"], "is a directory, not an ONNX file"),
        (["zoo:tiny", "--passes", "w8a8", "-o", "{out}", "--plugin", "{tmp}/absent.py"], "absent.py: no such file"),
    ],
)
def test_bad_input_exits_2_with_one_error_line(
    tmp_path: Path, isolated_cache: Path, capsys, argv: list[str], expected: str
) -> None:
    out = tmp_path / "out"
    argv = [a.format(out=out, tmp=tmp_path) for a in argv]

    code, _, err = _main(argv, capsys)

    assert code == 2
    assert expected in _assert_one_error_line(err)
    assert not out.exists()


def test_an_output_path_that_is_a_file_is_rejected(tmp_path: Path, capsys) -> None:
    (tmp_path / "out").write_text("not a folder")
    code, _, err = _main(["zoo:tiny", "--passes", "w8a8", "-o", str(tmp_path / "out")], capsys)
    assert code == 2 and "exists and is not a directory" in _assert_one_error_line(err)
    assert (tmp_path / "out").read_text() == "not a folder"


def test_passes_lists_every_pass_and_recipe_with_its_numerics(capsys) -> None:
    code, out, err = _main(["passes"], capsys)

    assert code == 0 and err == ""
    lines = out.splitlines()
    for name, cls in registered_passes().items():
        (index,) = [i for i, line in enumerate(lines) if line.split()[:1] == [name]]
        details = lines[index + 1]
        assert f"numerics={cls.numerics}" in details
        assert "requires=" + (",".join(sorted(map(str, cls.requires))) or "-") in details
        assert "establishes=" + (",".join(sorted(map(str, cls.establishes))) or "-") in details
    for name, recipe in registered_recipes().items():
        (index,) = [i for i, line in enumerate(lines) if line.split()[:1] == [name]]
        assert lines[index + 1].split() == ["=", ",".join(str(s) for s in recipe.steps) or "(nothing)"]
    assert "numerics=EXACT " in out and "numerics=LOSSY " in out


BROKEN_PLUGIN = textwrap.dedent(
    '''
    import numpy as np
    import onnx_ir as ir

    import qcompile


    @qcompile.register_pass("nudge_fc2")
    class NudgeFc2Pass(qcompile.Pass):
        """Claims to be exact but scales fc2's weight by 1.01."""

        numerics = qcompile.Numerics.EXACT_IN_REALS

        def call(self, model):
            value = model.graph.initializers["fc2.weight"]
            value.const_value = ir.tensor(value.const_value.numpy() * np.float32(1.01), name="fc2.weight")
            return qcompile.PassResult(model, modified=True)
    '''
)


def test_a_pass_failure_exits_1_with_one_line_and_leaves_no_artifact(
    tmp_path: Path, isolated_cache: Path, clean_registry, capsys
) -> None:
    plugin = tmp_path / "nudge.py"
    plugin.write_text(BROKEN_PLUGIN)
    out = tmp_path / "out"

    code, _, err = _main(
        ["zoo:tiny", "--plugin", str(plugin), "--passes", "calibrate,nudge_fc2,quantize", "-o", str(out), *TINY_RUN],
        capsys,
    )

    assert code == 1
    line = _assert_one_error_line(err, prefix="qcompile: failed:")
    assert "pass 'nudge_fc2' is declared EXACT_IN_REALS but changed output 'y'" in line
    assert not out.exists()  # the run created it, so a failed run removes it


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path, str, str]:
    """One full CLI run on zoo:tiny with w8a8 and ONNX Runtime baselines: (exit code, out dir, stdout, stderr)."""
    root = tmp_path_factory.mktemp("cli_run")
    out = root / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QCOMPILE_CACHE", str(root / "cache"))
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(["zoo:tiny", "--passes", "w8a8", "-o", str(out), *TINY_RUN])
    return code, out, stdout.getvalue(), stderr.getvalue()


def test_a_tiny_run_exits_0_and_writes_only_the_model_and_the_reports(tiny_run) -> None:
    code, out, stdout, stderr = tiny_run
    assert code == 0, stderr
    assert sorted(os.listdir(out)) == ["model.qdq.onnx", "report.html", "report.json"]
    assert "Traceback" not in stderr
    assert f"wrote {out / 'model.qdq.onnx'}, {out / 'report.json'} and {out / 'report.html'}" in stdout
    assert stdout.rstrip().splitlines()[-1] == f"report: {(out / 'report.html').resolve()}"
    assert stat.S_IMODE((out / "model.qdq.onnx").stat().st_mode) == 0o644


def test_the_report_has_every_field(tiny_run) -> None:
    _, out, _, _ = tiny_run
    report = json.loads((out / "report.json").read_text())

    assert report["model"] == "zoo:tiny" and report["passes"] == "w8a8"
    metric = report["metric"]
    assert metric["name"] == "cosine" and metric["higher_is_better"] is True
    assert report["files"] == ["model.qdq.onnx", "report.json", "report.html"]
    assert set(report["metric_runtime"]) == set(report["all_metrics"])
    assert all(runtime.startswith("ONNX Runtime ") for runtime in report["metric_runtime"].values())
    assert report["environment"]["command"].startswith("qcompile zoo:tiny --passes w8a8 -o ")
    assert {"onnxruntime", "onnx", "qcompile"} <= set(report["environment"]["versions"])
    ranges = report["calibration_ranges"]
    assert ranges and all(r["raw_min"] <= r["lo"] <= r["hi"] <= r["raw_max"] for r in ranges)  # minmax: no clip
    assert {c for r in ranges for c in r["consumers"]} >= {layer["node"] for layer in report["per_layer"]}
    assert metric["fp"] == pytest.approx(1.0, abs=1e-6)  # the float model agrees with itself
    assert 0.9 < metric["quantized"] <= 1.0 + 1e-6
    assert metric["drop"] == pytest.approx(metric["fp"] - metric["quantized"], abs=1e-12)
    latency = report["latency_ms"]
    assert set(latency) == {"ort_fp32", "qcompile", "ort_int8_static", "ort_int8_dynamic"}
    assert all(isinstance(v, float) and v > 0 for v in latency.values()), latency
    assert report["calibration"]["samples"] == 8
    assert isinstance(report["calibration"]["peak_rss_mb"], float) and report["calibration"]["peak_rss_mb"] > 0

    per_pass = report["per_pass"]
    assert [p["name"] for p in per_pass] == ["calibrate", "quantize"]
    for item in per_pass:
        assert {"name", "numerics", "modified", "seconds"} <= set(item)
        assert isinstance(item["seconds"], float) and item["seconds"] >= 0 and item["modified"] is True
    assert per_pass[0]["numerics"] == "EXACT" and per_pass[0]["max_abs_err"] == 0.0
    assert per_pass[1]["numerics"] == "LOSSY" and np.isfinite(per_pass[1]["sqnr_db"]) and per_pass[1]["sqnr_db"] > 0

    matmuls = [n.output[0] for n in tiny_encoder_proto().graph.node if n.op_type == "MatMul"]
    assert [item["node"] for item in report["per_layer"]] == matmuls
    assert all(set(item) == {"node", "sqnr_db"} and np.isfinite(item["sqnr_db"]) for item in report["per_layer"])


def test_the_reported_quantized_metric_is_the_written_artifacts_score(tiny_run) -> None:
    _, out, _, _ = tiny_run
    report = json.loads((out / "report.json").read_text())
    fp = ort.InferenceSession(tiny_encoder_proto().SerializeToString(), providers=["CPUExecutionProvider"])
    artifact = ort.InferenceSession(str(out / "model.qdq.onnx"), providers=["CPUExecutionProvider"])

    scores = zoo.get("tiny").evaluate(
        {"fp": lambda feeds: fp.run(["y"], feeds)[0], "artifact": lambda feeds: artifact.run(["y"], feeds)[0]},
        report["eval_samples"],
        report["seed"],
    )

    assert scores["artifact"]["cosine"] == pytest.approx(report["metric"]["quantized"], abs=1e-6)


@pytest.mark.parametrize(
    "passes, expected_passes",
    [
        ("repq", ["repq-ln", "log-softmax", "calibrate", "quantize"]),
        ("smooth,rotate,w4a4", ["calibrate", "smooth-scales", "rotate", "calibrate", "quantize"]),
    ],
)
def test_outlier_recipes_run_from_the_cli_and_report_each_equivalence_error(
    tmp_path: Path, isolated_cache: Path, capsys, passes: str, expected_passes: list[str]
) -> None:
    out = tmp_path / "out"
    code, _, err = _main(["zoo:tiny", "--passes", passes, "-o", str(out), "--no-baselines", *TINY_RUN], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert [p["name"] for p in report["per_pass"]] == expected_passes
    for item in report["per_pass"]:
        if item["numerics"] == "EXACT_IN_REALS" and item["modified"]:
            assert 0.0 <= item["max_rel_err"] < 1e-4
    if passes == "repq":  # the softmax outputs are written with the qcompile log√2 functions
        import onnx

        model = onnx.load(out / "model.qdq.onnx")
        assert {f.name for f in model.functions} >= {"QuantizeLogSqrt2", "DequantizeLogSqrt2"}


def test_passes_json_lists_every_pass_with_its_contract_and_typed_options(capsys) -> None:
    code, out, _ = _main(["passes", "--json"], capsys)

    assert code == 0
    catalogue = json.loads(out)
    passes = {item["name"]: item for item in catalogue["passes"]}
    assert set(passes) == set(registered_passes())
    assert {item["name"] for item in catalogue["recipes"]} == set(registered_recipes())
    quantize = passes["quantize"]
    assert quantize["numerics"] == "LOSSY" and quantize["requires"] == ["CALIBRATED"]
    assert quantize["options"]["weight_bits"] == {"types": ["int"], "default": 8}
    assert "context" not in passes["calibrate"]["options"]
    assert next(r for r in catalogue["recipes"] if r["name"] == "w8a8")["steps"][0].startswith("calibrate")


def test_the_cli_builds_each_pass_once_and_the_job_runs_those_objects(
    tmp_path: Path, isolated_cache: Path, capsys, monkeypatch
) -> None:
    from qcompile.pipeline import registry, run

    built = []
    build = registry.build_pass

    def counting_build(spec, context):
        built.append(spec.name)
        return build(spec, context)

    for module in (registry, run):  # wherever a pass could be built from
        monkeypatch.setattr(module, "build_pass", counting_build)
    code, _, err = _main(
        ["zoo:tiny", "--passes", "w8a8", "-o", str(tmp_path / "out"), *TINY_RUN, "--no-baselines"], capsys
    )

    assert code == 0, err
    assert built == ["calibrate", "quantize"]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [p["name"] for p in report["per_pass"]] == ["calibrate", "quantize"]


def test_report_rebuilds_the_html_from_report_json_and_changes_nothing_else(tiny_run, tmp_path, capsys) -> None:
    _, out, _, _ = tiny_run
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "report.json").write_text((out / "report.json").read_text())
    assert main(["report", str(copy)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {(copy / 'report.html').resolve()}"
    assert sorted(os.listdir(copy)) == ["report.html", "report.json"]
    assert (copy / "report.html").read_text() == (out / "report.html").read_text()


@pytest.mark.parametrize(
    "files, args, message",
    [
        ({}, ["report"], "usage: qcompile report OUTDIR"),
        ({}, ["report", "{dir}", "extra"], "usage: qcompile report OUTDIR"),
        ({}, ["report", "{dir}"], "report.json not found"),
        ({"report.json": "{not json"}, ["report", "{dir}"], "is not a qcompile report"),
        ({"report.json": "[1, 2]"}, ["report", "{dir}"], "is not a qcompile report"),
    ],
)
def test_report_refuses_a_folder_without_a_report(tmp_path, capsys, files, args, message) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    before = sorted(os.listdir(tmp_path))
    assert main([a.format(dir=tmp_path) for a in args]) == 2
    assert message in _assert_one_error_line(capsys.readouterr().err)
    assert sorted(os.listdir(tmp_path)) == before


def test_a_recipe_file_runs_like_the_same_passes_string(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("QCOMPILE_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "six.toml"
    recipe.write_text(
        '[[pass]]\nname = "calibrate"\nobserver = "mse"\nbits = 6\n[[pass]]\nname = "quantize"\n'
        "weight_bits = 6\nact_bits = 6\n"
    )
    common = ["zoo:tiny", *TINY_RUN, "--no-baselines", "--no-html"]
    assert main([*common, "--recipe", str(recipe), "-o", str(tmp_path / "a")]) == 0
    text = "calibrate:observer=mse:bits=6,quantize:weight_bits=6:act_bits=6"
    assert main([*common, "--passes", text, "-o", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "report.json").read_text()) for d in "ab")
    assert a["passes"] == b["passes"] == text
    assert a["metric"] == b["metric"] and a["per_layer"] == b["per_layer"]
    assert (tmp_path / "a" / "model.qdq.onnx").read_bytes() == (tmp_path / "b" / "model.qdq.onnx").read_bytes()
    assert sorted(os.listdir(tmp_path / "a")) == ["model.qdq.onnx", "report.json"]  # --no-html


def test_passes_and_recipe_together_are_refused(tmp_path, capsys) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text("passes = ['w8a8']")
    assert main(["zoo:tiny", "--passes", "w8a8", "--recipe", str(recipe), "-o", str(tmp_path / "o")]) == 2
    assert "give --passes or --recipe, not both" in _assert_one_error_line(capsys.readouterr().err)


def test_qdq_weights_chooses_the_weight_codes_without_changing_the_values(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("QCOMPILE_CACHE", str(tmp_path / "cache"))
    common = ["zoo:tiny", "--passes", "w8a8", *TINY_RUN, "--no-baselines", "--no-html"]
    for form in ("int8", "uint8"):
        assert main([*common, "--qdq-weights", form, "-o", str(tmp_path / form)]) == 0
    reports = {form: json.loads((tmp_path / form / "report.json").read_text()) for form in ("int8", "uint8")}
    assert {form: r["qdq_weights"] for form, r in reports.items()} == {"int8": "int8", "uint8": "uint8"}
    dtypes = {}
    for form in ("int8", "uint8"):
        proto = onnx.load(str(tmp_path / form / "model.qdq.onnx"))
        dtypes[form] = {i.data_type for i in proto.graph.initializer if i.name.endswith("_q") or "weight" in i.name}
    assert TensorProto.INT8 in dtypes["int8"] and TensorProto.INT8 not in dtypes["uint8"]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the file's own arithmetic
    x = {"x": np.random.default_rng(3).normal(size=(2, 8, 32)).astype(np.float32)}
    outputs = [
        ort.InferenceSession(str(tmp_path / form / "model.qdq.onnx"), options, providers=["CPUExecutionProvider"]).run(
            None, x
        )[0]
        for form in ("int8", "uint8")
    ]
    np.testing.assert_array_equal(outputs[0], outputs[1])
    from qcompile.backends.onnx.kernels import int8_weights_exact

    if int8_weights_exact():  # ONNX Runtime's optimized u8×s8 kernels are exact only with VNNI/AMX
        assert reports["int8"]["metric"] == reports["uint8"]["metric"]
