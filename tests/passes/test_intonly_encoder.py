"""`intonly` on the tiny encoder block (LayerNorm, attention, GELU MLP, residual adds; fused and
decomposed LayerNorm, LayerScale, a final norm): no float between the quantizers, bit-exact against the
reference interpreter, and within a stated distance of the QDQ model."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import qcompile
from qcompile import PipelineContext
from qcompile.backends.onnx import qdq, runtime
from qcompile.intops.reference import run_reference
from qcompile.passes.lowering.intonly import IntOnlyPass, float_values
from qcompile.pipeline.numerics import sqnr_db
from qcompile.testing.builders import tiny_encoder


@pytest.mark.parametrize(
    "options",
    [{}, {"decomposed_layernorm": True}, {"layer_scale": True, "final_norm": True}, {"decomposed_layernorm": True, "final_norm": True}],
    ids=["fused", "decomposed", "layerscale+final", "decomposed+final"],
)
def test_tiny_encoder_lowers_to_integers(options) -> None:
    tiny = tiny_encoder(**options)
    reference = runtime.run(runtime.make_session(tiny.model), tiny.feeds)["y"]
    context = PipelineContext(calibration=tiny.calibration, progress=False)
    qcompile.run_passes(tiny.model, "w8a8", context=context)
    fake_quant = runtime.run(runtime.make_session(qdq.to_qdq(tiny.model)), tiny.feeds)["y"]
    result = IntOnlyPass(context=context)(tiny.model)
    model = tiny.model
    assert float_values(model) == [] and result.stats["float_values"] == []
    ops = {n.op_type for n in model.graph}
    assert {"ILayerNorm", "IntAdd", "IntLinear", "IBertSoftmax", "IntGELU"} <= ops
    assert not ops & {"LayerNormalization", "Softmax", "Erf", "ReduceMean", "Sqrt", "Pow"}
    integer = runtime.run(runtime.make_session(model), tiny.feeds)["y"]
    np.testing.assert_array_equal(run_reference(ir.serde.serialize_model(model), tiny.feeds)["y"], integer)
    # the integer model adds integer LayerNorm/softmax/GELU and an int16 residual grid to QDQ's error
    assert sqnr_db(reference, integer) > sqnr_db(reference, fake_quant) - 3.0, (sqnr_db(reference, integer), sqnr_db(reference, fake_quant))
