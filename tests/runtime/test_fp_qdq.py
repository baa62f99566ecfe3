"""Floating-point quantizers written as ONNX and run by ONNX Runtime equal `QuantSpec.fake_quantize` bit for bit:
every format, static per tensor / per channel and dynamic per token activations, weights as table codes; at
opsets 14 (ReduceMax axes as an attribute) and 18 through the `qcompile.FpRound_*` functions and at opset 19
through float8 QuantizeLinear/DequantizeLinear for E4M3FN and E5M2."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from qcompile import runtime
from qcompile.ir import quant_meta
from qcompile.ir.quant_meta import QuantSpec
from qcompile.math.fp_formats import FORMATS, enumerate_grid, fp_format
from qcompile.runtime.fp_qdq import code_table, round_function_name
from qcompile.runtime.qdq import to_qdq

F = onnx.TensorProto.FLOAT


def _identity_model(opset: int, weight: np.ndarray | None = None) -> ir.Model:
    """t = Identity(x) (or of the initializer w), y = Identity(t): y reads t's quantizer output."""
    source = "w" if weight is not None else "x"
    graph = helper.make_graph(
        [helper.make_node("Identity", [source], ["t"]), helper.make_node("Identity", ["t"], ["y"])],
        "g",
        [] if weight is not None else [helper.make_tensor_value_info("x", F, [3, 5, 16])],
        [helper.make_tensor_value_info("y", F, None)],
        [onnx.numpy_helper.from_array(weight, "w")] if weight is not None else [],
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def _values(fmt_name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Values over the whole grid's range, on grid points, midpoints and between, signs mixed."""
    rng = np.random.default_rng(seed)
    fmt = fp_format(fmt_name)
    magnitudes = np.exp2(rng.uniform(-fmt.mantissa_bits - 3, fmt.top_binade + 1, shape))
    grid = enumerate_grid(fmt)
    magnitudes.flat[: len(grid) - 1] = (grid[1:] + grid[:-1]) / 2  # every midpoint (unit scale below)
    return (magnitudes * rng.choice([-1.0, 1.0], shape)).astype(np.float32)


def _run(model: ir.Model, feeds: dict) -> np.ndarray:
    return runtime.run(runtime.make_session(to_qdq(model)), feeds, ["y"])["y"]


def _spec_on(model: ir.Model, name: str, spec: QuantSpec) -> None:
    value = next(v for node in model.graph for v in node.outputs if v.name == name)
    quant_meta.set_quant(value, spec)


@pytest.mark.parametrize("opset", [14, 18, 19])
@pytest.mark.parametrize("name", list(FORMATS))
def test_activation_quantizers_match_the_spec_bit_for_bit(name: str, opset: int) -> None:
    x = _values(name, (3, 5, 16), seed=1)
    specs = [
        QuantSpec.fp(name, 1.0),  # unit scale: x is spread over the grid's own range, midpoints included
        QuantSpec.fp(name, 0.37),
        QuantSpec.fp(name, np.linspace(0.2, 3.0, 16).astype(np.float32), axis=-1),
        QuantSpec.fp_per_token(name),
        QuantSpec.fp_per_token(name, clip_ratio=0.8),
    ]
    for spec in specs:
        model = _identity_model(opset)
        _spec_on(model, "t", spec)
        np.testing.assert_array_equal(_run(model, {"x": x}), spec.fake_quantize(x))


@pytest.mark.parametrize("name", list(FORMATS))
def test_weights_are_table_codes_with_channel_scales(name: str) -> None:
    w = _values(name, (16, 6), seed=2) * np.linspace(0.1, 2.0, 6, dtype=np.float32)
    fmt = fp_format(name)
    spec = QuantSpec.fp(name, (np.abs(w).max(axis=0) / fmt.max_value).astype(np.float32), axis=1)
    model = _identity_model(18, w)
    quant_meta.set_quant(model.graph.initializers["w"], spec)
    exported = to_qdq(model)
    codes = exported.graph.initializers["w_fp_codes"].const_value.numpy()
    assert codes.dtype == np.uint8 and codes.shape == w.shape and "w" not in exported.graph.initializers
    assert len(code_table(fmt)) == 2 * len(enumerate_grid(fmt)) - 1
    np.testing.assert_array_equal(_run(model, {}), spec.fake_quantize(w))


def test_the_function_path_is_used_below_opset_19_and_float8_from_it() -> None:
    for opset, name, expected in ((18, "e4m3", "function"), (19, "e4m3", "float8"), (19, "e2m1", "function")):
        model = _identity_model(opset)
        _spec_on(model, "t", QuantSpec.fp_per_token(name))
        ops = {node.op_type for node in to_qdq(model).graph}
        assert (round_function_name(fp_format(name)) in ops) == (expected == "function")
        assert ("QuantizeLinear" in ops) == (expected == "float8")


def test_fp_specs_refuse_integer_codes_and_bad_fields() -> None:
    spec = QuantSpec.fp("e2m1", 1.0)
    with pytest.raises(ValueError, match="no integer codes"):
        spec.quantize(np.ones(3, np.float32))
    with pytest.raises(ValueError):
        QuantSpec(4, True, np.float32(1), np.int32(0), kind="fp", fp_format="e4m3")  # 8-bit grid, bits 4
    with pytest.raises(ValueError):
        QuantSpec(4, True, np.float32(1), np.int32(0), fp_format="e2m1")  # a uniform spec with a format
    with pytest.raises(ValueError, match="unknown floating-point format"):
        QuantSpec.fp("e3m1", 1.0)
