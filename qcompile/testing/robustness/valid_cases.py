"""Cases of category `valid-odd`: unusual but valid models that must compile (exit 0, a loadable artifact)."""

from __future__ import annotations

import functools

import onnx
from onnx import TensorProto, helper, numpy_helper

from qcompile.testing.robustness import models
from qcompile.testing.robustness.case import Case, CaseDirs, model_argv, save

__all__ = ["CASES"]


def _saver(make):
    def build(dirs: CaseDirs) -> None:
        save(make(), dirs.model)

    return build


def _external(one_file: bool, location: str | None):
    def build(dirs: CaseDirs) -> None:
        if location and "/" in location:
            (dirs.model_dir / location).parent.mkdir(parents=True, exist_ok=True)
        onnx.save(
            models.mlp(),
            str(dirs.model),
            save_as_external_data=True,
            all_tensors_to_one_file=one_file,
            location=location,
            size_threshold=0,
        )

    return build


@functools.lru_cache(maxsize=1)
def _max_opset() -> onnx.ModelProto:
    from qcompile.frontends.structure import runtime_max_opset

    opset = runtime_max_opset()  # the ceiling qcompile declares: a model there must quantize and run
    return models.mlp(
        opset=opset, ir_version=max(models.IR_VERSION, helper.find_min_ir_version_for([helper.make_opsetid("", opset)]))
    )


def _weights_only() -> onnx.ModelProto:
    w = models.weights()
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "w1"], ["h1"], name="mm1"),
            helper.make_node("Relu", ["h1"], ["h2"], name="relu1"),
            helper.make_node("MatMul", ["h2", "w2"], ["logits"], name="mm2"),
        ],
        "weights_only",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 8])],
        [numpy_helper.from_array(w["w1"], "w1"), numpy_helper.from_array(w["w2"], "w2")],
    )
    return models.make_model(graph)


def _unicode_names() -> onnx.ModelProto:
    proto = models.mlp()
    renames = {"h1": "скрытый·1", "h2": "隠れ層 2", "h3": "h3 ✓"}
    names = {"mm1": "слой/MatMul", "add1": "層_1/Add", "relu1": "ReLU 🙂", "mm2": "couche-2/MatMul ü"}
    for node in proto.graph.node:
        node.name = names[node.name]
        node.input[:] = [renames.get(v, v) for v in node.input]
        node.output[:] = [renames.get(v, v) for v in node.output]
    return proto


def _fixed_batch() -> onnx.ModelProto:
    return models.mlp(x_shape=(4, 16), y_shape=(4, 8))


def _two_outputs() -> onnx.ModelProto:
    proto = models.mlp()
    proto.graph.output.append(helper.make_tensor_value_info("h3", TensorProto.FLOAT, ["batch", 16]))
    return proto


def _no_suffix(dirs: CaseDirs) -> None:
    save(models.mlp(), dirs.model)


CASES = [
    Case(
        "valid-external-one-file-other-cwd",
        "valid-odd",
        "ok",
        _external(True, "model.onnx.data"),
        argv=model_argv(model="../model/model.onnx"),
        note="model.onnx.data next to it; MODEL given relative to another cwd",
    ),
    Case("valid-external-per-tensor", "valid-odd", "ok", _external(False, None)),
    Case("valid-external-subfolder", "valid-odd", "ok", _external(True, "weights/w.bin")),
    Case("valid-float16", "valid-odd", "ok", _saver(models.mlp_float16)),
    Case(
        "valid-bfloat16",
        "valid-odd",
        "ok",
        _saver(models.mlp_bfloat16),
        note="ONNX Runtime's CPU provider has no bfloat16 Relu/MatMul: the float model runs only if upcast",
    ),
    Case(
        "valid-symbolic-dims-with-input-shape",
        "valid-odd",
        "ok",
        _saver(models.mlp_symbolic),
        argv=model_argv("--input-shape", "x=1x4x16"),
    ),
    Case(
        "valid-token-ids",
        "valid-odd",
        "ok",
        _saver(models.token_embedding),
        argv=model_argv("--input-shape", "ids=1x8"),
    ),
    Case("valid-if-node", "valid-odd", "ok", _saver(models.mlp_with_if)),
    Case(
        "valid-max-opset",
        "valid-odd",
        "ok",
        _saver(_max_opset),
        note="the newest opset qcompile declares it supports (ONNX Runtime runs its QDQ ops there)",
    ),
    Case(
        "valid-weights-only-initializers",
        "valid-odd",
        "ok",
        _saver(_weights_only),
        note="no bias: MatMul → Relu → MatMul",
    ),
    Case("valid-unicode-names", "valid-odd", "ok", _saver(_unicode_names)),
    Case("valid-fixed-batch", "valid-odd", "ok", _saver(_fixed_batch), note="features[4, 16]: no symbolic dim"),
    Case("valid-two-outputs", "valid-odd", "ok", _saver(_two_outputs)),
    Case("valid-no-onnx-suffix", "valid-odd", "ok", _no_suffix, model_path="model/model.bin"),
]
