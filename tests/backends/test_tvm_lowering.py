"""The TVM lowering end to end: integer-only tiny encoders (every softmax and GELU variant, fused and
decomposed LayerNorm) compiled with TVM give ONNX Runtime's outputs of model.int.onnx bit for bit, and
the NumPy reference interpreter's; the GEMM epilogue fusion and the static-shape preparation."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import qcompile
from qcompile import PipelineContext, runtime
from qcompile.backends.tvm.artifact import compile_int_model
from qcompile.backends.tvm.lowering.fuse import (
    BOUNDED_MATMUL,
    FUSED_LINEAR,
    SCORES_SOFTMAX,
    fuse_linear_epilogues,
    fuse_score_softmax,
    mark_bounded_matmuls,
)
from qcompile.backends.tvm.prepare import static_model
from qcompile.intops.reference import run_reference
from qcompile.passes.lowering.intonly import IntOnlyPass
from qcompile.testing.builders import tiny_encoder, tiny_inputs


def _int_model(softmax: str = "auto", gelu: str = "auto", **options):
    tiny = tiny_encoder(**options)
    context = PipelineContext(calibration=tiny.calibration, progress=False)
    qcompile.run_passes(tiny.model, "w8a8", context=context)
    IntOnlyPass(softmax=softmax, gelu=gelu, context=context)(tiny.model)
    return ir.serde.serialize_model(tiny.model), tiny.feeds


def _run_tvm(proto, feeds):
    import tvm
    from tvm import relax

    compiled = compile_int_model(proto, "llvm", {name: value.shape for name, value in feeds.items()}, threads=2)
    vm = relax.VirtualMachine(compiled.executable, tvm.cpu())
    return vm["main"](*(tvm.runtime.tensor(value) for value in feeds.values())).numpy()


@pytest.mark.parametrize(
    "softmax, gelu, options",
    [
        ("ibert", "table", {}),
        ("shiftmax", "shiftgelu", {"decomposed_layernorm": True}),
        ("ibert", "ibert", {"layer_scale": True, "final_norm": True}),
    ],
    ids=["ibert+table", "shiftmax+shiftgelu+decomposed", "ibert+ibertgelu+layerscale"],
)
def test_tvm_equals_onnx_runtime_and_the_reference(softmax, gelu, options) -> None:
    proto, feeds = _int_model(softmax, gelu, **options)
    kernels = {n.op_type for n in proto.graph.node if n.domain == "qcompile"}
    assert {"IntLinear", "Requantize", "ILayerNorm", "IntAdd"} <= kernels
    expected = runtime.run(runtime.make_session(proto.SerializeToString()), feeds)["y"]
    np.testing.assert_array_equal(run_reference(proto, feeds)["y"], expected)
    for seed_feeds in (feeds, tiny_inputs(1, len(feeds["x"]), seed=7)[0]):
        expected = runtime.run(runtime.make_session(proto.SerializeToString()), seed_feeds)["y"]
        np.testing.assert_array_equal(_run_tvm(proto, seed_feeds), expected)


def test_linear_epilogues_fuse_into_the_gemm() -> None:
    proto, feeds = _int_model()
    model = static_model(proto, {"x": feeds["x"].shape})
    linears = [n for n in model.graph if n.op_type == "IntLinear"]
    requantized = [n for n in linears if [u.node.op_type for u in n.outputs[0].uses()] == ["Requantize"]]
    assert 0 < len(requantized) < len(linears)  # the others feed an IntAdd residual as int32
    assert fuse_linear_epilogues(model) == len(requantized)
    fused = [n for n in model.graph if n.op_type == FUSED_LINEAR]
    assert len(fused) == len(requantized) and sum(n.op_type == "IntLinear" for n in model.graph) == len(linears) - len(
        requantized
    )
    assert all(len(n.inputs) == 8 and "to" in n.attributes for n in fused)
    assert not any(n.op_type == "Requantize" and n.inputs[0].producer() in requantized for n in model.graph)


def test_an_intermediate_graph_output_is_not_fused_away() -> None:
    proto, feeds = _int_model()
    model = static_model(proto, {"x": feeds["x"].shape})
    linear = next(n for n in model.graph if [u.node.op_type for u in n.outputs[0].uses()] == ["Requantize"])
    model.graph.outputs.append(linear.outputs[0])
    fuse_linear_epilogues(model)
    assert linear in list(model.graph) and linear.outputs[0].uses()[0].node.op_type == "Requantize"


def test_static_model_folds_shape_arithmetic_and_checks_shapes() -> None:
    proto, feeds = _int_model()
    model = static_model(proto, {"x": feeds["x"].shape})
    assert [int(d) for d in model.graph.inputs[0].shape] == list(feeds["x"].shape)
    assert not {"Shape", "Unsqueeze", "Concat"} & {n.op_type for n in model.graph}
    with pytest.raises(ValueError, match="no model input named"):
        static_model(proto, {"nope": (1, 2)})
    with pytest.raises(ValueError, match="does not fit"):
        static_model(proto, {"x": (1, 8, 31)})


def test_attention_matmuls_carry_their_bounds_to_the_backend() -> None:
    proto, feeds = _int_model(softmax="ibert")
    model = static_model(proto, {"x": feeds["x"].shape})
    matmuls = [n for n in model.graph if n.op_type == "MatMul"]
    assert len(matmuls) == 2  # Q·Kᵀ and P·V
    assert mark_bounded_matmuls(model) == 2
    bounds = sorted(
        (n.attributes["bound_a"].as_int(), n.attributes["bound_b"].as_int())
        for n in model.graph
        if n.op_type == BOUNDED_MATMUL
    )
    assert bounds[0][0] <= 255 and bounds[-1][0] == 2**16  # centred 8-bit codes; 16-bit probabilities
    scores, context = sorted(
        (n for n in model.graph if n.op_type == BOUNDED_MATMUL), key=lambda n: n.attributes["bound_a"].as_int()
    )
    assert (
        scores.attributes["row_sum_a"].as_int() == -1 and scores.attributes["lo_a"].as_int() < 0
    )  # Q·Kᵀ: no row sum known
    narrow = (ir.DataType.UINT8, ir.DataType.INT8)
    assert all(v.dtype in narrow for v in scores.inputs) and context.inputs[1].dtype in narrow  # centring absorbed
    assert scores.attributes["to"].as_int() == ir.DataType.INT32 and context.attributes["zp_a"].as_int() == 0
    assert not any(
        n.op_type == "Sub" and n.inputs[0].producer() is not None and n.inputs[0].producer().op_type == "Cast"
        for n in model.graph
    )
    assert [context.attributes[a].as_int() for a in ("lo_a", "hi_a", "row_sum_a")] == [0, 2**16, 2**16]  # softmax rows


@pytest.mark.parametrize("softmax", ["ibert", "shiftmax"])
def test_softmax_row_chain_fuses_into_one_node(softmax) -> None:
    proto, feeds = _int_model(softmax=softmax)
    model = static_model(proto, {"x": feeds["x"].shape})
    kernel = "IBertSoftmax" if softmax == "ibert" else "Shiftmax"
    assert fuse_score_softmax(model) == 1
    ops = [n.op_type for n in model.graph]
    assert SCORES_SOFTMAX in ops and not {kernel, "ReduceMax"} & set(ops)
    fused = next(n for n in model.graph if n.op_type == SCORES_SOFTMAX)
    assert fused.attributes["kernel"].as_string() == kernel and fused.inputs[0].dtype == ir.DataType.INT32
    assert "to" not in fused.attributes  # its reader is still a plain MatMul


def test_probabilities_travel_as_int32_into_a_bounded_matmul() -> None:
    proto, feeds = _int_model(softmax="ibert")
    model = static_model(proto, {"x": feeds["x"].shape})
    mark_bounded_matmuls(model)
    assert fuse_score_softmax(model) == 1
    fused = next(n for n in model.graph if n.op_type == SCORES_SOFTMAX)
    assert fused.attributes["to"].as_int() == ir.DataType.INT32
    assert fused.outputs[0].uses()[0].node.op_type == BOUNDED_MATMUL


def test_a_softmax_chain_with_an_observed_intermediate_stays_unfused() -> None:
    proto, feeds = _int_model(softmax="ibert")
    model = static_model(proto, {"x": feeds["x"].shape})
    grid = next(
        n
        for n in model.graph
        if n.op_type == "Requantize" and n.outputs[0].uses()[0].node.op_type == "Cast" and "d16" in n.outputs[0].name
    )
    model.graph.outputs.append(grid.outputs[0])
    assert fuse_score_softmax(model) == 0 and any(n.op_type == "IBertSoftmax" for n in model.graph)


FLAVOUR_GEMMS = {"generic": "int_gemm_generic", "llvm": "int_gemm", "avxvnni": "vnni_gemm", "avx512vnni": "vnni_gemm"}


def _flavour_runs_here(flavour: str) -> bool:
    from qcompile.backends.tvm.kernels.int_gemm_vnni import vnni_lanes
    from qcompile.backends.tvm.lowering.converters import VNNI_LANES
    from qcompile.backends.tvm.target import cpu_features, host_target

    features = cpu_features(host_target(1))
    if flavour in VNNI_LANES:
        return (vnni_lanes(features) or 0) >= VNNI_LANES[flavour]
    return flavour == "generic" or "avx2" in features


@pytest.mark.parametrize("flavour", list(FLAVOUR_GEMMS))
def test_every_cpu_kernel_flavour_is_exact(flavour) -> None:
    """Each CPU flavour `kernel_flavour` may pick — 'generic' (no AVX2: unscheduled), 'llvm' (AVX2 int16
    pairs), 'avxvnni' / 'avx512vnni' (vpdpbusd) — forced on this CPU where it can run, gives ONNX
    Runtime's outputs bit for bit through its own GEMM kernels."""
    import tvm
    from tvm import relax

    from qcompile.backends.tvm.build import compile_relax
    from qcompile.backends.tvm.lowering.importer import to_relax
    from qcompile.backends.tvm.target import host_target

    if not _flavour_runs_here(flavour):
        pytest.skip(f"this CPU cannot run the {flavour} kernels")
    proto, feeds = _int_model()
    mod = to_relax(static_model(proto, {"x": feeds["x"].shape}), flavour)
    names = {gv.name_hint.rstrip("0123456789") for gv in mod.functions}
    assert FLAVOUR_GEMMS[flavour] in names and not (set(FLAVOUR_GEMMS.values()) - {FLAVOUR_GEMMS[flavour]}) & names
    assert ("int_batch_matmul" in names) == (flavour != "generic")  # the attention kernels need AVX2
    vm = relax.VirtualMachine(compile_relax(mod, host_target(2)), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(feeds["x"])).numpy()
    np.testing.assert_array_equal(got, runtime.run(runtime.make_session(proto.SerializeToString()), feeds)["y"])


def test_kernel_flavour_follows_the_cpu_features(monkeypatch) -> None:
    from qcompile.backends.tvm import artifact, target

    cases = [
        ({"avx2", "avx512vnni", "avx512bw", "avxvnni"}, "avx512vnni"),
        ({"avx2", "avxvnni"}, "avxvnni"),
        ({"avx2"}, "llvm"),
        ({"neon"}, "generic"),
    ]
    for features, flavour in cases:
        monkeypatch.setattr(target, "cpu_features", lambda _target, f=frozenset(features): f)
        assert artifact.kernel_flavour(target.host_target(1)) == flavour
