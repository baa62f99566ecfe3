"""ONNX Runtime helpers: sessions from in-memory models, runs with intermediates exposed.

Everything that executes a model (calibration, numeric checks, evaluation, latency) goes through here so
the thread count and optimization level are set in one place.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from qcompile.ir import inline_external_tensors, model_to_bytes

__all__ = ["make_session", "run", "with_outputs", "session_options"]


def session_options(threads: int = 2, optimize: bool = True) -> ort.SessionOptions:
    """Session options with `threads` intra-op threads, one inter-op thread, quiet logs."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    return options


def make_session(
    model: ir.Model | onnx.ModelProto | bytes | str, threads: int = 2, optimize: bool = True
) -> ort.InferenceSession:
    """An ONNX Runtime CPU session for an IR model, a proto, serialized bytes or a file path."""
    if isinstance(model, ir.Model):
        model = model_to_bytes(model)
    elif isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    return ort.InferenceSession(model, session_options(threads, optimize), providers=["CPUExecutionProvider"])


def run(session: ort.InferenceSession, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None):
    """Run `session` on the feeds it takes; returns {output name: array}."""
    wanted = {i.name for i in session.get_inputs()}
    names = list(outputs) if outputs is not None else [o.name for o in session.get_outputs()]
    arrays = session.run(names, {k: v for k, v in feeds.items() if k in wanted})
    return dict(zip(names, arrays))


def with_outputs(model: ir.Model, names: Sequence[str]) -> bytes:
    """Serialized copy of `model` whose graph also outputs the values named `names`.

    Intermediates without a known element type are declared float32 (only float activations are exposed).
    """
    inline_external_tensors(model)
    proto = ir.serde.serialize_model(model)
    existing = {o.name for o in proto.graph.output}
    types = {v.name: v.type.tensor_type.elem_type for v in proto.graph.value_info}
    for name in names:
        if name in existing:
            continue
        elem_type = types.get(name, onnx.TensorProto.FLOAT) or onnx.TensorProto.FLOAT
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, elem_type, None))
    return proto.SerializeToString()
