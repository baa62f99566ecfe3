"""Tiny ONNX models for the robustness corpus, built with `onnx.helper` and seeded numpy.

The base model is a two-layer MLP:

    features[batch, 16] → MatMul(w1 16×16) → Add(b1) → Relu → MatMul(w2 16×8) → logits[batch, 8]

opset 17, IR version 9, `batch` symbolic. Variants change one thing each (dtype, input layout, an If
node, ...); the broken models of the corpus are made by editing a fresh copy of one of these protos.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "OPSET",
    "IR_VERSION",
    "mlp",
    "mlp_float16",
    "mlp_bfloat16",
    "mlp_symbolic",
    "token_embedding",
    "mlp_with_if",
    "weights",
    "make_model",
]

OPSET = 17
IR_VERSION = 9


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    """The MLP's initializers: w1 [16,16], b1 [16], w2 [16,8] (float32, seeded)."""
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.normal(0, 0.25, (16, 16)).astype(np.float32),
        "b1": rng.normal(0, 0.1, (16,)).astype(np.float32),
        "w2": rng.normal(0, 0.25, (16, 8)).astype(np.float32),
    }


def make_model(graph: onnx.GraphProto, opset: int = OPSET, ir_version: int = IR_VERSION, **kwargs) -> onnx.ModelProto:
    """`helper.make_model` with the corpus defaults (standard domain at `opset`, IR `ir_version`)."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **kwargs)
    model.ir_version = ir_version
    return model


def _mlp_nodes(
    x: str = "features", y: str = "logits", names: tuple[str, ...] = ("mm1", "add1", "relu1", "mm2")
) -> list[onnx.NodeProto]:
    return [
        helper.make_node("MatMul", [x, "w1"], ["h1"], name=names[0]),
        helper.make_node("Add", ["h1", "b1"], ["h2"], name=names[1]),
        helper.make_node("Relu", ["h2"], ["h3"], name=names[2]),
        helper.make_node("MatMul", ["h3", "w2"], [y], name=names[3]),
    ]


def mlp(
    opset: int = OPSET,
    ir_version: int = IR_VERSION,
    seed: int = 0,
    x: str = "features",
    y: str = "logits",
    x_shape: tuple = ("batch", 16),
    y_shape: tuple = ("batch", 8),
) -> onnx.ModelProto:
    """The base model (float32); `x`, `y` name its input and output."""
    inits = [numpy_helper.from_array(a, n) for n, a in weights(seed).items()]
    graph = helper.make_graph(
        _mlp_nodes(x=x, y=y),
        "mlp",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, list(y_shape))],
        inits,
    )
    return make_model(graph, opset, ir_version)


def _cast_mlp(elem_type: int, convert) -> onnx.ModelProto:
    inits = []
    for name, array in weights().items():
        tensor = helper.make_tensor(name, elem_type, array.shape, convert(array), raw=True)
        inits.append(tensor)
    graph = helper.make_graph(
        _mlp_nodes(),
        "mlp",
        [helper.make_tensor_value_info("features", elem_type, ["batch", 16])],
        [helper.make_tensor_value_info("logits", elem_type, ["batch", 8])],
        inits,
    )
    return make_model(graph)


def mlp_float16() -> onnx.ModelProto:
    """The base model with every tensor, input and output in float16."""
    return _cast_mlp(TensorProto.FLOAT16, lambda a: a.astype(np.float16).tobytes())


def mlp_bfloat16() -> onnx.ModelProto:
    """The base model with every tensor, input and output in bfloat16 (opset 17 Relu/MatMul/Add take it)."""
    import ml_dtypes

    return _cast_mlp(TensorProto.BFLOAT16, lambda a: a.astype(ml_dtypes.bfloat16).tobytes())


def mlp_symbolic() -> onnx.ModelProto:
    """x["batch", "seq", "hidden"] (all symbolic) → the MLP with hidden = 16 weights → y["batch", "seq", 8]."""
    return mlp(x="x", y="y", x_shape=("batch", "seq", "hidden"), y_shape=("batch", "seq", 8))


def token_embedding(vocab: int = 32) -> onnx.ModelProto:
    """ids int64 ["batch", "seq"] → Gather(embedding vocab×16) → the MLP → logits["batch", "seq", 8]."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(a, n) for n, a in weights().items()]
    inits.append(numpy_helper.from_array(rng.normal(0, 1, (vocab, 16)).astype(np.float32), "embedding"))
    nodes = [helper.make_node("Gather", ["embedding", "ids"], ["emb"], name="embed", axis=0), *_mlp_nodes(x="emb")]
    graph = helper.make_graph(
        nodes,
        "tokens",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", 8])],
        inits,
    )
    return make_model(graph)


def mlp_with_if(then_op: str = "Relu", else_op: str = "Sigmoid", then_domain: str = "") -> onnx.ModelProto:
    """The MLP with its Relu replaced by If(cond) — `then` applies `then_op`, `else` applies `else_op` —
    where cond = ReduceSum(h2) > 0 is computed in the graph. Branch bodies read h2 from the outer scope."""
    model = mlp()
    graph = model.graph
    relu_index = [i for i, n in enumerate(graph.node) if n.op_type == "Relu"][0]

    def branch(name: str, op: str, domain: str) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node(op, ["h2"], [f"{name}_out"], name=f"{name}_{op.lower()}", domain=domain)],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, ["batch", 16])],
        )

    graph.initializer.append(numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"))
    new_nodes = [
        helper.make_node("ReduceSum", ["h2"], ["total"], name="total", keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["cond"], name="positive"),
        helper.make_node(
            "If",
            ["cond"],
            ["h3"],
            name="branch",
            then_branch=branch("then", then_op, then_domain),
            else_branch=branch("else", else_op, ""),
        ),
    ]
    nodes = list(graph.node)
    nodes[relu_index : relu_index + 1] = new_nodes
    del graph.node[:]
    graph.node.extend(nodes)
    return model
