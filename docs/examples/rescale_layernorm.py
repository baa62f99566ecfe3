"""Example plugin: move a factor k from every LayerNormalization's affine into its MatMul consumers.

    LN(x; γ, β) @ W  ==  LN(x; kγ, kβ) @ (W / k)        (exact in real arithmetic)

The rewrite is the skeleton of SmoothQuant's scale folding with one scalar instead of a vector. It is
declared EXACT_IN_REALS, so CheckNumerics verifies on every run that the outputs are unchanged.

    qcompile zoo:tiny --plugin docs/examples/rescale_layernorm.py --passes rescale-ln:k=4,w8a8 -o out/t
"""

import numpy as np
import onnx_ir as ir

import qcompile


@qcompile.register_pass("rescale-ln")
class RescaleLayerNormPass(qcompile.Pass):
    """Multiply LayerNorm γ, β by k and divide the consuming MatMul weights by k."""

    invalidates = frozenset({qcompile.Property.CALIBRATED})  # LayerNorm outputs change scale
    numerics = qcompile.Numerics.EXACT_IN_REALS

    def __init__(self, k: float = 2.0) -> None:
        if k == 0:
            raise ValueError("k must be non-zero")
        self.k = float(k)

    def call(self, model: ir.Model) -> qcompile.PassResult:
        folded, skipped = 0, {}
        for node in model.graph:
            if node.op_type != "LayerNormalization":
                continue
            consumers = [use.node for use in node.outputs[0].uses()]
            weights = [c.inputs[1] for c in consumers if c.op_type == "MatMul"]
            affine = [v for v in node.inputs[1:3] if v is not None]
            if len(weights) != len(consumers) or any(v.const_value is None or len(v.uses()) != 1 for v in weights + affine):
                skipped[node.name] = "a consumer is not a MatMul with its own constant weight"
                continue
            for value, factor in [(v, self.k) for v in affine] + [(w, 1.0 / self.k) for w in weights]:
                array = value.const_value.numpy()
                scaled = (array.astype(np.float64) * factor).astype(array.dtype)  # weight math in float64
                value.const_value = ir.tensor(scaled, name=value.name)
            folded += 1
        return qcompile.PassResult(model, modified=folded > 0, stats={"folded": folded, "skipped": skipped})
