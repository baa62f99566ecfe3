"""Backend-private node rewrites before import: fused GEMM epilogues and bounded integer MatMuls.

Fuse IntLinear → Requantize → Cast chains into one `qcompile.tvm.IntLinearRequantize` node:

    Cast(Requantize(IntLinear(x, w, bias), m, e, b, lo, hi), to)
        = clamp((x·w + bias)·m + b + r >> e, lo, hi)  as dtype `to`

is the GEMM with its requantize epilogue (`kernels/int_gemm.py`): the int32 accumulator never goes to
memory. The chain is fused only when each intermediate value has that single consumer and is not a
graph output; the node lives in a private domain that only the TVM importer understands. EXACT.

The softmax lowering's row chain becomes one `qcompile.tvm.ScoresSoftmax` node (CPU targets):

    K(Cast(Requantize(Sub(x, ReduceMax(x, [-1], keepdims=1)), m, e, b, lo, hi), int32), *c)
        = ScoresSoftmax(x, m, e, b, lo, hi, *c; kernel=K)       K = IBertSoftmax or Shiftmax

with scalar constant m, e, b, lo, hi (`kernels/scores_softmax.py` runs it row by row); when its only
reader is an IntMatMul whose recorded range for it fits int32 (attention's P·V), it outputs int32
(attribute `to`): the same values in half the bytes. EXACT.

MatMuls that carry the lowering's operand bounds become `qcompile.tvm.IntMatMul` (the attributes carry
the bounds — max|a|, max|b|, a's range lo_a..hi_a and a's row-sum bound, −1 when unknown — into the
converter, which sees attributes but not metadata):

    MatMul(Sub(Cast(x_a), z_a), Sub(Cast(x_b), z_b)) = IntMatMul(x_a, x_b; zp_a=z_a, zp_b=z_b, to)

so the 8-bit codes, not their int32 centred copies, are what the attention transposes move. EXACT.
"""

from __future__ import annotations

import onnx_ir as ir

from qcompile.intops.domain import DOMAIN

__all__ = [
    "fuse_linear_epilogues",
    "mark_bounded_matmuls",
    "fuse_score_softmax",
    "FUSED_DOMAIN",
    "FUSED_LINEAR",
    "BOUNDED_MATMUL",
    "SCORES_SOFTMAX",
]

FUSED_DOMAIN = "qcompile.tvm"
FUSED_LINEAR = "IntLinearRequantize"
BOUNDED_MATMUL = "IntMatMul"
SCORES_SOFTMAX = "ScoresSoftmax"
SOFTMAX_KERNELS = ("IBertSoftmax", "Shiftmax")


def _sole_consumer(value: ir.Value, graph: ir.Graph, op_type: str, domain: str) -> ir.Node | None:
    if value.is_graph_output() or len(value.uses()) != 1:
        return None
    user = value.uses()[0].node
    return user if user.op_type == op_type and user.domain == domain and user.graph is graph else None


def _scalar_constant(value: ir.Value | None) -> bool:
    constant = value.const_value if value is not None else None
    return constant is not None and constant.numpy().size == 1


def _producer(value: ir.Value, op_type: str, domain: str, graph: ir.Graph) -> ir.Node | None:
    """The node computing `value` if it is op_type/domain and `value` feeds only one node."""
    node = value.producer()
    if node is None or node.op_type != op_type or node.domain != domain or node.graph is not graph:
        return None
    return node if len(value.uses()) == 1 and not value.is_graph_output() else None


def _uncentred(value: ir.Value, graph: ir.Graph, dtype: ir.DataType) -> tuple[ir.Value, int, list[ir.Node]]:
    """(x, z, [Sub, Cast]) when `value` = Sub(Cast(x), z) with a scalar constant z and single-use links
    in `dtype` (the lowering's centring of 8-bit codes, in the product's dtype), else (value, 0, [])."""
    sub = _producer(value, "Sub", "", graph)
    if sub is None or not _scalar_constant(sub.inputs[1]):
        return value, 0, []
    cast = _producer(sub.inputs[0], "Cast", "", graph)
    narrow = (ir.DataType.UINT8, ir.DataType.INT8, ir.DataType.INT16, ir.DataType.UINT16)
    if cast is None or cast.inputs[0].dtype not in narrow or cast.outputs[0].dtype != dtype:
        return value, 0, []
    return cast.inputs[0], int(sub.inputs[1].const_value.numpy().reshape(())), [sub, cast]


