"""Structural checks of an ONNX model proto, run before anything executes it.

Each check raises an `InputError` of one line naming the model and, where there is one, the node, op,
value or function:

* IR version and the default-domain opset lie in the range qcompile supports (`MIN_OPSET` .. the
  newest at which the installed ONNX Runtime runs the quantized ops qcompile writes,
  `runtime_max_opset`; below `MIN_OPSET`, op semantics the passes rely on differ: upgrade with
  `onnx.version_converter`);
* no value is written twice (by two nodes, or by a node over a graph input or initializer);
* the graph has outputs; declared dims of inputs, outputs and value infos are in 0 .. 2^31-1 (inputs
  above 0);
* the data-flow graph (outer-scope reads of subgraphs included) has no cycle; an acyclic graph that is
  merely out of order is sorted, as ONNX requires;
* no model-local function calls itself, directly or through others;
* onnx's own checker (types, attributes, tensor sizes) and strict shape and type inference pass: an int64
  tensor fed to a MatMul with float weights, or a [b, 16] x [5, 8] MatMul, is found here, not in ONNX
  Runtime.
"""

from __future__ import annotations

import functools
import math

import networkx as nx
import onnx
from onnx.external_data_helper import _get_all_tensors, uses_external_data

from qcompile.errors import InputError
from qcompile.frontends.external_data import FIXED_SIZE

__all__ = ["check_structure", "check_with_onnx", "MIN_OPSET", "MAX_OPSET", "MAX_IR_VERSION", "MAX_DIM"]

MIN_OPSET = 13
MAX_OPSET = onnx.defs.onnx_opset_version()
MIN_IR_VERSION = 3
MAX_IR_VERSION = onnx.IR_VERSION
MAX_DIM = 2**31 - 1


@functools.cache
def runtime_max_opset() -> int:
    """The newest default-domain opset at which ONNX Runtime's CPU provider runs what qcompile writes
    (a QuantizeLinear/DequantizeLinear pair, Cast, MatMulInteger): onnx may define newer versions of
    them than the installed ONNX Runtime implements (onnx 1.23 has QuantizeLinear-28; ORT 1.32 does not)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
        helper.make_node("MatMulInteger", ["q", "w"], ["m"]),
        helper.make_node("Cast", ["m"], ["c"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Add", ["c", "d"], ["y"]),
    ]
    constants = [
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(3, np.uint8), "z"),
        numpy_helper.from_array(np.ones((4, 4), np.uint8), "w"),
    ]
    graph = helper.make_graph(
        nodes,
        "probe",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
        constants,
    )
    options = ort.SessionOptions()
    options.log_severity_level = 4
    for opset in range(onnx.defs.onnx_opset_version(), MIN_OPSET, -1):
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=min(onnx.IR_VERSION, 10)
        )
        try:
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception:  # NOT_IMPLEMENTED for this opset: try the one before
            continue
        return opset
    return MIN_OPSET


def _check_versions(proto: onnx.ModelProto, source: str) -> None:
    if not MIN_IR_VERSION <= proto.ir_version <= MAX_IR_VERSION:
        raise InputError(
            f"{source}: IR version {proto.ir_version} is not supported (supported: {MIN_IR_VERSION}..{MAX_IR_VERSION})"
        )
    opsets = {entry.domain or "": entry.version for entry in proto.opset_import}
    if "" not in opsets and "ai.onnx" not in opsets:
        raise InputError(f"{source}: imports no version of the default ONNX opset")
    version = opsets.get("", opsets.get("ai.onnx"))
    if version > MAX_OPSET:
        raise InputError(f"{source}: opset {version} is newer than the installed onnx knows (newest: {MAX_OPSET})")
    if version > runtime_max_opset():
        raise InputError(
            f"{source}: opset {version} is newer than ONNX Runtime runs quantized models at (newest: "
            f"{runtime_max_opset()}); "
            f"convert it with onnx.version_converter.convert_version(model, {runtime_max_opset()})"
        )
    if version < MIN_OPSET:
        raise InputError(
            f"{source}: opset {version} is older than qcompile supports ({MIN_OPSET}..{runtime_max_opset()}); "
            "upgrade it with onnx.version_converter.convert_version(model, 17)"
        )


def _check_dims(proto: onnx.ModelProto, source: str) -> None:
    graph = proto.graph
    initializers = {t.name for t in graph.initializer}
    groups = (
        ("input", [v for v in graph.input if v.name not in initializers]),
        ("output", graph.output),
        ("value", graph.value_info),
    )
    for kind, values in groups:
        for value in values:
            if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
                continue
            for axis, dim in enumerate(value.type.tensor_type.shape.dim):
                if not dim.HasField("dim_value"):
                    continue
                low = 1 if kind == "input" else 0
                if not low <= dim.dim_value <= MAX_DIM:
                    raise InputError(
                        f"{source}: {kind} '{value.name}' declares dim {dim.dim_value} at axis {axis} "
                        f"(dims must be {low}..{MAX_DIM})"
                    )


def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Names that `node`'s subgraphs read from enclosing scopes (a superset: their own names too)."""
    names: set[str] = set()
    for attribute in node.attribute:
        graphs = [attribute.g] if attribute.HasField("g") else list(attribute.graphs)
        for graph in graphs:
            for inner in graph.node:
                names.update(name for name in inner.input if name)
                names |= _subgraph_reads(inner)
    return names


