"""`intonly`: lower a quantized model to integer-only ops (issue 4; docs/methods/intonly.md).

The pass walks the float graph in order and rewrites it into a new node list (`Emitter`) in which every
tensor between the input quantizers and the output dequantizers is an integer. Each float value gets an
integer form (`IntValue`: codes q with v ≈ (q − z)·s + o) chosen by the rule that lowers its producer:

* graph inputs: QuantizeLinear at their QuantSpec, or a calibrated 22-bit grid (tagged input quantizer);
* linears → `IntLinear`; activation × activation MatMul → int32/int64 MatMul; patch Conv → patchify;
* Softmax → `IBertSoftmax` | `Shiftmax`; GELU → `IntGELU` | `ShiftGELU` (chosen per site by measured
  error, `variant_choice`); LayerNorm → `ILayerNorm`; residual adds → `IntAdd`;
* data movement, Concat, constant adds/multiplies (scale and offset bookkeeping), attention masks,
  pooling and L2 normalization;
* graph outputs: Cast(float)·S (+ o) (tagged output dequantizer).

Before lowering, shape-only float values are folded to constants and the grids no QuantSpec fixes are
calibrated (`ranges`). Any op without a rule stops the pass with an error naming the node and op:
nothing is left running in float silently. The pass is LOSSY against the float model; the integer graph
is checked bit for bit against `qcompile.intops.reference` in tests.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common

from qcompile.errors import InputError
from qcompile.ir import const_array, quant_meta
from qcompile.ir.properties import Property
from qcompile.passes.lowering.act_matmul_rule import lower_act_matmul
from qcompile.passes.lowering.affine_rule import lower_affine
from qcompile.passes.lowering.conv_rule import is_patch_conv, lower_patch_conv
from qcompile.passes.lowering.emitter import Emitter
from qcompile.passes.lowering.fold_shape_constants import fold_shape_constants
from qcompile.passes.lowering.gelu_rule import GELU_VARIANTS, lower_gelu, match_gelu
from qcompile.passes.lowering.int_value import IntValue, container, requantize_to
from qcompile.passes.lowering.linear_rule import lower_linear, match_linear
from qcompile.passes.lowering.mask_rule import lower_masked_scores, mask_keep_code
from qcompile.passes.lowering.norm_rule import lower_norm, norm_nodes
from qcompile.passes.lowering.ranges import (
    RESIDUAL_GRID,
    Ranges,
    calibrate_scales,
    is_residual_add,
    is_two_computed,
    values_needing_ranges,
)
from qcompile.passes.lowering.reduce_rule import (
    lower_clip,
    lower_divide,
    lower_product,
    lower_reduce_l2,
    lower_reduce_sum,
    reduced_count,
)
from qcompile.passes.lowering.residual_rule import lower_residual_add
from qcompile.passes.lowering.shape_rule import downstream_spec, is_data_movement, keeps_channels
from qcompile.passes.lowering.softmax_rule import SOFTMAX_VARIANTS, lower_softmax
from qcompile.passes.lowering.variant_choice import choose_variants
from qcompile.passes.transforms.residual_stream import find_norms
from qcompile.pipeline.context import PipelineContext
from qcompile.pipeline.pass_base import Numerics, Pass, PassResult
from qcompile.pipeline.registry import register_pass

__all__ = ["IntOnlyPass", "float_values", "float_ops"]

FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


ROLE_KEY = "qcompile.role"
OUTPUT_DEQUANTIZER = "output_dequantizer"
INPUT_QUANTIZER = "input_quantizer"
CONSTANT_GRID = 2**15 - 1
MAX_DYNAMIC_LENGTH = 2**16  # overflow bounds assume at most this many values along a dynamic axis


def _computes_float(node: ir.Node) -> bool:
    return node.metadata_props.get(ROLE_KEY) not in (OUTPUT_DEQUANTIZER, INPUT_QUANTIZER) and any(
        v.dtype in FLOAT_TYPES for v in node.outputs
    )


def float_ops(model: ir.Model) -> list[str]:
    """'name (op)' of every node computing a float tensor between the input quantizers and the output
    dequantizers (report.json's list of float ops remaining; empty after `intonly`)."""
    return [f"{node.name} ({node.op_type})" for node in model.graph if _computes_float(node)]


def float_values(model: ir.Model) -> list[str]:
    """Names of float tensors computed between the input quantizers and the output dequantizers: float
    outputs of every node not tagged (metadata_props, kept in the saved file) as one of them."""
    return [
        value.name
        for node in model.graph
        if _computes_float(node)
        for value in node.outputs
        if value.dtype in FLOAT_TYPES
    ]


class _Lowering:
    def __init__(
        self, model: ir.Model, scales: Ranges, softmax: str, softmax_bits: int, gelu: str, choices: dict
    ) -> None:
        self.model = model
        self.scales = scales
        self.softmax, self.softmax_bits, self.gelu = softmax, softmax_bits, gelu
        self.choices = choices
        self.norms = {}
        for norm in find_norms(model.graph):
            nodes = norm_nodes(norm)
            self.norms.update({id(n): (norm, nodes) for n in nodes})
        self.emit = Emitter(model)
        self.ints: dict[int, IntValue] = {}
        self.consumed: set[int] = set()
        self.replaced: dict[str, str] = {}  # value → its non-uniform QuantSpec the kernel's own grid replaced

    def input_codes(self, value: ir.Value) -> IntValue:
        """The integer form of a graph input: its QuantSpec applied by QuantizeLinear, or the calibrated
        symmetric 22-bit grid (Div, Round, Clip, Cast) when it feeds non-linear ops."""
        spec = quant_meta.get_quant(value)
        if spec is None and value.name in self.scales:
            return self.input_grid(value, self.scales[value.name])
        if spec is None or spec.kind != "uniform" or spec.axis is not None:
            raise InputError(f"pass 'intonly' needs a per-tensor uniform quantizer on graph input '{value.name}'")
        dtype = ir.DataType.INT8 if spec.signed else ir.DataType.UINT8
        container_dtype = np.int8 if spec.signed else np.uint8
        scale = self.emit.const(f"{value.name}_scale", np.float32(spec.scale))
        zero = self.emit.const(f"{value.name}_zero_point", container_dtype(spec.zero_point))
        codes = self.emit.node("QuantizeLinear", [value, scale, zero], f"{value.name}_q", dtype)
        if not spec.container_is_full:
            low = self.emit.const(f"{value.name}_qmin", container_dtype(spec.qmin))
            high = self.emit.const(f"{value.name}_qmax", container_dtype(spec.qmax))
            codes = self.emit.node("Clip", [codes, low, high], f"{value.name}_qc", dtype)
        return IntValue(codes, np.float64(spec.scale), int(spec.zero_point), spec.qmin, spec.qmax)

    def input_grid(self, value: ir.Value, scale: float) -> IntValue:
        start = len(self.emit.nodes)
        divided = self.emit.node(
            "Div",
            [value, self.emit.const(f"{value.name}_grid", np.float32(scale))],
            f"{value.name}_over_s",
            ir.DataType.FLOAT,
        )
        rounded = self.emit.node("Round", [divided], f"{value.name}_round", ir.DataType.FLOAT)
        bounds = [
            self.emit.const(f"{value.name}_lo", np.float32(-RESIDUAL_GRID)),
            self.emit.const(f"{value.name}_hi", np.float32(RESIDUAL_GRID)),
        ]
        clipped = self.emit.node("Clip", [rounded, *bounds], f"{value.name}_clip", ir.DataType.FLOAT)
        codes = self.emit.cast(clipped, container(-RESIDUAL_GRID, RESIDUAL_GRID), f"{value.name}_q")
        for node in self.emit.nodes[start:]:
            node.metadata_props[ROLE_KEY] = INPUT_QUANTIZER
        return IntValue(codes, np.float64(scale), 0, -RESIDUAL_GRID, RESIDUAL_GRID)

    def integer(self, value: ir.Value) -> IntValue:
        if id(value) not in self.ints:
            constant = const_array(value)
            if constant is not None and constant.dtype.kind == "f":
                self.ints[id(value)] = self.constant_int16(value, constant)
            elif value.producer() is None and value.const_value is None:
                self.ints[id(value)] = self.input_codes(value)
            else:
                raise InputError(f"pass 'intonly' has no integer form of '{value.name}'")
        return self.ints[id(value)]

    def constant_int16(self, value: ir.Value, array: np.ndarray) -> IntValue:
        """A float constant (an embedding table) on its own symmetric int16 grid (half the memory of the
        22-bit residual grid; it is requantized where it joins the stream)."""
        scale = max(float(np.abs(array).max(initial=0.0)), 1e-12) / CONSTANT_GRID
        codes = np.clip(np.rint(array.astype(np.float64) / scale), -CONSTANT_GRID, CONSTANT_GRID).astype(np.int16)
        return IntValue(
            self.emit.const(f"{value.name}_q16", codes), np.float64(scale), 0, -CONSTANT_GRID, CONSTANT_GRID
        )

    def regrid(self, source: IntValue, scale: float, zero_point: int, lo: int, hi: int, name: str) -> IntValue:
        """`source` on the grid (scale, zero point, [lo, hi]); unchanged if it is already there."""
        same = (
            source.plain
            and math.isclose(float(source.scale), float(scale), rel_tol=1e-9)
            and source.zero_point == zero_point
        )
        if same and lo <= source.lo and source.hi <= hi:
            return source
        return requantize_to(self.emit, source, scale, zero_point, lo, hi, name)

    def at_spec(self, value: ir.Value, spec: quant_meta.QuantSpec, name: str) -> IntValue:
        """`value`'s codes at its activation QuantSpec."""
        return self.regrid(self.integer(value), float(spec.scale), int(spec.zero_point), spec.qmin, spec.qmax, name)

    def on_grid(self, value: ir.Value, name: str) -> IntValue:
        """`value` as a plain integer (per tensor, positive scale, no offset or zero point): as it is, or
        re-gridded on its calibrated residual grid."""
        source = self.integer(value)
        if source.plain and not source.zero_point:
            return source
        if value.name not in self.scales:
            raise InputError(f"pass 'intonly' has no calibrated grid for '{value.name}'")
        return requantize_to(
            self.emit, source, self.scales[value.name], 0, -RESIDUAL_GRID, RESIDUAL_GRID, f"{name}_grid"
        )

    def lower_node(self, node: ir.Node) -> None:
        if node.op_type == "Constant" and node.outputs[0].dtype in FLOAT_TYPES:
            return  # float constants are read by the rules (scales, offsets, int16 tables), never emitted
        match = match_linear(node)
        if match is not None:
            name = node.name or match.output.name
            spec = quant_meta.get_quant(match.x)
            if spec is None or spec.kind != "uniform" or spec.axis is not None:
                raise InputError(
                    f"pass 'intonly': input '{match.x.name}' of linear '{name}' has no per-tensor uniform quantizer"
                )
            x = self.at_spec(match.x, spec, f"{name}_x")
            self.ints[id(match.output)] = lower_linear(match, x, self.emit, name)
            self.consumed.update(id(n) for n in match.nodes)
            return
        if id(node) in self.norms:
            norm, nodes = self.norms[id(node)]
            name = norm.name or norm.output.name
            self.ints[id(norm.output)] = lower_norm(self.emit, norm, self.on_grid(norm.input, name), name)
            self.consumed.update(id(n) for n in nodes)
            return
        if is_patch_conv(node):
            name = node.name or node.outputs[0].name
            self.ints[id(node.outputs[0])] = lower_patch_conv(
                self.emit, node, self.integer(node.inputs[0]), self.scales[node.outputs[0].name], name
            )
            return
        if node.op_type == "Concat" and node.domain in ("", "ai.onnx") and node.outputs[0].dtype == ir.DataType.FLOAT:
            self.lower_concat(node)
            return
        if is_residual_add(node):
            name = node.name or node.outputs[0].name
            a, b = self.integer(node.inputs[0]), self.integer(node.inputs[1])
            masked = self.masked_scores(node, a, b, name)
            if masked is not None:
                self.ints[id(node.outputs[0])] = masked
                return
            self.ints[id(node.outputs[0])] = lower_residual_add(
                self.emit, a, b, self.scales[node.outputs[0].name], name
            )
            return
        gelu = match_gelu(node)
        if gelu is not None:
            variant = self.choices["gelu"].get(gelu.output.name, {}).get("choice", self.gelu)
            self.ints[id(gelu.output)] = lower_gelu(
                self.emit, gelu, self.integer(gelu.x), variant, node.name or gelu.output.name
            )
            self.consumed.update(id(n) for n in gelu.nodes)
            return
        affine = lower_affine(node, self.integer)
        if affine is not None:
            bounds = self.scales.bounds.get(node.outputs[0].name)
            if node.op_type == "Cast" and bounds is not None:  # an integer input's calibrated range (a 0/1 mask)
                affine = dataclasses.replace(affine, lo=math.floor(bounds[0]), hi=math.ceil(bounds[1]))
            self.ints[id(node.outputs[0])] = affine
            return
        if is_data_movement(node):
            self.lower_data_movement(node)
            return
        if self.lower_reduction(node):
            return
        if node.op_type == "Softmax" and node.domain in ("", "ai.onnx"):
            self.lower_softmax(node)
            return
        if (
            node.op_type == "MatMul"
            and node.domain in ("", "ai.onnx")
            and all(const_array(v) is None for v in node.inputs)
        ):
            self.lower_act_matmul(node)
            return
        if not any(v.dtype in FLOAT_TYPES or v.dtype is None for v in node.outputs):
            self.lower_integer_node(node)
            return
        raise InputError(f"pass 'intonly' cannot lower node '{node.name}' ({node.op_type}): no integer rule for it yet")

    def lower_concat(self, node: ir.Node) -> None:
        """Concat of float tensors: every part requantized to the output's calibrated grid."""
        name = node.name or node.outputs[0].name
        grid = self.scales[node.outputs[0].name]
        dtype = container(-RESIDUAL_GRID, RESIDUAL_GRID)
        parts = []
        for index, value in enumerate(node.inputs):
            source = self.regrid(self.integer(value), grid, 0, -RESIDUAL_GRID, RESIDUAL_GRID, f"{name}_part{index}")
            parts.append(self.emit.cast(source.value, dtype, f"{name}_part{index}_cast"))
        out = self.emit.node(
            "Concat", parts, f"{node.outputs[0].name}_q", dtype, axis=node.attributes.get_int("axis", 0)
        )
        self.ints[id(node.outputs[0])] = IntValue(out, np.float64(grid), 0, -RESIDUAL_GRID, RESIDUAL_GRID)

    def masked_scores(self, node: ir.Node, a: IntValue, b: IntValue, name: str) -> IntValue | None:
        """Scores plus an additive attention mask, when the sum feeds only a Softmax (`mask_rule`)."""
        uses = list(node.outputs[0].uses())
        if len(uses) != 1 or uses[0].node.op_type != "Softmax":
            return None
        for scores, mask in ((a, b), (b, a)):
            keep = mask_keep_code(mask)
            if keep is not None and scores.plain:
                return lower_masked_scores(self.emit, scores, mask, keep, name)
        return None

    def lower_reduction(self, node: ir.Node) -> bool:
        """Pooling and normalization ops (`reduce_rule`); False if `node` is none of them."""
        if node.domain not in ("", "ai.onnx"):
            return False
        name = node.name or node.outputs[0].name
        out = id(node.outputs[0])
        if node.op_type in ("Mul", "Div") and is_two_computed(node):
            a, b = self.on_grid(node.inputs[0], f"{name}_a"), self.on_grid(node.inputs[1], f"{name}_b")
            if node.op_type == "Mul":
                self.ints[out] = lower_product(self.emit, a, b, name)
            else:
                bounds = self.scales.bounds.get(node.outputs[0].name)
                out_max = None if bounds is None else max(abs(bounds[0]), abs(bounds[1]))
                self.ints[out] = lower_divide(self.emit, a, b, name, out_max)
        elif node.op_type == "ReduceSum":
            self.ints[out] = lower_reduce_sum(
                self.emit, node, self.on_grid(node.inputs[0], name), reduced_count(node, MAX_DYNAMIC_LENGTH), name
            )
        elif node.op_type == "ReduceL2":
            self.ints[out] = lower_reduce_l2(
                self.emit, node, self.on_grid(node.inputs[0], name), reduced_count(node, MAX_DYNAMIC_LENGTH), name
            )
        elif node.op_type == "Clip" and node.inputs[0].dtype == ir.DataType.FLOAT:
            self.ints[out] = lower_clip(self.emit, node, self.on_grid(node.inputs[0], name), name)
        else:
            return False
        return True

    def operand(self, value: ir.Value, name: str) -> IntValue:
        """A plain integer form of `value`: at its QuantSpec if it has one, else as lowered."""
        spec = quant_meta.get_quant(value)
        if spec is not None and spec.kind == "uniform" and spec.axis is None:
            return self.at_spec(value, spec, name)
        if spec is not None:
            # e.g. RepQ-ViT's log√2 quantizer on attention probabilities: the integer softmax's own
            # 16-bit uniform grid is finer than it, and is used as it is (reported in the stats)
            self.replaced[value.name] = spec.kind if spec.axis is None else f"{spec.kind} per axis {spec.axis}"
        source = self.integer(value)
        if not source.plain:
            raise InputError(f"pass 'intonly' needs a per-tensor quantizer on '{value.name}'")
        return source

    def lower_data_movement(self, node: ir.Node) -> None:
        name = node.name or node.outputs[0].name
        source = self.integer(node.inputs[0])
        if not source.movable and not keeps_channels(node):
            found = downstream_spec(node.inputs[0])
            if found is None:
                raise InputError(
                    f"pass 'intonly' cannot move per-channel '{node.inputs[0].name}' through '{name}' "
                    f"({node.op_type}): no per-tensor quantizer downstream"
                )
            spec, factor = found
            source = requantize_to(
                self.emit, source, float(spec.scale) / factor, int(spec.zero_point), spec.qmin, spec.qmax, f"{name}_in"
            )
        attributes = {key: attr.value for key, attr in node.attributes.items()}
        out = self.emit.node(
            node.op_type,
            [source.value, *node.inputs[1:]],
            f"{node.outputs[0].name}_q",
            source.value.dtype,
            **attributes,
        )
        self.ints[id(node.outputs[0])] = dataclasses.replace(source, value=out, row_sum=None)  # rows may move

    def lower_act_matmul(self, node: ir.Node) -> None:
        name = node.name or node.outputs[0].name
        a, b = self.operand(node.inputs[0], f"{name}_a"), self.operand(node.inputs[1], f"{name}_b")
        depth = node.inputs[0].shape[-1] if node.inputs[0].shape is not None else None
        depth = depth if isinstance(depth, int) else MAX_DYNAMIC_LENGTH
        self.ints[id(node.outputs[0])] = lower_act_matmul(self.emit, a, b, depth, name)

    def lower_softmax(self, node: ir.Node) -> None:
        name = node.name or node.outputs[0].name
        x = node.inputs[0]
        rank = len(x.shape) if x.shape is not None else None
        axis = node.attributes.get_int("axis", -1)
        length = x.shape[-1] if x.shape is not None else None
        if not (axis == -1 or (rank is not None and axis == rank - 1)):
            raise InputError(f"pass 'intonly' lowers Softmax over the last axis only ('{name}')")
        length = length if isinstance(length, int) else MAX_DYNAMIC_LENGTH
        source = self.integer(x)
        if not source.plain:
            raise InputError(f"pass 'intonly' needs a per-tensor scale on the input of '{name}' (Softmax)")
        variant = self.choices["softmax"].get(node.outputs[0].name, {}).get("choice", self.softmax)
        self.ints[id(node.outputs[0])] = lower_softmax(self.emit, source, length, variant, self.softmax_bits, name)

    def lower_integer_node(self, node: ir.Node) -> None:
        """A node computing no float tensor (shape arithmetic): moved as it is, float inputs read as integers
        (Shape of the integer tensor is the same shape)."""
        if node.op_type != "Shape" and any(v is not None and v.dtype in FLOAT_TYPES for v in node.inputs):
            raise InputError(
                f"pass 'intonly' cannot lower node '{node.name}' ({node.op_type}): it reads a float tensor"
            )
        for index, value in enumerate(node.inputs):
            if value is not None and value.dtype in FLOAT_TYPES:
                node.replace_input_with(index, self.integer(value).value)
        self.emit.nodes.append(node)

    def dequantize_output(self, value: ir.Value) -> ir.Value:
        """Cast(float) [− z] · S, each node tagged as the output dequantizer."""
        source = self.integer(value)
        start = len(self.emit.nodes)
        out = self.emit.cast(source.value, ir.DataType.FLOAT, f"{value.name}_float")
        if source.zero_point:
            out = self.emit.node(
                "Sub",
                [out, self.emit.const(f"{value.name}_zp", np.float32(source.zero_point))],
                f"{value.name}_centred",
                ir.DataType.FLOAT,
            )
        out = self.emit.node(
            "Mul",
            [out, self.emit.const(f"{value.name}_out_scale", np.asarray(source.scale, np.float32))],
            f"{value.name}_dq",
            ir.DataType.FLOAT,
        )
        if source.offset is not None:
            out = self.emit.node(
                "Add",
                [out, self.emit.const(f"{value.name}_out_offset", np.asarray(source.offset, np.float32))],
                f"{value.name}_dq_offset",
                ir.DataType.FLOAT,
            )
        for node in self.emit.nodes[start:]:
            node.metadata_props[ROLE_KEY] = OUTPUT_DEQUANTIZER
        return out

    def run(self) -> dict:
        graph = self.model.graph
        for node in list(graph):
            if id(node) not in self.consumed:
                self.lower_node(node)
        new_outputs = []
        for output in graph.outputs:
            dequantized = self.dequantize_output(output)
            new_outputs.append((output, dequantized))
        for node in reversed(list(graph)):
            graph.remove(node, safe=False)  # nodes moved into the integer graph are re-added below
        graph.extend(self.emit.nodes)
        for index, (old, new) in enumerate(new_outputs):
            new.shape = old.shape
            name = old.name
            old.name = f"{name}_float_model"
            new.name = name
            graph.outputs[index] = new
        for name, value in list(graph.initializers.items()):
            if not value.uses():
                graph.initializers.pop(name)
        kernels = sorted({n.op_type for n in self.emit.nodes if n.domain == "qcompile"})
        return {"nodes": len(self.emit.nodes), "kernels": kernels, "replaced_quantizers": self.replaced}


def _drop_unread_initializers(model: ir.Model) -> int:
    """Remove the initializers no node of the graph (or its subgraphs) reads — the float weights the
    integer codes replaced. Their values still list the replaced nodes as users (detached, not
    destroyed), so `RemoveUnusedNodesPass` keeps them; liveness is judged from the graph's nodes."""
    live = {id(node) for node in ir.traversal.RecursiveGraphIterator(model.graph)}
    outputs = {id(v) for v in model.graph.outputs} | {id(v) for v in model.graph.inputs}
    dead = [
        name
        for name, value in model.graph.initializers.items()
        if id(value) not in outputs and not any(id(use.node) in live for use in value.uses())
    ]
    for name in dead:
        del model.graph.initializers[name]
    return len(dead)


@register_pass("intonly")
class IntOnlyPass(Pass):
    """Lower the quantized graph to integer-only ops (`qcompile` kernels); fails on any op it cannot lower."""

    requires = frozenset({Property.QUANTIZED})
    establishes = frozenset({Property.INTEGER_ONLY})
    numerics = Numerics.LOSSY

    def __init__(
        self, softmax: str = "auto", softmax_bits: int = 16, gelu: str = "auto", context: PipelineContext | None = None
    ) -> None:
        self.context = context or PipelineContext()
        if gelu not in (*GELU_VARIANTS, "auto"):
            raise ValueError(f"gelu must be one of {', '.join(GELU_VARIANTS)}, auto; got {gelu}")
        if softmax not in (*SOFTMAX_VARIANTS, "auto"):
            raise ValueError(f"softmax must be one of {', '.join(SOFTMAX_VARIANTS)}, auto; got {softmax}")
        if not 8 <= int(softmax_bits) <= 16:
            raise ValueError(f"softmax_bits must be in 8..16, got {softmax_bits}")
        self.softmax, self.gelu = softmax, gelu
        self.softmax_bits = int(softmax_bits)

    def call(self, model: ir.Model) -> PassResult:
        ir.passes.common.ShapeInferencePass()(model)  # dtypes decide what is float; unknown counts as float
        folded = fold_shape_constants(model)
        scales = calibrate_scales(model, values_needing_ranges(model), self.context)
        softmax_nodes = (
            [n for n in model.graph if n.op_type == "Softmax" and n.domain in ("", "ai.onnx")]
            if self.softmax == "auto"
            else []
        )
        gelus = [m for n in model.graph if (m := match_gelu(n)) is not None] if self.gelu == "auto" else []
        choices = choose_variants(model, self.context, softmax_nodes, gelus, self.softmax_bits)
        # without calibration data "auto" means I-BERT's softmax and the GELU table (the more accurate ones
        # on every site measured, docs/methods/intonly.md)
        softmax = "ibert" if self.softmax == "auto" else self.softmax
        gelu = "table" if self.gelu == "auto" else self.gelu
        stats = _Lowering(model, scales, softmax, self.softmax_bits, gelu, choices).run()
        stats["variants"] = {kind: {site: c["choice"] for site, c in sites.items()} for kind, sites in choices.items()}
        stats["variant_mse"] = {kind: {site: c["mse"] for site, c in sites.items()} for kind, sites in choices.items()}
        stats["folded_shape_constants"] = folded
        stats["removed_initializers"] = _drop_unread_initializers(model)
        stats["float_values"] = float_values(model)
        stats["float_ops"] = float_ops(model)
        return PassResult(model, modified=True, stats=stats)
