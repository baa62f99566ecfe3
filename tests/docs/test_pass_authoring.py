"""The code of docs/pass-authoring.md runs and does what the page says it does.

Every ```python block of the page whose first line starts with `# runnable` is executed, in page order, in
one fresh namespace per test. A block marked `# runnable: FILE.py` is written to FILE.py in a temporary
folder on `sys.path` and imported instead, so that later blocks can import it as a reader would and the CLI
can load it as a plugin. Every `test_*` function the blocks define is run as its own test; the tests after
those check the worked pass's claims (structure, tolerance, pipeline, CLI, registry) independently.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from qcompile import runtime
from qcompile.ir.properties import Property, get_properties
from qcompile.pipeline import registry
from qcompile.pipeline.context import PipelineContext
from qcompile.pipeline.numerics import TOLERANCES
from qcompile.pipeline.pass_base import Numerics

DOC = Path(__file__).resolve().parents[2] / "docs" / "pass-authoring.md"
FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
MARKER = re.compile(r"#\s*runnable(?::\s*(\S+\.py))?\s*$")
PASS_NAME = "fold-matmul-mul"
PLUGIN = "my_pass.py"


@dataclasses.dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the block's first code line in the page
    file: str | None  # the file the block is, for `# runnable: FILE.py`
    code: str


def runnable_blocks() -> list[Block]:
    text = DOC.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        code = match.group(1)
        marker = MARKER.fullmatch(code.split("\n", 1)[0].strip())
        if marker:
            blocks.append(Block(text.count("\n", 0, match.start(1)) + 1, marker.group(1), code))
    return blocks


def doc_test_names() -> list[str]:
    return [name for block in runnable_blocks() for name in re.findall(r"^def (test_\w+)\(", block.code, re.M)]


def exec_block(block: Block, namespace: dict[str, Any]) -> None:
    # compiled with the page's path and padded to its line, so a traceback points into the page
    exec(compile("\n" * (block.line - 1) + block.code, str(DOC), "exec"), namespace)


@pytest.fixture
def doc(clean_registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The namespace left by running every runnable block of the page."""
    monkeypatch.syspath_prepend(str(tmp_path))
    files = [block.file for block in runnable_blocks() if block.file]
    namespace: dict[str, Any] = {"__name__": "pass_authoring_doc"}
    try:
        for block in runnable_blocks():
            if block.file:
                (tmp_path / block.file).write_text(block.code, encoding="utf-8")
                importlib.import_module(Path(block.file).stem)
            else:
                exec_block(block, namespace)
        yield namespace
    finally:
        for file in files:
            sys.modules.pop(Path(file).stem, None)


def fold_demo_proto(folded: bool = False) -> onnx.ModelProto:
    """The page's demo model, from the block that defines it alone (no pass registered)."""
    (block,) = [b for b in runnable_blocks() if "def fold_demo_proto(" in b.code]
    namespace: dict[str, Any] = {"__name__": "pass_authoring_builder"}
    exec_block(block, namespace)
    return namespace["fold_demo_proto"](folded=folded)


def calibration():
    from qcompile.pipeline.context import CalibrationData

    rng = np.random.default_rng(7)
    return CalibrationData.from_list([{"x": rng.normal(size=(4, 16)).astype(np.float32)} for _ in range(2)])


def test_the_page_marks_its_code_runnable() -> None:
    blocks = runnable_blocks()
    assert [b.file for b in blocks if b.file] == [PLUGIN]
    plugin = next(b for b in blocks if b.file)
    for needle in (
        f'@qcompile.register_pass("{PASS_NAME}")',
        "numerics = qcompile.Numerics.EXACT_IN_REALS",
        "invalidates = frozenset({qcompile.Property.CALIBRATED})",
        "requires = frozenset()",
        "establishes = frozenset()",
        "def __init__(self, per_channel: bool = True)",
        "ir.convenience.replace_all_uses_with(",
        "model.graph.remove(",
        "qcompile.PassResult(",
    ):
        assert needle in plugin.code, needle
    assert len(blocks) >= 8 and len(doc_test_names()) >= 10


@pytest.mark.parametrize("name", doc_test_names())
def test_the_page_s_own_tests_pass(doc: dict[str, Any], name: str) -> None:
    doc[name]()


