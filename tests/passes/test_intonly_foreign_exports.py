"""`repq,intonly` on BERT encoders exported by other tools (`qcompile.testing.foreign_exports`: two layers of
all-MiniLM-L6-v2 with Hugging Face's forward): TorchScript at opset 13 with a mask built by
Equal/And/GreaterOrEqual/Where/GatherElements, TorchScript at opset 17 with the legacy (1 − m)·min mask,
the dynamo exporter, and a sentence-transformers-style export with last_hidden_state, the mean-pooled
embedding and input_ids re-emitted through Identity.

Each must lower with no float between the quantizers, run in ONNX Runtime bit for bit as the NumPy
reference interpreter, stay as close to float as the QDQ model does (the encoder tests' criterion), and
pass integer outputs through unchanged."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import qcompile
from qcompile import PipelineContext, runtime
from qcompile.intops.reference import run_reference
from qcompile.passes.lowering.intonly import float_values
from qcompile.pipeline.numerics import sqnr_db
from qcompile.runtime import qdq

foreign_exports = pytest.importorskip("qcompile.testing.foreign_exports")


def _lower(name: str):
    model = foreign_exports.export(name, layers=2)
    feeds = foreign_exports.evaluation_feeds()
    reference = runtime.run(runtime.make_session(model), feeds)
    context = PipelineContext(calibration=foreign_exports.calibration(), progress=False)
    qcompile.run_passes(model, "repq", context=context, check_numerics=False)  # checked below, on held-out inputs
    fake_quant = runtime.run(runtime.make_session(qdq.to_qdq(model)), feeds)
    (record,) = qcompile.run_passes(model, "intonly", context=context, check_numerics=False)
    return model, feeds, reference, fake_quant, record["stats"]


@pytest.mark.parametrize("name", list(foreign_exports.EXPORTS))
def test_a_foreign_encoder_export_lowers_to_integers_close_to_qdq(name) -> None:
    model, feeds, reference, fake_quant, stats = _lower(name)
    assert stats["float_values"] == [] and stats["float_ops"] == [] and float_values(model) == []
    ops = {n.op_type for n in model.graph}
    assert {"ILayerNorm", "IntAdd", "IntLinear", "IBertSoftmax"} <= ops
    assert not ops & {"LayerNormalization", "Softmax", "Erf", "ReduceMean", "Sqrt", "Pow"}
    integer = runtime.run(runtime.make_session(model), feeds)
    expected = run_reference(ir.serde.serialize_model(model), feeds)
    assert set(integer) == set(reference)
    for output, array in integer.items():
        np.testing.assert_array_equal(expected[output], array)
        if reference[output].dtype.kind != "f":  # an input re-emitted through Identity: passed through
            np.testing.assert_array_equal(array, feeds["input_ids"])
            continue
        # the encoder tests' criterion: integer kernels and grids cost at most 3 dB over QDQ's error
        assert sqnr_db(reference[output], array) > sqnr_db(reference[output], fake_quant[output]) - 3.0, (
            output,
            sqnr_db(reference[output], array),
            sqnr_db(reference[output], fake_quant[output]),
            float(np.max(np.abs(array - fake_quant[output]))),
        )
    if name == "sentence-transformers":
        assert [o.name for o in model.graph.outputs] == ["last_hidden_state", "sentence_embedding", "input_ids_out"]
        assert integer["input_ids_out"].dtype == np.int64 and model.graph.outputs[2].producer().op_type == "Identity"
    if foreign_exports.EXPORTS[name].mask == "where":
        assert stats["rules"]["SelectIntoScaleOffset"] >= 1 and stats["rules"]["MaskedScoresIntoWherePenalty"] == 2
