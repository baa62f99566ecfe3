"""Make a float16 / bfloat16 model compute in float32, keeping its interface where ONNX Runtime allows.

LLMs ship as float16 or bfloat16 ONNX files; calibration and quantization assume float32 activations and
weights. `compute_in_float32(model)` rewrites the model in place:

* every FLOAT16 / BFLOAT16 initializer (and constant value) becomes a FLOAT tensor holding the same
  numbers; every value typed FLOAT16 / BFLOAT16 (graph and subgraph inputs, outputs, node outputs,
  sequence / optional element types) is retyped FLOAT;
* attributes naming a data type (`Cast.to`, `RandomNormal*.dtype`, `EyeLike.dtype`,
  `*Normalization.stash_type`, `DequantizeLinear.output_dtype`, window ops' `output_datatype`, ...) that
  name FLOAT16 / BFLOAT16 now name FLOAT, and tensor attributes (`Constant.value`,
  `ConstantOfShape.value`, ...) and type attributes (`Optional.type`) are upcast / retyped;
* all of this in the main graph, in every subgraph (If / Loop / Scan bodies) and in model-local
  functions (a function attribute that a `Cast.to` refers to is rewritten at the call sites too).

The algebra. float16 (1 sign, 5 exponent, 10 mantissa bits) and bfloat16 (1, 8, 7) are subsets of
float32 (1, 8, 23): every finite value, subnormal, infinity and signed zero of either maps to exactly one
float32 with the same value, so the upcast of each weight is exact (`astype(np.float32)`, never a
rounding step). The rewritten model therefore evaluates the *same* function on the same inputs and
weights, only each intermediate op now rounds its result to float32 instead of float16 / bfloat16 (a
`Cast(to=FLOAT16)` inside the graph, a rounding step, becomes a float32 identity): its outputs are the
original's values computed with more precision, and the quantizers downstream see ordinary float32.

The interface. An fp16 graph input stays FLOAT16, followed by a `Cast(to=FLOAT)` that every consumer now
reads; an fp16 graph output stays FLOAT16, produced by a `Cast(to=FLOAT16)` of the float32 result (the
value computed before it is renamed `<name>__float32`). Names and dtypes of the interface are unchanged,
so fp16 feeds (np.float16) work as before. bfloat16 inputs and outputs become FLOAT: ONNX Runtime's CPU
provider runs `Cast` bfloat16<->float, but its Python binding can neither take `ml_dtypes.bfloat16`
arrays as feeds nor return bfloat16 outputs from `InferenceSession.run` (verified with onnxruntime 1.32;
only an IOBinding of uint16 buffers through `OrtValue.ortvalue_from_numpy_with_onnx_type` works, which
nothing in qcompile uses). Feed such a model float32 arrays; each description line says which I/O changed.

The rewrite is idempotent (the boundary Casts it adds are recognized and left alone: an fp16 input read
only by Casts, an fp16 output produced by a Cast nothing else reads) and a no-op on a float32 model,
which is not touched at all. A `BitCast` that reads or writes fp16 / bf16 cannot be made exact in
float32 and is refused (`InputError`).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.errors import InputError

__all__ = ["compute_in_float32", "LOW_PRECISION"]

LOW_PRECISION = frozenset({ir.DataType.FLOAT16, ir.DataType.BFLOAT16})
_FLOAT = ir.DataType.FLOAT

# INT attributes of standard ops whose value is a TensorProto data type (from the ONNX schemas).
_DTYPE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "Cast": ("to",),
    "Bernoulli": ("dtype",),
    "EyeLike": ("dtype",),
    "Multinomial": ("dtype",),
    "RandomNormal": ("dtype",),
    "RandomNormalLike": ("dtype",),
    "RandomUniform": ("dtype",),
    "RandomUniformLike": ("dtype",),
    "SequenceEmpty": ("dtype",),
    "DequantizeLinear": ("output_dtype",),
    "QuantizeLinear": ("output_dtype",),
    "LayerNormalization": ("stash_type",),
    "GroupNormalization": ("stash_type",),
    "RMSNormalization": ("stash_type",),
    "Range": ("stash_type",),
    "BlackmanWindow": ("output_datatype",),
    "HammingWindow": ("output_datatype",),
    "HannWindow": ("output_datatype",),
    "MelWeightMatrix": ("output_datatype",),
}
_STANDARD = ("", "ai.onnx")


def _is_cast(node: ir.Node) -> bool:
    return node.op_type == "Cast" and node.domain in _STANDARD


def _float_type(value_type):
    """`value_type` with FLOAT16/BFLOAT16 replaced by FLOAT (a new object), or None if it has neither."""
    if value_type is None:
        return None
    if isinstance(value_type, (ir.SequenceType, ir.OptionalType)):
        inner = _float_type(value_type.elem_type)
        return None if inner is None else type(value_type)(inner)
    if value_type.dtype in LOW_PRECISION:
        return type(value_type)(_FLOAT)  # TensorType or SparseTensorType
    return None


def _float_tensor(tensor: ir.TensorProtocol) -> ir.Tensor:
    # float16 and bfloat16 (ml_dtypes) arrays upcast to float32 exactly.
    return ir.Tensor(
        np.asarray(tensor.numpy()).astype(np.float32),
        name=tensor.name,
        doc_string=tensor.doc_string,
        metadata_props=dict(tensor.metadata_props) if tensor.metadata_props else None,
    )


def _copy(shape: ir.Shape | None) -> ir.Shape | None:
    return None if shape is None else shape.copy()


def _all_graphs(model: ir.Model) -> list[ir.Graph]:
    graphs = list(model.graphs())
    for function in model.functions.values():
        graphs.append(function.graph)
        graphs.extend(function.subgraphs())
    return graphs


def _taken_names(graphs: list[ir.Graph]) -> set[str]:
    names: set[str] = set()
    for graph in graphs:
        names.update(v.name for v in graph.inputs if v.name)
        names.update(graph.initializers)
        for node in graph:
            if node.name:
                names.add(node.name)
            names.update(v.name for v in node.outputs if v.name)
    return names


def _unique(base: str, taken: set[str]) -> str:
    name, index = base, 1
    while name in taken:
        name, index = f"{base}_{index}", index + 1
    taken.add(name)
    return name


class _Rewrite:
    def __init__(self, model: ir.Model) -> None:
        self.model = model
        self.graphs = _all_graphs(model)
        self.taken = _taken_names(self.graphs)
        self.keep_values: set[int] = set()  # ids of interface values that stay FLOAT16
        self.keep_nodes: set[int] = set()  # ids of boundary Cast(to=FLOAT16) nodes
        self.notes: list[str] = []
        self.counts = {"initializers": 0, "values": 0, "attributes": 0}

    # -- the interface of the main graph ------------------------------------------------------------
    def interface(self) -> None:
        graph = self.model.graph
        input_ids = {id(v) for v in graph.inputs}
        for value in graph.inputs:
            if value.dtype == ir.DataType.FLOAT16:
                self.keep_values.add(id(value))
                users = [(node, index) for node, index in value.uses() if not _is_cast(node)]
                if users:
                    cast = ir.Node(
                        "",
                        "Cast",
                        [value],
                        attributes=[ir.AttrInt64("to", _FLOAT)],
                        outputs=[
                            ir.Value(
                                name=_unique(f"{value.name}__float32", self.taken),
                                type=ir.TensorType(_FLOAT),
                                shape=_copy(value.shape),
                            )
                        ],
                        name=_unique(f"{value.name}__to_float32", self.taken),
                    )
                    for node, index in users:
                        node.replace_input_with(index, cast.outputs[0])
                    if len(graph):
                        graph.insert_before(graph[0], cast)
                    else:
                        graph.append(cast)
                    self.notes.append(f"input '{value.name}' stays FLOAT16; a Cast to FLOAT follows it")
            elif value.dtype == ir.DataType.BFLOAT16:
                self.notes.append(
                    f"input '{value.name}' was BFLOAT16 and is now FLOAT (ONNX Runtime's Python API cannot feed "
                    "bfloat16 arrays): feed float32"
                )
        replaced: dict[int, ir.Value] = {}
        for position, value in enumerate(graph.outputs):
            if value.dtype == ir.DataType.BFLOAT16 and id(value) not in input_ids:
                self.notes.append(
                    f"output '{value.name}' was BFLOAT16 and is now FLOAT (ONNX Runtime's Python API cannot "
                    "return bfloat16 arrays)"
                )
                continue
            if value.dtype != ir.DataType.FLOAT16 or id(value) in self.keep_values:
                continue
            if id(value) in replaced:
                graph.outputs[position] = replaced[id(value)]
                continue
            producer = value.producer()
            if producer is not None and _is_cast(producer) and not list(value.uses()):
                self.keep_values.add(id(value))  # already a boundary Cast(to=FLOAT16)
                self.keep_nodes.add(id(producer))
                continue
            name = value.name
            value.name = _unique(f"{name}__float32", self.taken)
            self.taken.add(name)
            boundary = ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT16), shape=_copy(value.shape))
            cast = ir.Node(
                "",
                "Cast",
                [value],
                attributes=[ir.AttrInt64("to", ir.DataType.FLOAT16)],
                outputs=[boundary],
                name=_unique(f"{name}__to_float16", self.taken),
            )
            graph.append(cast)
            graph.outputs[position] = boundary
            replaced[id(value)] = boundary
            self.keep_values.add(id(boundary))
            self.keep_nodes.add(id(cast))
            self.notes.append(f"output '{name}' stays FLOAT16; a Cast from FLOAT precedes it")

    # -- everything else ----------------------------------------------------------------------------
    def value(self, value: ir.Value | None, seen: set[int]) -> None:
        if value is None or id(value) in seen or id(value) in self.keep_values:
            return
        seen.add(id(value))
        new_type = _float_type(value.type)
        if new_type is not None:
            value.type = new_type
            self.counts["values"] += 1
        tensor = value.const_value
        if tensor is not None and tensor.dtype in LOW_PRECISION:
            value.const_value = _float_tensor(tensor)
            self.counts["initializers"] += 1

    def attribute(self, node: ir.Node, attr: ir.Attr) -> ir.Attr | None:
        """A replacement for `attr` without FLOAT16/BFLOAT16, or None to keep it."""
        if attr.is_ref():
            return None
        kind = attr.type
        if kind == ir.AttributeType.INT and node.domain in _STANDARD:
            if attr.name in _DTYPE_ATTRIBUTES.get(node.op_type, ()) and attr.value in LOW_PRECISION:
                if node.op_type == "Cast" and id(node) in self.keep_nodes:
                    return None
                return ir.AttrInt64(attr.name, _FLOAT, doc_string=attr.doc_string)
        elif kind == ir.AttributeType.TENSOR and attr.value.dtype in LOW_PRECISION:
            return ir.AttrTensor(attr.name, _float_tensor(attr.value), doc_string=attr.doc_string)
        elif kind == ir.AttributeType.TENSORS and any(t.dtype in LOW_PRECISION for t in attr.value):
            tensors = [_float_tensor(t) if t.dtype in LOW_PRECISION else t for t in attr.value]
            return ir.AttrTensors(attr.name, tensors, doc_string=attr.doc_string)
        elif kind == ir.AttributeType.TYPE_PROTO and _float_type(attr.value.type) is not None:
            return ir.AttrTypeProto(attr.name, ir.TypeAndShape(_float_type(attr.value.type), attr.value.shape))
        elif kind == ir.AttributeType.TYPE_PROTOS and any(_float_type(t.type) for t in attr.value):
            return ir.AttrTypeProtos(
                attr.name, [ir.TypeAndShape(_float_type(t.type) or t.type, t.shape) for t in attr.value]
            )
        return None

    def check_bitcast(self, node: ir.Node, source: str | None) -> None:
        if node.op_type != "BitCast" or node.domain not in _STANDARD:
            return
        to = node.attributes.get("to")
        read = [v for v in node.inputs if v is not None and v.dtype in LOW_PRECISION]
        if read or (to is not None and not to.is_ref() and to.value in LOW_PRECISION):
            prefix = f"{source}: " if source else ""
            raise InputError(
                f"{prefix}node '{node.name}' (BitCast) reinterprets float16/bfloat16 bits, which computing in float32 "
                "cannot preserve"
            )

    def graph_body(self, graph: ir.Graph, seen: set[int]) -> None:
        for value in (*graph.inputs, *graph.initializers.values(), *graph.outputs):
            self.value(value, seen)
        for node in graph:
            for value in node.outputs:
                self.value(value, seen)
            for attr in list(node.attributes.values()):
                replacement = self.attribute(node, attr)
                if replacement is not None:
                    node.attributes[attr.name] = replacement
                    self.counts["attributes"] += 1

    def function_dtype_references(self) -> None:
        """Function attributes that a dtype attribute refers to (`Cast(to=@dtype)`): rewrite their defaults
        and their values at every call site."""
        for function in self.model.functions.values():
            referenced = {
                attr.ref_attr_name
                for node in function.all_nodes()
                if node.domain in _STANDARD
                for attr in node.attributes.values()
                if attr.is_ref() and attr.name in _DTYPE_ATTRIBUTES.get(node.op_type, ())
            }
            if not referenced:
                continue
            for name in referenced:
                default = function.attributes.get(name)
                if default is not None and default.type == ir.AttributeType.INT and default.value in LOW_PRECISION:
                    function.attributes[name] = ir.AttrInt64(name, _FLOAT)
                    self.counts["attributes"] += 1
            for graph in self.graphs:
                for node in graph:
                    if (node.domain, node.op_type, node.overload) != function.identifier():
                        continue
                    for name in referenced:
                        attr = node.attributes.get(name)
                        if (
                            attr is not None
                            and not attr.is_ref()
                            and attr.type == ir.AttributeType.INT
                            and attr.value in LOW_PRECISION
                        ):
                            node.attributes[name] = ir.AttrInt64(name, _FLOAT)
                            self.counts["attributes"] += 1

    def run(self) -> list[str]:
        self.interface()
        seen: set[int] = set()
        for graph in self.graphs:
            self.graph_body(graph, seen)
        self.function_dtype_references()
        changes = [
            f"{count} {what} FLOAT16/BFLOAT16 -> FLOAT"
            for what, count in (
                ("initializers/constants", self.counts["initializers"]),
                ("values retyped", self.counts["values"]),
                ("attributes", self.counts["attributes"]),
            )
            if count
        ]
        if not changes and not self.notes:
            return []
        return ["computes in float32 (exact upcast of float16/bfloat16)", *changes, *self.notes]


def compute_in_float32(model: ir.Model, source: str | None = None) -> list[str]:
    """Rewrite `model` in place to compute in float32 (see the module docstring).

    Returns one line per kind of change (the first says the model now computes in float32), including one
    line per graph input/output whose interface was kept (FLOAT16) or changed (BFLOAT16 -> FLOAT); `[]`
    when the model has no float16/bfloat16 anywhere (then nothing was touched) or was already rewritten.
    Raises `InputError` (its message prefixed with `source`, e.g. the file path, when given) for a BitCast
    that reinterprets float16/bfloat16 bits; the model is then unchanged.
    """
    rewrite = _Rewrite(model)
    for graph in rewrite.graphs:  # refuse before changing anything
        for node in graph:
            rewrite.check_bitcast(node, source)
    return rewrite.run()
