"""Float products that round before they are added: every float `a·b` in a PrimFunc becomes
`llvm.arithmetic.fence(a·b)`.

    fence(a·b) + c  =  round(round(a·b) + c)        (what ONNX Runtime computes)
    a·b + c        →  round(a·b + c)  after LLVM's contraction into one fused multiply-add

TVM's LLVM backend contracts a·b + c into an FMA whatever the target's fast-math flags say, so the few
float ops around the integer core (the input quantizer, the output dequantization) would differ from
model.int.onnx in the last bit. The fence is an identity that no optimization may look through; it emits
no instruction and vectorizes, so nothing else changes. Integer kernels have no float products.

On CUDA the same rule is `round_float_products`: every scalar float32 (float64) product becomes `__fmul_rn`
(`__dmul_rn`), CUDA's product rounded to nearest that the compiler never contracts into an FMA (NVCC and NVRTC
contract a·b + c by default).

Earlier the host target turned the CPU's `fma` feature off instead; LLVM's AVX-512 features imply FMA,
so that also turned AVX-512 (and with it the AVX512-VNNI GEMM) off on CPUs that have it.
"""

from __future__ import annotations

__all__ = ["fence_float_products", "round_float_products", "FenceFloatProducts", "FENCE", "CUDA_PRODUCTS"]

FENCE = "llvm.arithmetic.fence"
CUDA_PRODUCTS = {"float32": "__fmul_rn", "float64": "__dmul_rn"}  # scalar products CUDA never contracts


def fence_float_products(func):
    """`func` (a tirx PrimFunc) with every float multiplication wrapped in the fence."""
    import tvm_ffi
    from tvm import tirx

    def fence(product):
        dtype = str(product.ty.dtype)
        if not dtype.startswith(("float", "bfloat")):
            return product
        return tirx.call_llvm_pure_intrin(dtype, FENCE, product)

    return tvm_ffi.structural_map(func, (tirx.Mul, fence))


def round_float_products(func):
    """`func` with every scalar float32 / float64 product a·b written `__fmul_rn(a, b)` / `__dmul_rn(a, b)` (CUDA)."""
    import tvm_ffi
    from tvm import tirx

    def rounded(product):
        name = CUDA_PRODUCTS.get(str(product.ty.dtype))
        if name is None:  # integers, half precision, vectors
            return product
        return tirx.call_pure_extern(str(product.ty.dtype), name, product.a, product.b)

    return tvm_ffi.structural_map(func, (tirx.Mul, rounded))


def FenceFloatProducts(kind: str = "llvm"):  # noqa: N802  (a pass constructor, named as TVM's are)
    """Module pass: `fence_float_products` on every PrimFunc (kind "llvm"), or `round_float_products` ("cuda")."""
    import tvm
    from tvm import tirx

    rule = {"llvm": fence_float_products, "cuda": round_float_products}[kind]

    @tvm.transform.module_pass(opt_level=0, name="FenceFloatProducts")
    def _pass(mod, _ctx):
        updates = {gv: rule(func) for gv, func in mod.functions.items() if isinstance(func, tirx.PrimFunc)}
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return _pass
