"""ONNX Runtime helpers: sessions from in-memory models, runs with intermediates exposed.

Everything that executes a model (calibration, numeric checks, evaluation, latency) goes through here so
the thread count and optimization level are set in one place.

A model is handed to ONNX Runtime as a `SessionSource`: its serialized proto and, for a large model
(`qcompile.ir.is_large`: over `PROTO_LIMIT` bytes of initializers, which one protobuf cannot hold), the
initializers themselves. Those are written into the proto as external references to a name that is no
file (`IN_MEMORY`), and given to the session from memory with `SessionOptions.add_external_initializers`,
so ONNX Runtime never reads a file for them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from qcompile.ir import inline_external_tensors, is_large

__all__ = ["make_session", "run", "with_outputs", "session_options", "session_source", "SessionSource", "IN_MEMORY"]

IN_MEMORY = "qcompile-in-memory-initializer"


@dataclasses.dataclass(frozen=True)
class SessionSource:
    """What ONNX Runtime needs to build a session of an in-memory model: the proto, and the initializers
    it lists as external (`IN_MEMORY`) by name."""

    proto: bytes
    initializers: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def _proto_with_outputs(model: ir.Model, names: Sequence[str]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """`model` as a proto (large initializers as `IN_MEMORY` references) plus those initializers' arrays."""
    inline_external_tensors(model)
    held: dict[str, np.ndarray] = {}
    swapped: list[tuple[ir.Value, ir.TensorProtocol]] = []
    if is_large(model):
        for value in model.graph.initializers.values():
            tensor = value.const_value
            if tensor is None or tensor.nbytes < 1024:
                continue
            held[value.name] = np.ascontiguousarray(tensor.numpy())
            reference = ir.ExternalTensor(
                IN_MEMORY, 0, tensor.nbytes, tensor.dtype, shape=tensor.shape, name=value.name
            )
            swapped.append((value, tensor))
            value.const_value = reference
    try:
        proto = ir.serde.serialize_model(model)
    finally:
        for value, tensor in swapped:
            value.const_value = tensor
    existing = {o.name for o in proto.graph.output}
    types = {v.name: v.type.tensor_type.elem_type for v in proto.graph.value_info}
    for name in names:
        if name in existing:
            continue
        elem_type = types.get(name, onnx.TensorProto.FLOAT) or onnx.TensorProto.FLOAT
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, elem_type, None))
    return proto, held


def session_source(model: ir.Model) -> SessionSource:
    """`model` as ONNX Runtime takes it (large initializers passed from memory)."""
    proto, held = _proto_with_outputs(model, ())
    return SessionSource(proto.SerializeToString(), held)


# ONNX Runtime's optimizer fuses DequantizeLinear(constant codes) → MatMul into MatMulNBits, per channel as well
# as per block; at its default accuracy level (4) that kernel quantizes the float activations to int8 per block
# of K, which changes the artifact's numbers (tests/runtime/test_qdq_llm.py fails at level 4). Level 1 computes
# in float32: the QDQ arithmetic the artifact writes, up to float rounding.
MATMULNBITS_ACCURACY = "1"


def session_options(threads: int = 2, optimize: bool = True) -> ort.SessionOptions:
    """Session options with `threads` intra-op threads, one inter-op thread, quiet logs, and MatMulNBits fusions
    that compute in float32 (`MATMULNBITS_ACCURACY`)."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", MATMULNBITS_ACCURACY)
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    return options


def make_session(
    model: ir.Model | SessionSource | onnx.ModelProto | bytes | str, threads: int = 2, optimize: bool = True
) -> ort.InferenceSession:
    """An ONNX Runtime CPU session for an IR model, a `SessionSource`, a proto, serialized bytes or a file path."""
    if isinstance(model, ir.Model):
        model = session_source(model)
    elif isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    options = session_options(threads, optimize)
    held = []
    if isinstance(model, SessionSource):
        if model.initializers:
            held = [ort.OrtValue.ortvalue_from_numpy(array) for array in model.initializers.values()]
            options.add_external_initializers(list(model.initializers), held)
        model = model.proto
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    session._qcompile_initializers = held  # the OrtValues share their arrays' memory: keep both alive
    return session


def run(session: ort.InferenceSession, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None):
    """Run `session` on the feeds it takes; returns {output name: array}."""
    wanted = {i.name for i in session.get_inputs()}
    names = list(outputs) if outputs is not None else [o.name for o in session.get_outputs()]
    arrays = session.run(names, {k: v for k, v in feeds.items() if k in wanted})
    return dict(zip(names, arrays))


def with_outputs(model: ir.Model, names: Sequence[str]) -> SessionSource:
    """A `SessionSource` of `model` whose graph also outputs the values named `names`.

    Intermediates without a known element type are declared float32 (only float activations are exposed).
    """
    proto, held = _proto_with_outputs(model, names)
    return SessionSource(proto.SerializeToString(), held)