def test_the_worked_pass_is_registered_with_its_contract(doc: dict[str, Any]) -> None:
    cls = registry.registered_passes()[PASS_NAME]
    assert cls.numerics is Numerics.EXACT_IN_REALS
    assert cls.requires == frozenset() and cls.establishes == frozenset()
    assert cls.invalidates == frozenset({Property.CALIBRATED})
    default = registry.build_pass(registry.PassSpec(PASS_NAME), PipelineContext())
    scalars_only = registry.build_pass(registry.PassSpec(PASS_NAME, {"per_channel": False}), PipelineContext())
    assert default.per_channel is True and scalars_only.per_channel is False


def test_the_stated_tolerance_is_the_code_s() -> None:
    text = " ".join(DOC.read_text(encoding="utf-8").split())
    assert "max|y' − y| ≤ rtol · max|y| + atol" in text
    assert "EXACT: rtol = 1e-6, atol = 1e-7 EXACT_IN_REALS: rtol = 1e-4, atol = 1e-6" in text
    assert TOLERANCES == {"EXACT": (1e-6, 1e-7), "EXACT_IN_REALS": (1e-4, 1e-6)}


def test_the_worked_pass_removes_both_muls_and_keeps_the_outputs(doc: dict[str, Any]) -> None:
    model = ir.serde.deserialize_model(fold_demo_proto())
    feeds = {"x": np.random.default_rng(3).normal(size=(5, 16)).astype(np.float32)}
    reference = runtime.run(runtime.make_session(model), feeds)["y"]
    assert len(model.graph) == 5 and len(model.graph.initializers) == 4

    result = registry.build_pass(registry.PassSpec(PASS_NAME), PipelineContext())(model)

    assert result.modified and result.stats == {"folded": 2, "skipped": {}}
    assert [n.op_type for n in model.graph] == ["MatMul", "Relu", "MatMul"]
    assert sorted(model.graph.initializers) == ["w1", "w2"]
    assert [v.name for v in model.graph.outputs] == ["y"] and model.graph.outputs[0].dtype == ir.DataType.FLOAT
    output = runtime.run(runtime.make_session(model), feeds)["y"]
    rtol, atol = TOLERANCES["EXACT_IN_REALS"]
    assert np.max(np.abs(output - reference)) <= rtol * np.max(np.abs(reference)) + atol


def test_the_worked_pass_then_w8a8_runs_through_the_manager(doc: dict[str, Any]) -> None:
    from qcompile.pipeline.run import run_passes

    model = ir.serde.deserialize_model(fold_demo_proto())
    records = run_passes(model, f"{PASS_NAME},w8a8", calibration=calibration())
    assert [r["name"] for r in records] == [PASS_NAME, "calibrate", "quantize"]
    first = records[0]
    assert first["numerics"] == "EXACT_IN_REALS" and first["modified"] and first["stats"]["folded"] == 2
    assert first["max_rel_err"] <= TOLERANCES["EXACT_IN_REALS"][0]  # CheckNumerics measured it
    assert Property.QUANTIZED in get_properties(model)
    assert [n.op_type for n in model.graph] == ["MatMul", "Relu", "MatMul"]


def test_the_page_s_cli_commands_run_with_its_plugin(
    clean_registry, isolated_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qcompile.cli import main

    text = DOC.read_text(encoding="utf-8")
    assert f"qcompile model.onnx --passes {PASS_NAME},w8a8 --plugin {PLUGIN} -o out" in text
    plugin = tmp_path / PLUGIN
    plugin.write_text(next(b for b in runnable_blocks() if b.file).code, encoding="utf-8")
    model = tmp_path / "model.onnx"
    onnx.save(fold_demo_proto(), model)

    assert main(["passes", "--plugin", str(plugin)]) == 0
    listing = capsys.readouterr().out
    assert PASS_NAME in listing and "numerics=EXACT_IN_REALS" in listing and "invalidates=CALIBRATED" in listing

    out = tmp_path / "out"
    arguments = ["--passes", f"{PASS_NAME},w8a8", "--plugin", str(plugin), "-o", str(out)]
    quick = ["--calib-samples", "8", "--eval-samples", "4", "--no-baselines", "--quiet"]
    assert main([str(model), *arguments, *quick]) == 0, capsys.readouterr().err
    first = json.loads((out / "report.json").read_text())["per_pass"][0]
    assert first["name"] == PASS_NAME and first["modified"] and first["stats"]["folded"] == 2
    assert [n.op_type for n in onnx.load(out / "model.qdq.onnx").graph.node].count("Mul") == 0
