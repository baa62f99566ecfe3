"""The elementwise schedule rule (`schedules/elementwise.py`): an injective kernel keeps its values; its loop runs
in parallel over the cores only when the output reaches `SERIAL_BYTES` (a decode step's residual add of 576 floats
stays on the calling thread, vectorized); reductions are left to other rules."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.backends.tvm.schedules.elementwise import SERIAL_BYTES, Elementwise
from qcompile.backends.tvm.target import host_target


def _add(shape, dtype="float32"):
    from tvm import te

    a, b = te.placeholder(shape, dtype, name="A"), te.placeholder(shape, dtype, name="B")
    return te.create_prim_func([a, b, te.compute(shape, lambda *i: a(*i) + b(*i), name="add")])


def _loop_kinds(mod) -> set[str]:
    script = mod.script()
    return {kind for kind in ("parallel", "vectorized") if f"T.{kind}(" in script}


@pytest.mark.parametrize("shape", [(1, 576), (1, 8), (1, 13), (64, 576), (1, 5 * SERIAL_BYTES)])
def test_small_outputs_stay_serial_and_every_output_keeps_its_values(shape) -> None:
    import tvm

    func = _add(shape)
    target = host_target(2)
    with target:
        sch = Elementwise().apply(func, target, False)
    assert sch is not None
    kinds = _loop_kinds(sch.mod)
    large = int(np.prod(shape)) * 4 >= SERIAL_BYTES
    assert ("parallel" in kinds) == large, kinds
    if int(np.prod(shape)) % 8 == 0:
        assert "vectorized" in kinds, kinds
    lib = tvm.tirx.build(sch.mod, target=target)
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    out = tvm.runtime.tensor(np.zeros(shape, np.float32))
    lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b), out)
    np.testing.assert_array_equal(out.numpy(), a + b)


def test_reductions_are_left_to_other_rules() -> None:
    from tvm import te

    a = te.placeholder((4, 64), "float32", name="A")
    r = te.reduce_axis((0, 64), "k")
    func = te.create_prim_func([a, te.compute((4,), lambda i: te.sum(a[i, r], axis=r), name="sum")])
    target = host_target(1)
    with target:
        assert Elementwise().apply(func, target, False) is None
