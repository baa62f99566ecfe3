"""`intonly`: lower a quantized model to integer-only ops (issue 4; docs/methods/intonly.md).

The pass walks the float graph in order and rewrites it into a new node list (`Emitter`) in which every
tensor between the input quantizers and the output dequantizers is an integer. Each float value gets an
integer form (`IntValue`: codes q with v ≈ (q − z)·s + o) chosen by the rule that lowers its producer.
The rules form an ordered table (`rule_table.RULES`), each with match / check-with-reason / rewrite
(`rule_base`):

* graph inputs: QuantizeLinear at their QuantSpec, or a calibrated 22-bit grid (tagged input quantizer);
* nodes with only integer or boolean outputs (shapes, positions, mask comparisons): kept as they are;
* linears → `IntLinear`; activation × activation MatMul → int32/int64 MatMul; patch Conv → patchify;
* Softmax → `IBertSoftmax` | `Shiftmax`; GELU → `Lookup` | `IntGELU` | `ShiftGELU` (chosen per site by
  measured error, `variant_choice`); LayerNorm → `ILayerNorm`; residual adds → `IntAdd`;
* data movement, Concat, constant adds/multiplies and selects between constants (scale and offset
  bookkeeping), attention masks, pooling and L2 normalization;
* graph outputs: float ones Cast(float)·S (+ o) (tagged output dequantizer); integer ones (an input
  re-emitted through Identity) pass through unchanged.

Before lowering, equivalent float forms are canonicalized (`canonicalize`: a GELU whose ×0.5 was folded
into the next weight), shape-only float values are folded to constants and the grids no QuantSpec fixes
are calibrated (`ranges`). A node no rule lowers stops the pass with an error naming the node, its op and
each rule's reason: nothing is left running in float silently. The pass is LOSSY against the float
model; the integer graph is checked bit for bit against `qcompile.intops.reference` in tests.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common

from qcompile.errors import InputError
from qcompile.ir import const_array, quant_meta
from qcompile.ir.properties import Property
from qcompile.passes.lowering.canonicalize import canonicalize
from qcompile.passes.lowering.emitter import Emitter
from qcompile.passes.lowering.fold_shape_constants import fold_shape_constants
from qcompile.passes.lowering.gelu_rule import GELU_VARIANTS, match_gelu
from qcompile.passes.lowering.int_value import IntValue, container, requantize_to
from qcompile.passes.lowering.integer_rule import FLOAT_TYPES
from qcompile.passes.lowering.norm_rule import norm_nodes
from qcompile.passes.lowering.ranges import RESIDUAL_GRID, Ranges, calibrate_scales, values_needing_ranges
from qcompile.passes.lowering.rule_base import lower_with
from qcompile.passes.lowering.rule_table import RULES
from qcompile.passes.lowering.softmax_rule import SOFTMAX_VARIANTS
from qcompile.passes.lowering.variant_choice import choose_variants
from qcompile.passes.transforms.residual_stream import find_norms
from qcompile.pipeline.context import PipelineContext
from qcompile.pipeline.pass_base import Numerics, Pass, PassResult
from qcompile.pipeline.registry import register_pass

__all__ = ["IntOnlyPass", "float_values", "float_ops"]

ROLE_KEY = "qcompile.role"
OUTPUT_DEQUANTIZER = "output_dequantizer"
INPUT_QUANTIZER = "input_quantizer"
CONSTANT_GRID = 2**15 - 1


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
    """The lowering state the rules read and write (`rule_base.LoweringContext`): the emitter, the integer
    form of every float value lowered so far, the calibrated grids and the per-site variant choices, and
    the conversions between integer forms (`integer`, `at_spec`, `on_grid`, `regrid`, `operand`)."""

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
        self.applied: dict[str, int] = {}  # rule name → nodes it lowered

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
        rule = lower_with(RULES, self, node)
        self.applied[rule] = self.applied.get(rule, 0) + 1

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
            if output.dtype is not None and output.dtype not in FLOAT_TYPES:
                continue  # an integer output (an input re-emitted through Identity, a mask) passes through
            new_outputs.append((output, self.dequantize_output(output)))
        for node in reversed(list(graph)):
            graph.remove(node, safe=False)  # nodes moved into the integer graph are re-added below
        graph.extend(self.emit.nodes)
        positions = {id(v): index for index, v in enumerate(graph.outputs)}
        for old, new in new_outputs:
            new.shape = old.shape
            name = old.name
            old.name = f"{name}_float_model"
            new.name = name
            graph.outputs[positions[id(old)]] = new
        for name, value in list(graph.initializers.items()):
            if not value.uses():
                graph.initializers.pop(name)
        kernels = sorted({n.op_type for n in self.emit.nodes if n.domain == "qcompile"})
        return {
            "nodes": len(self.emit.nodes),
            "kernels": kernels,
            "replaced_quantizers": self.replaced,
            "rules": dict(sorted(self.applied.items())),
        }


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
        canonical = canonicalize(model)
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
        stats["canonicalized"] = canonical
        stats["folded_shape_constants"] = folded
        stats["removed_initializers"] = _drop_unread_initializers(model)
        stats["float_values"] = float_values(model)
        stats["float_ops"] = float_ops(model)
        return PassResult(model, modified=True, stats=stats)
