"""An evaluation twin of an integer model whose integer MatMuls run as float64 GEMMs: the same bits, faster.

ONNX Runtime has no GEMM kernel for int32/int64 MatMul (it runs several times slower than its float64
GEMM), so scoring `model.int.onnx` on thousands of images spends most of its time there. The twin
replaces each integer MatMul

    C = A · B                         (A, B, C int32 or int64)
by
    C = Cast(Cast(A, f64) · Cast(B, f64), int32|int64)

which is the same integer whenever every partial sum of the product is an integer of magnitude below 2^53
(float64 represents those exactly, so no rounding happens in any summation order). The lowering bounds
every accumulator by K·max|a|·max|b| (`act_matmul_rule`, `linear_rule`): below 2^31 for int32 and far
below 2^53 for the int64 case (K ≤ 2^16 rows of 16-bit × 8-bit codes), so the twin is exact for every
model `intonly` emits. It is a measurement tool, never an artifact: it contains float ops by
construction. Callers that score with it check it against the integer model on real inputs
(`benchmarks/intonly_accuracy.py` does, on its first evaluation batch).
"""

from __future__ import annotations

import onnx
from onnx import helper

__all__ = ["float64_matmul_twin"]

INTEGER_TYPES = {onnx.TensorProto.INT32, onnx.TensorProto.INT64}
PASS_THROUGH = {"Sub", "Add", "Neg", "Transpose", "Reshape", "Unsqueeze", "Squeeze", "Identity"}


def _declared_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    graph = inferred.graph
    values = [*graph.value_info, *graph.input, *graph.output]
    types = {v.name: v.type.tensor_type.elem_type for v in values if v.type.HasField("tensor_type")}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def _element_type(name: str, producers: dict[str, onnx.NodeProto], declared: dict[str, int]) -> int | None:
    """The element type of `name`: declared, or traced back through type-preserving ops to a Cast."""
    seen = set()
    while name not in seen:
        seen.add(name)
        if declared.get(name):
            return declared[name]
        node = producers.get(name)
        if node is None:
            return None
        if node.op_type == "Cast":
            return next(a.i for a in node.attribute if a.name == "to")
        if node.op_type not in PASS_THROUGH:
            return None
        name = node.input[0]
    return None


def _rewrite(nodes, declared: dict[str, int]) -> tuple[list[onnx.NodeProto], int]:
    producers = {out: node for node in nodes for out in node.output}
    rewritten, count = [], 0
    for index, node in enumerate(nodes):
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            rewritten.append(node)
            continue
        dtype = _element_type(node.input[0], producers, declared)
        if dtype not in INTEGER_TYPES:
            rewritten.append(node)
            continue
        tag = f"f64mm{index}"
        a, b = f"{tag}_a", f"{tag}_b"
        rewritten += [
            helper.make_node("Cast", [node.input[0]], [a], to=onnx.TensorProto.DOUBLE, name=f"{tag}_cast_a"),
            helper.make_node("Cast", [node.input[1]], [b], to=onnx.TensorProto.DOUBLE, name=f"{tag}_cast_b"),
            helper.make_node("MatMul", [a, b], [f"{tag}_c"], name=f"{tag}_matmul"),
            helper.make_node("Cast", [f"{tag}_c"], list(node.output), to=dtype, name=f"{tag}_cast_c"),
        ]
        count += 1
    return rewritten, count


def float64_matmul_twin(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` with every integer MatMul (graph and local functions) as an exact float64 GEMM.

    Returns the copy and the number of MatMuls rewritten."""
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    nodes, total = _rewrite(list(twin.graph.node), _declared_types(model))
    del twin.graph.node[:]
    twin.graph.node.extend(nodes)
    for function in twin.functions:
        nodes, count = _rewrite(list(function.node), {})
        del function.node[:]
        function.node.extend(nodes)
        total += count
    return twin, total