def _sort_acyclic(graph: onnx.GraphProto, source: str) -> None:
    """Refuse a cycle (naming its nodes); put an acyclic but out-of-order node list in topological order."""
    producer: dict[str, int] = {}
    given = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    for index, node in enumerate(graph.node):
        for name in node.output:
            if not name:
                continue
            if name in producer:
                first = graph.node[producer[name]]
                raise InputError(
                    f"{source}: value '{name}' is written by two nodes, '{first.name or first.op_type}' and "
                    f"'{node.name or node.op_type}'"
                )
            if name in given:
                raise InputError(
                    f"{source}: node '{node.name or node.op_type}' writes '{name}', which is already a graph input or "
                    f"initializer"
                )
            producer[name] = index
    flow = nx.DiGraph()
    flow.add_nodes_from(range(len(graph.node)))
    for index, node in enumerate(graph.node):
        for name in {*node.input, *_subgraph_reads(node)}:
            if name in producer and producer[name] != index:
                flow.add_edge(producer[name], index)
            elif name in producer:
                raise InputError(
                    f"{source}: node '{node.name}' ({node.op_type}) reads its own output '{name}' (a cycle)"
                )
    try:
        cycle = nx.find_cycle(flow)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        names = " -> ".join(f"'{graph.node[a].name or graph.node[a].op_type}'" for a, _ in cycle)
        raise InputError(f"{source}: the graph has a cycle through nodes {names}")
    order = list(nx.lexicographical_topological_sort(flow))
    if order != list(range(len(graph.node))):
        nodes = [graph.node[i] for i in order]
        del graph.node[:]
        graph.node.extend(nodes)


def _check_functions(proto: onnx.ModelProto, source: str) -> None:
    local = {(f.domain, f.name) for f in proto.functions}
    calls = nx.DiGraph()
    for function in proto.functions:
        calls.add_node((function.domain, function.name))
        for node in function.node:
            if (node.domain, node.op_type) in local:
                calls.add_edge((function.domain, function.name), (node.domain, node.op_type))
    try:
        cycle = nx.find_cycle(calls)
    except nx.NetworkXNoCycle:
        return
    raise InputError(
        f"{source}: model-local function '{cycle[0][0][1]}' calls itself (recursion: "
        f"{' -> '.join(a[1] for a, _ in cycle)})"
    )


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text[:400] if text else type(error).__name__


