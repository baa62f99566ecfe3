"""Relax converters for the `qcompile` integer functions: each node becomes one TE kernel.

A converter gets the Relax expressions of the node's inputs (initializers arrive as `relax.Constant`)
and emits a `call_tir` to a TE compute of `backends.tvm.kernels` through `BlockBuilder.emit_te`, or, for
the GEMM, to a PrimFunc that is already scheduled (weights packed at build time, vpmaddwd or vpdpbusd
register tiles, fused requantize epilogue). Parameters that the kernels need at compile time (bounds, shifts, the
softmax and
GELU constants) must be constants of the graph; a node whose parameters are computed at run time is
refused with a clear error. Output dtypes are the ONNX functions' (int64 for most, int32 for IntLinear),
so the graph's own Casts after them keep their meaning; Relax fuses those Casts into the kernel.
"""

from __future__ import annotations

import numpy as np

from qcompile.backends.tvm.kernels import (
    elementwise,
    exp_family,
    int_batch_matmul,
    int_gemm,
    int_gemm_gpu,
    int_gemm_vnni,
    layernorm,
    requantize,
    scores_softmax,
    softmax,
)
from qcompile.backends.tvm.lowering.fuse import BOUNDED_MATMUL, FUSED_LINEAR, SCORES_SOFTMAX

__all__ = ["converters", "LoweringError", "X86_FLAVOURS", "VNNI_LANES"]

SCHEDULED = "tirx.is_scheduled"  # dlight leaves PrimFuncs with this attribute alone
OPAQUE = 8  # relax OpPatternKind kOpaque: FuseOps does not fuse the scheduled GEMM with its neighbours
# kernel flavours (`artifact.kernel_flavour`) of x86 CPUs with AVX2: 'llvm' runs every integer product on
# int16 pairs (vpmaddwd); the VNNI flavours run IntLinear on vpdpbusd with this many int32 lanes
VNNI_LANES = {"avx512vnni": 16, "avxvnni": 8}
X86_FLAVOURS = ("llvm", *VNNI_LANES)
ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 4: "uint16", 12: "uint32"}


class LoweringError(ValueError):
    """A node the TVM lowering cannot compile (names the op and the reason)."""


def _array(expr, what: str) -> np.ndarray:
    from tvm.ir.expr import Constant

    if not isinstance(expr, Constant):
        raise LoweringError(f"{what} must be a constant of the graph for the TVM backend (it is computed at run time)")
    return expr.value.numpy()


def _int(expr, what: str) -> int:
    value = _array(expr, what)
    if value.size != 1:
        raise LoweringError(f"{what} must be a scalar, got shape {value.shape}")
    return int(value.reshape(()))


def _shape(expr) -> tuple[int, ...]:
    return tuple(int(d) for d in expr.ty.shape)


def _dtype(expr) -> str:
    return str(expr.ty.dtype)


def _converter(name: str, impl):
    """An importer converter class named `name` whose _impl_v1 is impl(bb, inputs, attr)."""
    from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

    return type(
        name,
        (OnnxOpConverter,),
        {"_impl_v1": classmethod(lambda cls, bb, inputs, attr, params: impl(bb, inputs, attr))},
    )


def _int64(expr, what: str):
    """The constant `expr` as an int64 Relax constant (the kernels compute in int64)."""
    from tvm import relax

    return relax.const(_array(expr, what).astype(np.int64), "int64")  # relax.const narrows int64 without a dtype


def _requantize(bb, inputs, attr):
    x, *params, lo, hi = inputs
    m, e, b = (_int64(value, f"Requantize's {what}") for value, what in zip(params, "meb"))
    return bb.emit_te(
        requantize.requantize_te,
        x,
        m,
        e,
        b,
        _int(lo, "Requantize's lo"),
        _int(hi, "Requantize's hi"),
        "int64",
        primfunc_name_hint="requantize",
    )


