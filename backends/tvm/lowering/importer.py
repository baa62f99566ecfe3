"""A static integer-only model → a Relax IRModule, through TVM's ONNX importer.

Standard ONNX ops go through `tvm.relax.frontend.onnx` (its converters are TVM's, well tested); the
importer's converter table is extended, for the duration of one import, with `converters.converters()`
for the `qcompile` functions and the fused GEMM. The importer dispatches on op_type alone, so the
qcompile function names must not shadow a standard op (none does). Initializers become Relax constants,
which the converters read to pack weights and to specialize kernels to their compile-time constants.
"""

from __future__ import annotations

import contextlib

import onnx_ir as ir

from qcompile.backends.tvm.lowering import converters
from qcompile.backends.tvm.lowering.fuse import fuse_linear_epilogues, fuse_score_softmax, mark_bounded_matmuls

__all__ = ["to_relax"]


@contextlib.contextmanager
def _with_qcompile_converters(kind: str):
    from tvm.relax.frontend.onnx import onnx_frontend

    standard = onnx_frontend._get_convert_map
    table = standard()
    extra = converters.converters(kind)
    clash = set(extra) & set(table)
    if clash:
        raise RuntimeError(f"qcompile converters shadow TVM's ONNX converters: {sorted(clash)}")
    onnx_frontend._get_convert_map = lambda: {**standard(), **extra}
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = standard


def to_relax(model: ir.Model, kind: str = "llvm"):
    """The Relax IRModule of a static-shape integer-only model for kernels of flavour `kind`
    (`artifact.kernel_flavour`: 'llvm', 'avx512vnni', 'avxvnni', 'generic', 'cuda'; fuses linear epilogues and, on
    CPUs, softmax row chains in `model`)."""
    import warnings

    from tvm.relax.frontend.onnx import from_onnx

    fuse_linear_epilogues(model)
    mark_bounded_matmuls(model)
    if kind != "cuda":  # the fused softmax kernel has a CPU row schedule; CUDA keeps dlight's rules
        fuse_score_softmax(model)
    proto = ir.serde.serialize_model(model)
    del proto.functions[:]  # the qcompile bodies are replaced by kernels; the importer ignores functions
    shapes = {v.name: [int(d) for d in v.shape] for v in model.graph.inputs}
    dtypes = {v.name: str(v.dtype.numpy()) for v in model.graph.inputs}
    with _with_qcompile_converters(kind), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnx.checker complains about the private fused-op domain
        return from_onnx(proto, shape_dict=shapes, dtype_dict=dtypes, keep_params_in_input=False)
