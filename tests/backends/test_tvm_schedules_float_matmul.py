"""The float matmul schedule rule (`schedules/float_matmul.py`, for the TVM FP32 baseline): it schedules
batched float matmuls with ragged M/N and a fused epilogue without changing their values, leaves
integer matmuls alone, and leaves no matmul of a float encoder unscheduled."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.backends.tvm.schedules.float_matmul import FloatMatmul
from qcompile.backends.tvm.target import host_target


def _matmul_bias_relu(batch: int, m: int, k: int, n: int, dtype: str):
    from tvm import te, tirx

    a = te.placeholder((batch, m, k), dtype, name="A")
    b = te.placeholder((k, n), dtype, name="B")
    bias = te.placeholder((n,), dtype, name="bias")
    r = te.reduce_axis((0, k), "k")
    mm = te.compute((batch, m, n), lambda g, i, j: te.sum(a[g, i, r] * b[r, j], axis=r), name="matmul")
    out = te.compute(
        (batch, m, n), lambda g, i, j: tirx.max(mm[g, i, j] + bias[j], tirx.const(0, dtype)), name="epilogue"
    )
    return te.create_prim_func([a, b, bias, out])


def test_float_matmul_is_scheduled_and_keeps_its_values() -> None:
    import tvm

    batch, m, k, n = 2, 13, 40, 70  # neither M nor N a whole tile
    func = _matmul_bias_relu(batch, m, k, n, "float32")
    target = host_target(2)
    with target:
        sch = FloatMatmul().apply(func, target, False)
    assert sch is not None
    lib = tvm.tirx.build(sch.mod, target=target)
    rng = np.random.default_rng(0)
    a, b, bias = (rng.standard_normal(shape).astype(np.float32) for shape in ((batch, m, k), (k, n), (n,)))
    out = tvm.runtime.tensor(np.zeros((batch, m, n), np.float32))
    lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b), tvm.runtime.tensor(bias), out)
    expected = np.maximum(a.astype(np.float64) @ b.astype(np.float64) + bias, 0)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_integer_matmuls_are_left_to_the_integer_kernels() -> None:
    func = _matmul_bias_relu(1, 12, 16, 32, "int32")
    target = host_target(1)
    with target:
        assert FloatMatmul().apply(func, target, False) is None


def test_a_float_encoder_has_no_unscheduled_matmul_and_matches_onnx_runtime() -> None:
    import onnx
    import tvm
    from tvm import relax

    from qcompile import runtime
    from qcompile.backends.tvm.build import compile_relax, unscheduled
    from qcompile.backends.tvm.lowering.importer import to_relax
    from qcompile.backends.tvm.prepare import static_model
    from qcompile.testing.builders import tiny_encoder_proto, tiny_inputs

    proto = tiny_encoder_proto()
    feeds = tiny_inputs(1)[0]
    mod = to_relax(static_model(proto, {"x": feeds["x"].shape}))
    target = host_target(2)
    assert not [name for name in unscheduled(mod, target) if "matmul" in name]
    vm = relax.VirtualMachine(compile_relax(mod, target, exact_float=False), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(feeds["x"])).numpy()
    expected = runtime.run(runtime.make_session(onnx.ModelProto.SerializeToString(proto)), feeds)["y"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype, lanes", [("float32", (8, 16)), ("float64", (4, 8))])
def test_vector_lanes_follow_the_target(dtype, lanes) -> None:
    from qcompile.backends.tvm.schedules.float_matmul import _lanes
    from qcompile.backends.tvm.target import cpu_features

    target = host_target(1)
    assert _lanes(target, dtype) == lanes[1 if "avx512f" in cpu_features(target) else 0]
