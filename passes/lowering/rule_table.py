"""The ordered table of integer-lowering rules of the `intonly` pass.

Order matters where two rules look at the same op: the first whose match and check succeed rewrites the
node (`rule_base.lower_with`). Integer nodes are kept before anything else looks at them; a linear (a
MatMul by a quantized weight) before an activation × activation MatMul; a LayerNorm is met at its first
node before the ops it is decomposed into; an Add feeding a Softmax is tried as a masked score before a
residual add; GELU's Erf chain before the affine ops it contains. To add a rule, write a module with one
`LoweringRule` subclass (match, check with a reason, rewrite) and put an instance here.
"""

from __future__ import annotations

from qcompile.passes.lowering.act_matmul_rule import ActMatMulIntoIntMatMul
from qcompile.passes.lowering.affine_rule import AffineIntoScaleOffset
from qcompile.passes.lowering.concat_rule import ConcatOnGrid
from qcompile.passes.lowering.conv_rule import PatchConvIntoIntLinear
from qcompile.passes.lowering.gelu_rule import GeluIntoIntGelu
from qcompile.passes.lowering.integer_rule import FloatConstantRead, IntegerNodeKept
from qcompile.passes.lowering.linear_rule import LinearIntoIntLinear
from qcompile.passes.lowering.mask_rule import MaskedScoresIntoWherePenalty
from qcompile.passes.lowering.norm_rule import LayerNormIntoILayerNorm
from qcompile.passes.lowering.reduce_rule import (
    ClipIntoIntClip,
    ProductIntoIntMul,
    QuotientIntoIntDiv,
    ReduceL2IntoIntSqrt,
    ReduceSumIntoIntSum,
)
from qcompile.passes.lowering.residual_rule import ResidualAddIntoIntAdd
from qcompile.passes.lowering.rule_base import LoweringRule
from qcompile.passes.lowering.select_rule import SelectIntoScaleOffset
from qcompile.passes.lowering.shape_rule import DataMovementOnCodes
from qcompile.passes.lowering.softmax_rule import SoftmaxIntoIntSoftmax

__all__ = ["RULES"]

RULES: list[LoweringRule] = [
    FloatConstantRead(),
    IntegerNodeKept(),
    LinearIntoIntLinear(),
    LayerNormIntoILayerNorm(),
    PatchConvIntoIntLinear(),
    ConcatOnGrid(),
    MaskedScoresIntoWherePenalty(),
    ResidualAddIntoIntAdd(),
    GeluIntoIntGelu(),
    AffineIntoScaleOffset(),
    SelectIntoScaleOffset(),
    DataMovementOnCodes(),
    ProductIntoIntMul(),
    QuotientIntoIntDiv(),
    ReduceSumIntoIntSum(),
    ReduceL2IntoIntSqrt(),
    ClipIntoIntClip(),
    SoftmaxIntoIntSoftmax(),
    ActMatMulIntoIntMatMul(),
]
