"""The reference interpreter runs `qcompile` kernels with their NumPy references, not their bodies, and
agrees with ONNX Runtime bit for bit on a graph chaining several kernels."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnxscript import INT8, INT32, INT64, script
from onnxscript import opset18 as op

from qcompile.intops import reference
from qcompile.intops.dyadic import dyadic_multiplier
from qcompile.intops.ilayernorm import ILayerNorm
from qcompile.intops.int_linear import IntLinear
from qcompile.intops.requantize import Requantize
from qcompile.intops.shiftmax import Shiftmax


@script(default_opset=op)
def _chain(x: INT8["M", "K"], w: INT8["K", "N"], bias: INT32["N"], m: INT64, e: INT64) -> INT64["M", "N"]:
    acc = IntLinear(x, w, bias)
    normed = ILayerNorm(acc, op.Constant(value_int=0))
    small = Requantize(
        op.Cast(normed, to=6),
        m,
        e,
        op.Constant(value_int=0),
        op.Constant(value_int=-32768),
        op.Constant(value_int=32767),
    )
    return Shiftmax(
        op.Cast(small, to=6), op.Constant(value_int=-100), op.Constant(value_int=15), op.Constant(value_int=8)
    )


def _feeds(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    m, e = dyadic_multiplier(2.0**-16)
    return {
        "x": rng.integers(-128, 128, size=(6, 40)).astype(np.int8),
        "w": rng.integers(-127, 128, size=(40, 24)).astype(np.int8),
        "bias": rng.integers(-5000, 5000, size=24).astype(np.int32),
        "m": m,
        "e": e,
    }


def test_reference_interpreter_and_onnx_runtime_agree_bit_for_bit() -> None:
    model = _chain.to_model_proto()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for seed in range(3):
        feeds = _feeds(seed)
        expected = session.run(None, feeds)[0]
        (actual,) = reference.run_reference(model, feeds).values()
        np.testing.assert_array_equal(actual, expected)


def test_the_reference_interpreter_calls_the_numpy_references(monkeypatch) -> None:
    calls = []
    original = reference.REFERENCES["Shiftmax"]
    monkeypatch.setitem(reference.REFERENCES, "Shiftmax", lambda *a: calls.append(1) or original(*a))
    model = _chain.to_model_proto()
    reference.run_reference(model, _feeds(0))
    assert calls == [1]
