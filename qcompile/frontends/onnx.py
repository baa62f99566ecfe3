"""The ONNX frontend: read a model file into an `onnx_ir` model, or say exactly why it cannot.

Every model qcompile takes (a file, `from_torch`, a zoo entry) passes through here before anything runs
it; each failure is one `InputError` line naming the file and, where there is one, the node and op:

1. the file is a readable regular file holding an ONNX ModelProto with a graph (`model_file`);
2. versions, outputs, declared dims, acyclic data flow, no recursive functions (`structure`);
3. external data contained in the model's folder, its offsets and lengths checked, then read into
   memory, so nothing later resolves a path (`external_data`);
4. every op known (standard domains from the ONNX schema registry, other domains from model-local
   functions or the ONNX Runtime contrib domain), in subgraphs and functions too, and every node input
   produced by a node, a graph input, an initializer or an enclosing scope (`validate`);
5. tensor sizes, onnx's checker and strict shape/type inference (`structure.check_with_onnx`);
6. a float16/bfloat16 model is made to compute in float32, its interface kept (`precision`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnx
import onnx_ir as ir

from qcompile.errors import InputError
from qcompile.frontends.external_data import check_external_data, load_external_data
from qcompile.frontends.model_file import read_model_proto
from qcompile.frontends.precision import compute_in_float32
from qcompile.frontends.structure import check_structure, check_with_onnx
from qcompile.ir import inline_external_tensors

__all__ = ["load", "validate"]

_STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
_RUNTIME_DOMAINS = ("com.microsoft",)


def _check_op(node: ir.Node, opsets: dict[str, int], functions: set[tuple[str, str]], source: str) -> None:
    domain = node.domain or ""
    if (domain, node.op_type) in functions or domain in _RUNTIME_DOMAINS:
        return
    if domain not in _STANDARD_DOMAINS:
        raise InputError(f"{source}: node '{node.name}' uses op '{node.op_type}' of unknown domain '{domain}'")
    version = opsets.get(domain, opsets.get("ai.onnx", 1))
    try:
        onnx.defs.get_schema(node.op_type, version, domain)
    except onnx.defs.SchemaError:
        raise InputError(f"{source}: node '{node.name}' uses unknown op '{node.op_type}' (opset {version})") from None


def _check_graph(graph: ir.Graph | ir.Function, outer: set[int], opsets, functions, source: str) -> None:
    available = set(outer) | {id(v) for v in graph.inputs}
    if isinstance(graph, ir.Graph):
        available |= {id(v) for v in graph.initializers.values()}
    for node in graph:
        _check_op(node, opsets, functions, source)
        for value in node.inputs:
            if value is None or id(value) in available:
                continue
            raise InputError(
                f"{source}: node '{node.name}' ({node.op_type}) reads '{value.name}', which no node, "
                "graph input or initializer provides (missing initializer?)"
            )
        for attribute in node.attributes.values():
            if attribute.type == ir.AttributeType.GRAPH:
                _check_graph(attribute.value, available, opsets, functions, source)
            elif attribute.type == ir.AttributeType.GRAPHS:
                for subgraph in attribute.value:
                    _check_graph(subgraph, available, opsets, functions, source)
        available |= {id(v) for v in node.outputs}
    for value in graph.outputs:
        if id(value) not in available:
            raise InputError(f"{source}: graph output '{value.name}' is never produced")


def validate(model: ir.Model, source: str, structural: bool = True) -> None:
    """Raise `InputError` if `model` is malformed, uses unknown ops or reads values nothing provides
    (main graph, subgraphs and model-local functions). `structural=False` skips the proto-level checks
    (for a model `load` has just checked)."""
    if structural:
        inline_external_tensors(model)
    proto = ir.serde.serialize_model(model) if structural else None
    if proto is not None:
        check_structure(proto, source)
    functions = {(f.domain, f.name) for f in model.functions.values()}
    opsets = dict(model.opset_imports)
    _check_graph(model.graph, set(), opsets, functions, source)
    for function in model.functions.values():
        _check_graph(
            function, set(), {**opsets, **function.opset_imports}, functions, f"{source}: function '{function.name}'"
        )
    if proto is not None:
        check_with_onnx(proto, source)


def load(path: str | os.PathLike) -> ir.Model:
    """Load and validate an ONNX model file (external data included, read into memory) as an `ir.Model`."""
    path = Path(path)
    source = str(path)
    proto = read_model_proto(path)
    check_structure(proto, source)
    load_external_data(check_external_data(proto, path, source))
    # onnx_ir logs a warning for each input nothing provides; `validate` reports the first as an InputError.
    ir_logger = logging.getLogger("onnx_ir")
    level = ir_logger.level
    ir_logger.setLevel(logging.ERROR)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as error:  # onnx_ir raises assorted errors on malformed protos
        raise InputError(
            f"{path}: malformed ONNX model ({type(error).__name__}: {' '.join(str(error).split())[:300]})"
        ) from None
    finally:
        ir_logger.setLevel(level)
    validate(model, source, structural=False)
    check_with_onnx(proto, source)
    compute_in_float32(model, source)
    return model
