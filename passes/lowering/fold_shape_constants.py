"""Fold float values that depend on the inputs only through their static shape into constants.

Legacy ViT exports recompute the position-embedding grid on every run: Shape(image) → Gather(H, W) →
Cast → Div → Resize(bicubic) of the stored grid. For a fixed input size that is a constant, but it is
float arithmetic the integer lowering cannot (and need not) reproduce.

A value is *data-dependent* if it is a graph input or computed from one, except through `Shape` (whose
output depends on the shape only). Every float value computed without data dependence but read by a
data-dependent node is evaluated with ONNX Runtime on zero inputs at two sizes of every dynamic dim (1 and
2); where both evaluations agree it is replaced by an initializer holding that value (values that change
with the batch size, e.g. an Expand to the batch, stay). Static dims are taken as declared, so the folded
model is valid for inputs of that size, which is what the exporter declared. The fold is EXACT.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.ir import const_array

__all__ = ["fold_shape_constants"]


def _data_dependent(model: ir.Model) -> set[int]:
    dependent = {id(v) for v in model.graph.inputs}
    for node in model.graph:
        if node.op_type == "Shape":
            continue
        if any(v is not None and id(v) in dependent for v in node.inputs):
            dependent.update(id(o) for o in node.outputs)
    return dependent


def _frontier(model: ir.Model, dependent: set[int]) -> list[ir.Value]:
    """Float values computed without data dependence that a data-dependent node reads."""
    found: dict[int, ir.Value] = {}
    for node in model.graph:
        if not any(id(o) in dependent for o in node.outputs):
            continue
        for value in node.inputs:
            if value is None or id(value) in dependent or value.producer() is None or const_array(value) is not None:
                continue
            if value.dtype == ir.DataType.FLOAT:
                found.setdefault(id(value), value)
    return list(found.values())


def _feeds(model: ir.Model, dynamic: int) -> dict[str, np.ndarray]:
    feeds = {}
    for value in model.graph.inputs:
        shape = [d if isinstance(d, int) else dynamic for d in (value.shape or [])]
        feeds[value.name] = np.zeros(shape, dtype=value.dtype.numpy())
    return feeds


def fold_shape_constants(model: ir.Model) -> list[str]:
    """Fold in place; returns the names of the values replaced by constants."""
    from qcompile import runtime

    values = _frontier(model, _data_dependent(model))
    if not values:
        return []
    names = [v.name for v in values]
    session = runtime.make_session(runtime.with_outputs(model, names), optimize=False)
    once, twice = runtime.run(session, _feeds(model, 1), names), runtime.run(session, _feeds(model, 2), names)
    folded = []
    for value in values:
        first, second = once[value.name], twice[value.name]
        if first.shape != second.shape or not np.array_equal(first, second):
            continue
        constant = ir.Value(name=f"{value.name}_folded", const_value=ir.tensor(first, name=f"{value.name}_folded"))
        constant.dtype, constant.shape = value.dtype, ir.Shape(first.shape)
        model.graph.register_initializer(constant)
        ir.convenience.replace_all_uses_with(value, constant)
        folded.append(value.name)
    for node in reversed(list(model.graph)):
        if not any(o.uses() for o in node.outputs) and not any(o in model.graph.outputs for o in node.outputs):
            model.graph.remove(node, safe=True)
    return folded