def mark_bounded_matmuls(model: ir.Model) -> int:
    """Integer MatMuls whose operand bounds the lowering recorded (`OPERAND_BOUNDS` metadata) become
    `qcompile.tvm.IntMatMul` nodes with attributes bound_a, bound_b, lo_a, hi_a, row_sum_a; an operand
    the lowering centred as Sub(Cast(x), z) is taken as the narrow x with attribute zp_a/zp_b = z (the
    kernel centres it while packing), `to` the product's dtype; returns how many."""
    from qcompile.ir.lowering_contract import OPERAND_BOUNDS, OPERAND_RANGES, ROW_SUM_A

    marked = 0
    for node in list(model.graph):
        metadata = node.metadata_props
        text = metadata.get(OPERAND_BOUNDS) if node.op_type == "MatMul" and node.domain == "" else None
        if text is None:
            continue
        bound_a, bound_b = (int(part) for part in text.split(","))
        lo_a, hi_a = (
            (int(part) for part in metadata[OPERAND_RANGES].split(",")[:2])
            if OPERAND_RANGES in metadata
            else (-bound_a, bound_a)
        )
        row_sum_a = int(metadata.get(ROW_SUM_A, -1))
        (a, zp_a, absorbed_a), (b, zp_b, absorbed_b) = (
            _uncentred(v, model.graph, node.outputs[0].dtype) for v in node.inputs
        )
        values = (
            ("bound_a", bound_a),
            ("bound_b", bound_b),
            ("lo_a", lo_a),
            ("hi_a", hi_a),
            ("row_sum_a", row_sum_a),
            ("zp_a", zp_a),
            ("zp_b", zp_b),
            ("to", node.outputs[0].dtype.value),
        )
        attributes = [ir.AttrInt64(name, value) for name, value in values]
        replacement = ir.Node(FUSED_DOMAIN, BOUNDED_MATMUL, [a, b], attributes, num_outputs=1, name=node.name)
        ir.convenience.replace_nodes_and_values(
            model.graph, node, [node, *absorbed_a, *absorbed_b], [replacement], node.outputs, replacement.outputs
        )
        marked += 1
    model.opset_imports.setdefault(FUSED_DOMAIN, 1)
    return marked


def fuse_linear_epilogues(model: ir.Model) -> int:
    """Rewrite the chains in place; returns how many were fused."""
    graph = model.graph
    fused = 0
    for linear in [n for n in graph if n.op_type == "IntLinear" and n.domain == DOMAIN]:
        requant = _sole_consumer(linear.outputs[0], graph, "Requantize", DOMAIN)
        if requant is None or requant.inputs[0] is not linear.outputs[0]:
            continue
        cast = _sole_consumer(requant.outputs[0], graph, "Cast", "")
        attributes = [ir.AttrInt64("to", cast.attributes["to"].as_int())] if cast is not None else []
        last = cast if cast is not None else requant
        node = ir.Node(
            FUSED_DOMAIN,
            FUSED_LINEAR,
            [*linear.inputs, *requant.inputs[1:]],
            attributes,
            num_outputs=1,
            name=linear.name,
        )
        chain = [n for n in (linear, requant, cast) if n is not None]
        ir.convenience.replace_nodes_and_values(graph, last, chain, [node], last.outputs, node.outputs)
        fused += 1
    model.opset_imports.setdefault(FUSED_DOMAIN, 1)
    return fused


def _row_max_of(node: ir.Node | None, x: ir.Value) -> bool:
    """Whether `node` is ReduceMax(x) over the last axis with keepdims=1."""
    if node is None or node.inputs[0] is not x or node.attributes.get_int("keepdims", 1) != 1:
        return False
    axes = node.inputs[1].const_value if len(node.inputs) > 1 and node.inputs[1] is not None else None
    rank = len(x.shape) if x.shape is not None else None
    if axes is None or rank is None:
        return False
    return [int(a) % rank for a in axes.numpy().reshape(-1)] == [rank - 1]


def _read_by_a_bounded_matmul_in_int32(value: ir.Value) -> bool:
    """Whether `value`'s one reader is an IntMatMul taking it as A, uncentred, with a range inside int32:
    the probabilities (int64 in the ONNX function) can then travel as int32, half the bytes."""
    if value.is_graph_output() or len(value.uses()) != 1:
        return False
    user, index = value.uses()[0].node, value.uses()[0].idx
    if (
        user.op_type != BOUNDED_MATMUL
        or user.domain != FUSED_DOMAIN
        or index != 0
        or user.attributes.get_int("zp_a", 0) != 0
    ):
        return False
    return -(2**31) <= user.attributes.get_int("lo_a", -(2**63)) and user.attributes.get_int("hi_a", 2**63 - 1) < 2**31


def fuse_score_softmax(model: ir.Model) -> int:
    """Rewrite the softmax row chains in place; returns how many were fused."""
    graph = model.graph
    fused = 0
    for kernel in [n for n in graph if n.op_type in SOFTMAX_KERNELS and n.domain == DOMAIN]:
        cast = _producer(kernel.inputs[0], "Cast", "", graph)
        if cast is None or cast.attributes["to"].as_int() != ir.DataType.INT32:
            continue
        requant = _producer(cast.inputs[0], "Requantize", DOMAIN, graph)
        if requant is None or not all(_scalar_constant(v) for v in requant.inputs[1:]):
            continue
        sub = _producer(requant.inputs[0], "Sub", "", graph)
        if sub is None or sub.inputs[0].dtype != ir.DataType.INT32:
            continue
        scores = sub.inputs[0]
        row_max = _producer(sub.inputs[1], "ReduceMax", "", graph)
        if not _row_max_of(row_max, scores):
            continue
        attributes = [ir.AttrString("kernel", kernel.op_type)]
        if _read_by_a_bounded_matmul_in_int32(kernel.outputs[0]):
            attributes.append(ir.AttrInt64("to", ir.DataType.INT32.value))
        node = ir.Node(
            FUSED_DOMAIN,
            SCORES_SOFTMAX,
            [scores, *requant.inputs[1:], *kernel.inputs[1:]],
            attributes,
            num_outputs=1,
            name=kernel.name,
        )
        chain = [row_max, sub, requant, cast, kernel]
        ir.convenience.replace_nodes_and_values(graph, kernel, chain, [node], kernel.outputs, node.outputs)
        fused += 1
    model.opset_imports.setdefault(FUSED_DOMAIN, 1)
    return fused