def _int_add(bb, inputs, attr):
    a, b, *params, lo, hi = inputs
    if _shape(a) != _shape(b):
        raise LoweringError(f"IntAdd of shapes {_shape(a)} and {_shape(b)}: the TVM kernel adds equal shapes only")
    m_a, e_a, m_b, e_b = (
        _int64(value, f"IntAdd's {what}") for value, what in zip(params, ("m_a", "e_a", "m_b", "e_b"))
    )
    return bb.emit_te(
        elementwise.int_add_te,
        a,
        b,
        m_a,
        e_a,
        m_b,
        e_b,
        _int(lo, "IntAdd's lo"),
        _int(hi, "IntAdd's hi"),
        "int64",
        primfunc_name_hint="int_add",
    )


def _lookup(bb, inputs, attr):
    x, table, first = inputs
    _array(table, "Lookup's table")
    return bb.emit_te(elementwise.lookup_te, x, table, _int(first, "Lookup's first"), primfunc_name_hint="lookup")


def _scores_softmax(bb, inputs, attr):
    """`qcompile.tvm.ScoresSoftmax`: the softmax row chain as one row-scheduled kernel, the Requantize's
    scalars compiled in; IBertSoftmax keeps its exp table when the table is small."""
    from tvm import relax, te

    x, *params = inputs
    kernel = attr["kernel"].decode() if isinstance(attr["kernel"], bytes) else str(attr["kernel"])
    grid = [_int(p, f"ScoresSoftmax's {name}") for p, name in zip(params[:5], ("m", "e", "b", "lo", "hi"))]
    constants = [_int(p, f"{kernel}'s constant") for p in params[5:]]
    table = softmax.exp_table(*constants[:4]) if kernel == "IBertSoftmax" else None
    shape, dtype = _shape(x), _dtype(x)
    xs = te.placeholder(shape, dtype, name="scores")
    if kernel == "IBertSoftmax":
        ts = te.placeholder(table.shape, str(table.dtype), name="exp_table") if table is not None else None
        out = scores_softmax.scores_softmax_te(xs, *grid, softmax.ibert_softmax_te, *constants, table=ts)
        args, tensors = (
            ([xs, ts, out], [x, relax.const(table, str(table.dtype))]) if table is not None else ([xs, out], [x])
        )
    else:
        out = scores_softmax.scores_softmax_te(xs, *grid, exp_family.shiftmax_te, *constants)
        args, tensors = [xs, out], [x]
    if "to" in attr:  # the probabilities' reader takes them narrower (fuse.py proved they fit)
        narrow = ONNX_DTYPES[int(attr["to"])]
        wide_out = args[-1]
        args[-1] = out = te.compute(shape, lambda *i: wide_out[i].astype(narrow), name="probabilities")
    func = (
        scores_softmax.schedule_rows(te.create_prim_func(args))["main"]
        .without_attr("global_symbol")
        .with_attr({SCHEDULED: True, "op_pattern": OPAQUE})
    )
    gv = bb.add_func(func, "scores_softmax")
    return bb.emit(relax.call_tir(gv, tensors, relax.TensorType(shape, str(out.dtype))))


def _constant_kernel(name: str, compute, constants: tuple[str, ...]):
    """A converter for x → compute(x, *ints) whose other inputs are the scalar constants `constants`."""

    def impl(bb, inputs, attr):
        x, *params = inputs
        values = [_int(p, f"{name}'s {what}") for p, what in zip(params, constants)]
        return bb.emit_te(compute, x, *values, primfunc_name_hint=name.lower())

    return impl


def _requantize_epilogue(epilogue_inputs, out_dtype):
    """(epilogue for the GEMM PrimFuncs, its Relax constant arguments) of a fused Requantize (m, e, b,
    lo, hi), or (None, []) without one."""
    from tvm import relax, te

    if epilogue_inputs is None:
        return None, []
    mult, shift, offset, lo, hi = epilogue_inputs
    arrays = requantize.fold_rounding(
        *(_array(v, f"the requantize {name} after IntLinear") for v, name in ((mult, "m"), (shift, "e"), (offset, "b")))
    )
    params = [te.placeholder(a.shape, str(a.dtype), name=name) for a, name in zip(arrays, ("m", "e", "b"))]
    low, high = _int(lo, "Requantize's lo"), _int(hi, "Requantize's hi")
    epilogue = (
        params,
        lambda value, index: requantize.requantize_expr(
            value, index, *params, low, high, out_dtype, rounding_in_b=True
        ),
    )
    return epilogue, [relax.const(a, str(a.dtype)) for a in arrays]


