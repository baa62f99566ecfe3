"""The ONNX frontend: read a model file into an `onnx_ir` model, or say exactly why it cannot.

Checks, each reported as one `InputError` line naming the file and, where there is one, the node and op:
the file exists and parses as an ONNX ModelProto with a graph; external data files are present; every
op is known (standard domains from the ONNX schema registry, other domains from model-local functions or
the ONNX Runtime contrib domain); every node input is produced by a node, a graph input or an initializer.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from qcompile.errors import InputError

__all__ = ["load", "validate"]

_STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
_RUNTIME_DOMAINS = ("com.microsoft",)


def _read_proto(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an ONNX file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"{path}: not a valid ONNX file (protobuf parse failed: {reason})") from None
    if not proto.HasField("graph") or proto.ir_version <= 0 or len(proto.graph.node) == 0:
        raise InputError(f"{path}: not an ONNX model (no graph, IR version or nodes)")
    return proto


def _check_external_data(proto: onnx.ModelProto, path: Path) -> None:
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        if not onnx.external_data_helper.uses_external_data(tensor):
            continue
        info = onnx.external_data_helper.ExternalDataInfo(tensor)
        data_file = path.parent / info.location
        if not data_file.is_file():
            raise InputError(f"{path}: tensor '{tensor.name}' needs external data file '{info.location}', not found")
        end = int(info.offset or 0) + int(info.length or 0)
        if end > data_file.stat().st_size:
            raise InputError(
                f"{path}: tensor '{tensor.name}' needs {end} bytes of external data file '{info.location}', "
                f"which has {data_file.stat().st_size} (truncated?)"
            )


def validate(model: ir.Model, source: str) -> None:
    """Raise `InputError` if `model` uses unknown ops or reads values nothing provides."""
    functions = {(f.domain, f.name) for f in model.functions.values()}
    opsets = model.opset_imports
    available: set[int] = {id(v) for v in model.graph.inputs}
    available |= {id(v) for v in model.graph.initializers.values()}
    for node in model.graph:
        domain = node.domain or ""
        if (domain, node.op_type) not in functions and domain not in _RUNTIME_DOMAINS:
            if domain not in _STANDARD_DOMAINS:
                raise InputError(
                    f"{source}: node '{node.name}' uses op '{node.op_type}' of unknown domain '{domain}'"
                )
            version = opsets.get(domain, opsets.get("ai.onnx", 1))
            try:
                onnx.defs.get_schema(node.op_type, version, domain)
            except onnx.defs.SchemaError:
                raise InputError(
                    f"{source}: node '{node.name}' uses unknown op '{node.op_type}' (opset {version})"
                ) from None
        for value in node.inputs:
            if value is None or id(value) in available:
                continue
            if value.producer() is None:
                raise InputError(
                    f"{source}: node '{node.name}' ({node.op_type}) reads '{value.name}', which no node, "
                    "graph input or initializer provides (missing initializer?)"
                )
        available |= {id(v) for v in node.outputs}
    for value in model.graph.outputs:
        if id(value) not in available:
            raise InputError(f"{source}: graph output '{value.name}' is never produced")


def load(path: str | os.PathLike) -> ir.Model:
    """Load and validate an ONNX model file (external data included) as an `ir.Model`."""
    path = Path(path)
    _check_external_data(_read_proto(path), path)
    # onnx_ir logs a warning for each input nothing provides; `validate` reports the first as an InputError.
    ir_logger = logging.getLogger("onnx_ir")
    level = ir_logger.level
    ir_logger.setLevel(logging.ERROR)
    try:
        model = ir.load(str(path))  # external data stays memory-mapped
    except Exception as error:  # onnx_ir raises assorted errors on malformed protos
        raise InputError(f"{path}: malformed ONNX model ({type(error).__name__}: {error})") from None
    finally:
        ir_logger.setLevel(level)
    validate(model, str(path))
    return model
