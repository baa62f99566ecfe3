"""Evaluate a slice of an onnx_ir graph with PyTorch: differentiable, so passes can train on the IR itself.

`TorchEvaluator(nodes, inputs, functions)` runs `nodes` (in graph order, e.g. `gptq_blocks.block_nodes`)
from tensors bound to `inputs`; constants (initializers, `Constant` nodes) become torch tensors once and are
cached. Two hooks let a pass put trainable arithmetic into the graph without rewriting it:

* `overrides[id(node)] = f(node, input_tensors) -> output_tensors` replaces one node's computation
  (a linear with transformed, fake-quantized weights);
* `value_hooks[id(value)] = f(tensor) -> tensor` rewrites a value right after it is produced (an online
  transform followed by a fake quantizer on a linear's input).

Float tensors are computed in `dtype` (float32 by default); integer tensors (shapes, indices) stay int64.
Model-local functions (`qcompile.KroneckerRotate` …) are evaluated by running their bodies. The op set is
what transformer exports use (Llama-family dynamo exports: 25 op types); anything else raises
NotImplementedError naming the op, so a caller can report which model it cannot train on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx_ir as ir
import torch

__all__ = ["TorchEvaluator", "Override", "ValueHook", "torch_dtype"]

Override = Callable[[ir.Node, list], list]
ValueHook = Callable[[torch.Tensor], torch.Tensor]

_INT64_MAX = np.iinfo(np.int64).max

_DTYPES = {
    ir.DataType.FLOAT: torch.float32,
    ir.DataType.DOUBLE: torch.float64,
    ir.DataType.FLOAT16: torch.float16,
    ir.DataType.BFLOAT16: torch.bfloat16,
    ir.DataType.INT64: torch.int64,
    ir.DataType.INT32: torch.int32,
    ir.DataType.INT8: torch.int8,
    ir.DataType.UINT8: torch.uint8,
    ir.DataType.BOOL: torch.bool,
}


def torch_dtype(dtype: ir.DataType, float_dtype: torch.dtype = torch.float32) -> torch.dtype:
    """The torch dtype computing an ONNX dtype here (every float type computes in `float_dtype`)."""
    if dtype.is_floating_point():
        return float_dtype
    if dtype not in _DTYPES:
        raise NotImplementedError(f"tensors of type {dtype} are not supported by the torch evaluator")
    return _DTYPES[dtype]


def _ints(tensor: torch.Tensor) -> list[int]:
    return [int(v) for v in tensor.reshape(-1).tolist()]


def _axes(node: ir.Node, inputs: list, index: int) -> list[int] | None:
    """Axes given as input `index` (opset ≥ 13/18) or as the `axes` attribute (older opsets)."""
    if len(inputs) > index and inputs[index] is not None:
        return _ints(inputs[index])
    attribute = node.attributes.get("axes")
    return list(attribute.as_ints()) if attribute is not None else None


def _reduce(node: ir.Node, inputs: list, reducer: Callable) -> torch.Tensor:
    x = inputs[0]
    axes = _axes(node, inputs, 1)
    keep = bool(node.attributes.get_int("keepdims", 1))
    if not axes:
        if node.attributes.get_int("noop_with_empty_axes", 0):
            return x
        axes = list(range(x.dim()))
    return reducer(x, dim=[a % x.dim() for a in axes], keepdim=keep)


def _reshape(node: ir.Node, inputs: list) -> torch.Tensor:
    x, shape = inputs[0], _ints(inputs[1])
    if not node.attributes.get_int("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _slice(node: ir.Node, inputs: list) -> torch.Tensor:
    x = inputs[0]
    starts, ends = _ints(inputs[1]), _ints(inputs[2])
    axes = _ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else list(range(len(starts)))
    steps = _ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    index: list = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        size = x.shape[axis]
        if step < 0:
            raise NotImplementedError("Slice with a negative step is not supported by the torch evaluator")
        start = max(0, min(size, start + size if start < 0 else start))
        end = size if end >= _INT64_MAX // 2 else max(0, min(size, end + size if end < 0 else end))
        index[axis % x.dim()] = slice(start, end, step)
    return x[tuple(index)]


def _unsqueeze(node: ir.Node, inputs: list) -> torch.Tensor:
    x, axes = inputs[0], _axes(node, inputs, 1)
    rank = x.dim() + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = x.unsqueeze(axis)
    return x


def _squeeze(node: ir.Node, inputs: list) -> torch.Tensor:
    x, axes = inputs[0], _axes(node, inputs, 1)
    if axes is None:
        return x.squeeze()
    for axis in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(axis)
    return x


def _gemm(node: ir.Node, inputs: list) -> torch.Tensor:
    a, b = inputs[0], inputs[1]
    if node.attributes.get_int("transA", 0):
        a = a.transpose(-1, -2)
    if node.attributes.get_int("transB", 0):
        b = b.transpose(-1, -2)
    y = node.attributes.get_float("alpha", 1.0) * (a @ b)
    if len(inputs) > 2 and inputs[2] is not None:
        y = y + node.attributes.get_float("beta", 1.0) * inputs[2]
    return y


def _shape(node: ir.Node, inputs: list) -> torch.Tensor:
    dims = list(inputs[0].shape)
    start = node.attributes.get_int("start", 0)
    end = node.attributes.get_int("end", len(dims))
    return torch.tensor(dims[slice(start, end)], dtype=torch.int64)


def _expand(node: ir.Node, inputs: list) -> torch.Tensor:
    x, shape = inputs[0], _ints(inputs[1])
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(shape)))


def _gather(node: ir.Node, inputs: list) -> torch.Tensor:
    x, indices = inputs[0], inputs[1].long()
    axis = node.attributes.get_int("axis", 0) % x.dim()
    indices = torch.where(indices < 0, indices + x.shape[axis], indices)
    flat = torch.index_select(x, axis, indices.reshape(-1))
    return flat.reshape(*x.shape[:axis], *indices.shape, *x.shape[axis + 1 :])


def _range(node: ir.Node, inputs: list) -> torch.Tensor:
    start, limit, delta = (t.item() for t in inputs)
    return torch.arange(start, limit, delta, dtype=inputs[0].dtype)


def _softmax(node: ir.Node, inputs: list) -> torch.Tensor:
    return torch.softmax(inputs[0], dim=node.attributes.get_int("axis", -1))


def _transpose(node: ir.Node, inputs: list) -> torch.Tensor:
    x = inputs[0]
    perm = node.attributes.get("perm")
    return x.permute(list(perm.as_ints()) if perm is not None else list(reversed(range(x.dim()))))


def _binary(f: Callable) -> Callable:
    return lambda node, inputs: f(inputs[0], inputs[1])


def _unary(f: Callable) -> Callable:
    return lambda node, inputs: f(inputs[0])


def _variadic(f: Callable) -> Callable:
    def apply(node: ir.Node, inputs: list) -> torch.Tensor:
        out = inputs[0]
        for other in inputs[1:]:
            out = f(out, other)
        return out

    return apply


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


_OPS: dict[str, Callable[[ir.Node, list], torch.Tensor]] = {
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _binary(_div),
    "Pow": _binary(torch.pow),
    "MatMul": _binary(torch.matmul),
    "Equal": _binary(torch.eq),
    "Less": _binary(torch.lt),
    "LessOrEqual": _binary(torch.le),
    "Greater": _binary(torch.gt),
    "GreaterOrEqual": _binary(torch.ge),
    "And": _binary(torch.logical_and),
    "Or": _binary(torch.logical_or),
    "Max": _variadic(torch.maximum),
    "Min": _variadic(torch.minimum),
    "Neg": _unary(torch.neg),
    "Sqrt": _unary(torch.sqrt),
    "Reciprocal": _unary(torch.reciprocal),
    "Sigmoid": _unary(torch.sigmoid),
    "Tanh": _unary(torch.tanh),
    "Erf": _unary(torch.erf),
    "Exp": _unary(torch.exp),
    "Log": _unary(torch.log),
    "Abs": _unary(torch.abs),
    "Relu": _unary(torch.relu),
    "Cos": _unary(torch.cos),
    "Sin": _unary(torch.sin),
    "Not": _unary(torch.logical_not),
    "Identity": _unary(lambda x: x),
    "Where": lambda node, inputs: torch.where(inputs[0], inputs[1], inputs[2]),
    "Gemm": _gemm,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Slice": _slice,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Expand": _expand,
    "Gather": _gather,
    "Range": _range,
    "Shape": _shape,
    "Softmax": _softmax,
    "Concat": lambda node, inputs: torch.cat(
        [t for t in inputs if t is not None and t.numel() > 0] or [inputs[0]], dim=node.attributes.get_int("axis", 0)
    ),
    "ReduceMean": lambda node, inputs: _reduce(node, inputs, torch.mean),
    "ReduceSum": lambda node, inputs: _reduce(node, inputs, torch.sum),
    "ReduceMax": lambda node, inputs: _reduce(node, inputs, torch.amax),
    "ReduceMin": lambda node, inputs: _reduce(node, inputs, torch.amin),
}


class TorchEvaluator:
    """Runs `nodes` with torch from tensors bound to `inputs` (module docstring)."""

    def __init__(
        self,
        nodes: Sequence[ir.Node],
        inputs: Sequence[ir.Value],
        functions: Mapping[ir.OperatorIdentifier, ir.Function] | None = None,
        overrides: Mapping[int, Override] | None = None,
        value_hooks: Mapping[int, ValueHook] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.nodes = list(nodes)
        self.inputs = list(inputs)
        self.functions = dict(functions or {})
        self.overrides = dict(overrides or {})
        self.value_hooks = dict(value_hooks or {})
        self.dtype = dtype
        self._constants: dict[int, torch.Tensor] = {}

    def constant(self, value: ir.Value) -> torch.Tensor:
        """The cached torch tensor of a constant value."""
        key = id(value)
        if key not in self._constants:
            self._constants[key] = self._tensor(value.const_value.numpy())
        return self._constants[key]

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        array = np.asarray(array)
        if np.issubdtype(array.dtype, np.floating):
            return torch.from_numpy(np.array(array, dtype=np.float64)).to(self.dtype)
        if array.dtype == np.bool_:
            return torch.from_numpy(np.array(array))
        return torch.from_numpy(np.array(array, dtype=np.int64))

    def run(self, feeds: Sequence[torch.Tensor], outputs: Sequence[ir.Value]) -> list[torch.Tensor]:
        """The tensors of `outputs`, with `feeds[i]` bound to `inputs[i]`."""
        env: dict[int, torch.Tensor] = {id(v): t for v, t in zip(self.inputs, feeds)}
        for value, tensor in zip(self.inputs, feeds):
            hook = self.value_hooks.get(id(value))
            if hook is not None:
                env[id(value)] = hook(tensor)
        for node in self.nodes:
            args = [self._lookup(env, v) for v in node.inputs]
            override = self.overrides.get(id(node))
            results = override(node, args) if override is not None else self.apply(node, args)
            for value, tensor in zip(node.outputs, results):
                hook = self.value_hooks.get(id(value))
                env[id(value)] = hook(tensor) if hook is not None else tensor
        return [self._lookup(env, v) for v in outputs]

    def _lookup(self, env: dict[int, torch.Tensor], value: ir.Value | None) -> torch.Tensor | None:
        if value is None:
            return None
        if id(value) in env:
            return env[id(value)]
        if value.const_value is not None:
            return self.constant(value)
        raise KeyError(f"value '{value.name}' is neither computed, fed nor constant")

    def apply(self, node: ir.Node, args: list) -> list[torch.Tensor]:
        """The standard computation of `node` on `args` (what an override can fall back to)."""
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            return [self._tensor(node.attributes["value"].as_tensor().numpy())]
        if node.op_type == "Cast" and node.domain in ("", "ai.onnx"):
            return [args[0].to(torch_dtype(ir.DataType(node.attributes.get_int("to")), self.dtype))]
        if node.op_type == "ConstantOfShape" and node.domain in ("", "ai.onnx"):
            attribute = node.attributes.get("value")
            fill = self._tensor(attribute.as_tensor().numpy()) if attribute is not None else torch.zeros(1)
            return [fill.reshape(-1)[:1].expand(_ints(args[0])).clone()]
        function = self.functions.get(node.op_identifier())
        if function is not None:
            body = TorchEvaluator(list(function.graph), function.inputs, self.functions, dtype=self.dtype)
            return body.run(args, function.outputs)
        if node.domain not in ("", "ai.onnx") or node.op_type not in _OPS:
            raise NotImplementedError(
                f"op {node.domain or 'ai.onnx'}::{node.op_type} is not supported by the torch evaluator"
            )
        return [_OPS[node.op_type](node, args)]