def _ibert_softmax(bb, inputs, attr):
    """IBertSoftmax with e looked up in a build-time table of the reference's values when it is small."""
    from tvm import relax

    x, *params = inputs
    names = ("x0", "b_int", "c_int", "n", "out_bits")
    x0, b_int, c_int, n, out_bits = (_int(p, f"IBertSoftmax's {name}") for p, name in zip(params, names))
    table = softmax.exp_table(x0, b_int, c_int, n)
    if table is None:
        return bb.emit_te(softmax.ibert_softmax_te, x, x0, b_int, c_int, n, out_bits, primfunc_name_hint="ibertsoftmax")
    compute = lambda xs, ts: softmax.ibert_softmax_te(xs, x0, b_int, c_int, n, out_bits, table=ts)  # noqa: E731
    return bb.emit_te(compute, x, relax.const(table, str(table.dtype)), primfunc_name_hint="ibertsoftmax")


def _gemm_operands(x, w):
    """(weight [K, N], lead dims of x, M, K, N) of an IntLinear, checking x's features."""
    weight = _array(w, "IntLinear's weight")
    k, n = weight.shape
    *lead, k_x = _shape(x)
    if k_x != k:
        raise LoweringError(f"IntLinear: x has {k_x} features, the weight {k}")
    return weight, lead, (int(np.prod(lead, dtype=np.int64)) if lead else 1), k, n


def _call_gemm(bb, x, func, name: str, constants, lead, m: int, k: int, n: int, out_dtype: str):
    """call_tir of a GEMM PrimFunc (x reshaped to [M, K], then its constants) reshaped back to [..., N]."""
    from tvm import relax

    gv = bb.add_func(func.without_attr("global_symbol").with_attr({"op_pattern": OPAQUE}), name)
    rows = bb.emit(relax.op.reshape(x, (m, k)))
    out = bb.emit(relax.call_tir(gv, [rows, *constants], relax.TensorType((m, n), out_dtype)))
    return bb.emit(relax.op.reshape(out, (*lead, n)))


def _linear(bb, x, w, bias, epilogue_inputs, out_dtype):
    """The AVX2 GEMM (`int_gemm`: int16 pairs, vpmaddwd) on x [..., K], with the requantize epilogue."""
    from tvm import relax

    weight, lead, m, k, n = _gemm_operands(x, w)
    packed = int_gemm.pack_weight(weight)
    padded_bias = np.zeros(packed.shape[0] * int_gemm.LANES, np.int32)
    padded_bias[:n] = _array(bias, "IntLinear's bias").astype(np.int32).reshape(-1)
    epilogue, extra = _requantize_epilogue(epilogue_inputs, out_dtype)
    func = int_gemm.int_gemm_func(m, k, n, epilogue=epilogue, out_dtype=out_dtype, a_dtype=_dtype(x))
    scheduled = int_gemm.schedule_int_gemm(func)["main"].with_attr({SCHEDULED: True})
    constants = [relax.const(packed, "int16"), relax.const(padded_bias, "int32"), *extra]
    return _call_gemm(bb, x, scheduled, "int_gemm", constants, lead, m, k, n, out_dtype)