_TYPED_FIELD = {
    onnx.TensorProto.FLOAT: "float_data",
    onnx.TensorProto.DOUBLE: "double_data",
    onnx.TensorProto.INT64: "int64_data",
    onnx.TensorProto.UINT32: "uint64_data",
    onnx.TensorProto.UINT64: "uint64_data",
    onnx.TensorProto.STRING: "string_data",
    **dict.fromkeys(
        (
            onnx.TensorProto.INT32,
            onnx.TensorProto.INT16,
            onnx.TensorProto.INT8,
            onnx.TensorProto.UINT16,
            onnx.TensorProto.UINT8,
            onnx.TensorProto.BOOL,
            onnx.TensorProto.FLOAT16,
            onnx.TensorProto.BFLOAT16,
        ),
        "int32_data",
    ),
}


def _check_tensor_sizes(proto: onnx.ModelProto, source: str) -> None:
    """Every in-proto tensor holds as many values as its dims say (raw bytes or typed fields)."""
    for tensor in _get_all_tensors(proto):
        if uses_external_data(tensor) or tensor.data_type not in _TYPED_FIELD:
            continue
        if any(d < 0 for d in tensor.dims):
            raise InputError(f"{source}: tensor '{tensor.name[:120]}' has a negative dim {list(tensor.dims)}")
        count = math.prod(tensor.dims)
        itemsize = FIXED_SIZE.get(tensor.data_type)
        if tensor.raw_data and itemsize is not None:
            if len(tensor.raw_data) != count * itemsize:
                raise InputError(
                    f"{source}: tensor '{tensor.name[:120]}' holds {len(tensor.raw_data)} bytes, "
                    f"its dims {list(tensor.dims)} need {count * itemsize}"
                )
            continue
        held = len(getattr(tensor, _TYPED_FIELD[tensor.data_type]))
        if held != count and not (held == 0 and tensor.raw_data):
            raise InputError(
                f"{source}: tensor '{tensor.name[:120]}' holds {held} values, its dims {list(tensor.dims)} need {count}"
            )


def _skeleton(proto: onnx.ModelProto) -> onnx.ModelProto:
    """`proto` without initializer data: each initializer becomes a typed graph input, so onnx's checker and
    shape inference see every type and shape without 2 GB limits or external files."""
    skeleton = onnx.ModelProto(ir_version=proto.ir_version, producer_name=proto.producer_name, domain=proto.domain)
    skeleton.opset_import.extend(proto.opset_import)
    skeleton.functions.extend(proto.functions)
    graph, source = skeleton.graph, proto.graph
    graph.name = source.name or "graph"
    graph.node.extend(source.node)
    graph.input.extend(source.input)
    graph.output.extend(source.output)
    graph.value_info.extend(source.value_info)
    declared = {v.name for v in source.input}
    for tensor in source.initializer:
        if tensor.name not in declared:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    if skeleton.ir_version < 4:
        skeleton.ir_version = 4  # initializers no longer need to be inputs; typed inputs are still valid
    return skeleton


def check_with_onnx(proto: onnx.ModelProto, source: str) -> None:
    """Tensor sizes, then onnx's checker and strict shape and type inference on the model's skeleton.
    Call after external data is loaded (the skeleton must hold no external references)."""
    _check_tensor_sizes(proto, source)
    skeleton = _skeleton(proto)
    try:
        onnx.checker.check_model(skeleton)
        onnx.shape_inference.infer_shapes(skeleton, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError, RuntimeError) as error:
        raise InputError(f"{source}: invalid model: {_one_line(error)}") from None


def check_structure(proto: onnx.ModelProto, source: str) -> None:
    """The checks that need no tensor data (in place: an out-of-order node list is sorted)."""
    _check_versions(proto, source)
    if len(proto.graph.output) == 0:
        raise InputError(f"{source}: the graph has no outputs")
    _check_dims(proto, source)
    _sort_acyclic(proto.graph, source)
    _check_functions(proto, source)
