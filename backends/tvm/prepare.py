"""Make an integer-only model static for TVM: fixed input shapes, shape arithmetic folded away.

`model.int.onnx` keeps the exporter's dynamic batch: every Reshape target is recomputed from Shape →
Gather → Unsqueeze → Concat on each run. A TVM library is compiled for one input shape (its GEMM
kernels are specialized to M), so the inputs are given static dims and onnxscript's constant folder
turns all of that arithmetic into constants (onnx's shape inference, which sees through the model-local
functions, gives every value its static shape first); only data-dependent nodes remain. The `qcompile` function
bodies are not inlined: each integer function is lowered as one kernel (`backends.tvm.lowering`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx
import onnx_ir as ir
import onnxscript.optimizer

__all__ = ["static_model", "input_shapes"]


def input_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | str, ...]]:
    """{input name: dims}, symbolic dims as their names."""
    return {
        value.name: tuple(d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim)
        for value in model.graph.input
    }


def _resolve(name: str, dims: Sequence[int | str], given: Mapping[str, Sequence[int]], batch: int) -> tuple[int, ...]:
    if name in given:
        shape = tuple(int(d) for d in given[name])
        if len(shape) != len(dims) or any(isinstance(d, int) and d and d != s for d, s in zip(dims, shape)):
            raise ValueError(f"input {name!r}: shape {list(shape)} does not fit the model's {list(dims)}")
        return shape
    if any(isinstance(d, str) or not d for d in dims[1:]):
        raise ValueError(f"input {name!r} has dynamic dims {list(dims)}: give its shape")
    return (batch, *dims[1:]) if dims and (isinstance(dims[0], str) or not dims[0]) else tuple(int(d) for d in dims)


def static_model(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]] | None = None, batch: int = 1) -> ir.Model:
    """A copy of `model` with static input shapes (`shapes`, else the batch dim set to `batch`) and its
    shape subgraphs folded to constants."""
    declared = input_shapes(model)
    shapes = dict(shapes or {})
    unknown = set(shapes) - set(declared)
    if unknown:
        raise ValueError(f"no model input named {sorted(unknown)}; inputs are {sorted(declared)}")
    proto = onnx.ModelProto()
    proto.CopyFrom(model)
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        for dim, size in zip(dims, _resolve(value.name, declared[value.name], shapes, batch)):
            dim.Clear()
            dim.dim_value = size
    del proto.graph.value_info[:]
    # onnx's inference goes through the model-local qcompile functions and propagates Shape values
    proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    static = ir.serde.deserialize_model(proto)
    onnxscript.optimizer.optimize(static, inline=False, input_size_limit=1 << 16, output_size_limit=1 << 16)
    return static