def _linear_vnni(bb, x, w, bias, epilogue_inputs, out_dtype, lanes: int):
    """The VNNI GEMM (`int_gemm_vnni`: vpdpbusd, u8 × s8) when x holds 8-bit codes and W int8 codes;
    the AVX2 int16-pair GEMM otherwise."""
    from tvm import relax

    weight, lead, m, k, n = _gemm_operands(x, w)
    if _dtype(x) not in ("uint8", "int8") or weight.min(initial=0) < -128 or weight.max(initial=0) > 127:
        return _linear(bb, x, w, bias, epilogue_inputs, out_dtype)
    packed = int_gemm_vnni.pack_weight(weight, lanes)
    padded_bias = np.zeros(packed.shape[0] * lanes, np.int32)
    padded_bias[:n] = int_gemm_vnni.shifted_bias(weight, _array(bias, "IntLinear's bias").reshape(-1), _dtype(x))
    epilogue, extra = _requantize_epilogue(epilogue_inputs, out_dtype)
    func = int_gemm_vnni.vnni_gemm_func(m, k, n, lanes, epilogue=epilogue, out_dtype=out_dtype, a_dtype=_dtype(x))
    scheduled = int_gemm_vnni.schedule_vnni_gemm(func, lanes)["main"].with_attr({SCHEDULED: True})
    constants = [relax.const(packed, "int8"), relax.const(padded_bias, "int32"), *extra]
    return _call_gemm(bb, x, scheduled, "vnni_gemm", constants, lead, m, k, n, out_dtype)


def _linear_gpu(bb, x, w, bias, epilogue_inputs, out_dtype, schedule: bool = True):
    """The CUDA GEMM (`int_gemm_gpu`): __dp4a on int8 operands, uint8 activations shifted by 128.
    schedule=False: the same computation unscheduled, for CPUs without AVX2 (correct, slow)."""
    from tvm import relax

    weight, lead, m, k, n = _gemm_operands(x, w)
    if weight.min() < -128 or weight.max() > 127:
        raise LoweringError("IntLinear's weight codes do not fit int8")
    packed = int_gemm_gpu.pack_weight_t(weight)
    bias_codes = np.zeros(packed.shape[0], np.int32)
    bias_codes[:n] = int_gemm_gpu.shifted_bias(weight, _array(bias, "IntLinear's bias").reshape(-1), _dtype(x))
    epilogue, extra = _requantize_epilogue(epilogue_inputs, out_dtype)
    func = int_gemm_gpu.dp4a_gemm_func(m, k, n, _dtype(x), epilogue, out_dtype)
    if schedule:
        func = int_gemm_gpu.schedule_dp4a_gemm(func)["main"].with_attr({SCHEDULED: True})
    constants = [relax.const(packed, "int8"), relax.const(bias_codes, "int32"), *extra]
    return _call_gemm(bb, x, func, "dp4a_gemm" if schedule else "int_gemm_generic", constants, lead, m, k, n, out_dtype)


def _linear_for(kind: str):
    """The GEMM lowering for a kernel flavour (`artifact.kernel_flavour`)."""
    if kind == "cuda":
        return _linear_gpu
    if kind == "generic":
        return lambda *args: _linear_gpu(*args, schedule=False)
    if kind in VNNI_LANES:
        return lambda *args: _linear_vnni(*args, lanes=VNNI_LANES[kind])
    return _linear


def _int_linear(kind: str):
    def impl(bb, inputs, attr):
        x, w, bias = inputs
        return _linear_for(kind)(bb, x, w, bias, None, "int32")

    return impl


def _int_linear_requantize(kind: str):
    def impl(bb, inputs, attr):
        x, w, bias, *epilogue = inputs
        out_dtype = ONNX_DTYPES[int(attr["to"])] if "to" in attr else "int64"
        return _linear_for(kind)(bb, x, w, bias, epilogue, out_dtype)

    return impl


def _bounded_matmul(kind: str):
    return lambda bb, inputs, attr: _bounded_matmul_impl(bb, inputs, attr, kind)


def _bounded_matmul_impl(bb, inputs, attr, kind):
    """`qcompile.tvm.IntMatMul` (an activation × activation MatMul with recorded operand bounds; operands
    with zp_a/zp_b are narrow codes centred here) on the int16-pair batched kernel when the bounds make
    it exact on a CPU; TVM's generic matmul on the centred operands otherwise (and on CUDA, where
    dlight's Matmul rule schedules it)."""
    from tvm import relax

    a, b = inputs
    dtype = ONNX_DTYPES[int(attr["to"])] if "to" in attr else _dtype(a)
    zp_a, zp_b = int(attr.get("zp_a", 0)), int(attr.get("zp_b", 0))
    (*lead, m, k), (*lead_b, _, n) = _shape(a), _shape(b)
    bound_a, bound_b = int(attr["bound_a"]), int(attr["bound_b"])
    lo_a, hi_a = int(attr.get("lo_a", -bound_a)), int(attr.get("hi_a", bound_a))
    row_sum_a = int(attr.get("row_sum_a", -1))
    how = int_batch_matmul.plan(k, bound_b, lo_a, hi_a, row_sum_a if row_sum_a >= 0 else None)
    if kind not in X86_FLAVOURS or lead != lead_b or how is None:  # CUDA, a CPU without AVX2, or no exact int16 path

        def centred(x, zp):
            x = bb.emit(relax.op.astype(x, dtype)) if _dtype(x) != dtype else x
            return bb.emit(relax.op.subtract(x, relax.const(np.array(zp, dtype), dtype))) if zp else x

        return bb.emit(relax.op.matmul(centred(a, zp_a), centred(b, zp_b)))
    batch = int(np.prod(lead, dtype=np.int64)) if lead else 1
    func = int_batch_matmul.int_batch_matmul_func(
        batch, m, k, n, dtype, how, a_dtype=_dtype(a), b_dtype=_dtype(b), zp_a=zp_a, zp_b=zp_b
    )
    func = int_batch_matmul.schedule_int_batch_matmul(func)
    gv = bb.add_func(
        func["main"].without_attr("global_symbol").with_attr({SCHEDULED: True, "op_pattern": OPAQUE}),
        "int_batch_matmul",
    )
    a3 = bb.emit(relax.op.reshape(a, (batch, m, k)))
    b3 = bb.emit(relax.op.reshape(b, (batch, k, n)))
    out = bb.emit(relax.call_tir(gv, [a3, b3], relax.TensorType((batch, m, n), dtype)))
    return bb.emit(relax.op.reshape(out, (*lead, m, n)))


def converters(kind: str = "llvm") -> dict[str, type]:
    """{op_type: importer converter class} for every `qcompile` function and the fused GEMM, for kernels
    of flavour `kind`: 'llvm' (x86 with AVX2), 'avx512vnni' / 'avxvnni' (x86 with VNNI: IntLinear on
    vpdpbusd), 'cuda', or 'generic' (any other CPU: unscheduled GEMMs)."""
    table = {
        "Requantize": _requantize,
        "IntAdd": _int_add,
        "Lookup": _lookup,
        "ILayerNorm": _constant_kernel("ILayerNorm", layernorm.ilayernorm_te, ("shift",)),
        "IBertSoftmax": _ibert_softmax,
        "Shiftmax": _constant_kernel("Shiftmax", exp_family.shiftmax_te, ("x0", "n", "out_bits")),
        "ShiftGELU": _constant_kernel("ShiftGELU", exp_family.shift_gelu_te, ("x0", "n", "sigmoid_bits")),
        "IntGELU": _constant_kernel("IntGELU", exp_family.int_gelu_te, ("b_int", "c_int", "one", "n")),
        "IntExpShift": _constant_kernel("IntExpShift", exp_family.int_exp_shift_te, ("x0", "n")),
        "IntSqrt": _constant_kernel("IntSqrt", layernorm.int_sqrt_te, ()),
        "IntLinear": _int_linear(kind),
        FUSED_LINEAR: _int_linear_requantize(kind),
        BOUNDED_MATMUL: _bounded_matmul(kind),
        SCORES_SOFTMAX: _scores_softmax,
    }
    return {name: _converter(f"QCompile{name}", impl) for name, impl in table.items()}
