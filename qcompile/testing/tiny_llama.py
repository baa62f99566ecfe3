"""A tiny seeded Llama-family decoder for tests and smoke runs, exported to ONNX like a real LLM.

transformers' `LlamaForCausalLM` with 2 layers, hidden 64, 4 query heads and 2 key/value heads (GQA),
head_dim 16, a 128-wide SwiGLU FFN, RMSNorm, RoPE, tied embeddings and a 256-token vocabulary; weights are
drawn from ``torch.manual_seed(seed)``, RMSNorm gains γ = exp(0.5·N(0, 1)) per channel (distinct per norm).
It is exported with a KV cache (`qcompile.zoo.lm_export`: ``input_ids`` and ``past_key_values.*`` →
``logits`` and ``present.*``), cached under ``$QCOMPILE_CACHE/models/``.

`TinyLlamaTask` (``zoo:tiny-llama``) scores it by perplexity on seeded uniformly random token windows of 32
tokens. The absolute perplexity of random weights on random tokens means nothing (about the vocabulary
size); the change from the float model does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir

from qcompile.errors import DataUnavailableError
from qcompile.zoo.cache import cache_dir
from qcompile.zoo.lm_export import export_causal_lm
from qcompile.zoo.perplexity import PerplexityTask

__all__ = ["TinyLlamaTask", "save_byte_tokenizer", "tiny_llama_config", "tiny_llama_module", "tiny_llama_onnx"]

VOCAB = 256
SEED = 0
VERSION = 3  # bump when the configuration or the export changes: the cached file's name carries it
WINDOW = 32
EVAL_WINDOWS = 16
CALIBRATION_WINDOWS = 64


# Pass lists that give the tiny Llama every artifact form the TVM decoder reader knows (tests/backends).
DECODER_FORMS = {
    "w4a8": "w4a8",
    "rotate-w4a4kv4": "rotate,w4a4kv4",
    "intact-kv": "rotate,intact-kv:prefix=1+2,w4a4kv4",
    "w8a8": "rotate,w8a8",
    "w4a16-g32": "w4a16:weight_group=32",
    "w4a16-g48": "w4a16:weight_group=48",  # groups that divide neither 64 nor 128: the last one padded, then cut
    "w4a8-g32-asym": "rotate,w4a8:weight_group=32:weight_symmetric=false",
    "flatquant": "rotate,flatquant:init=identity:epochs=1:samples=4,w4a4kv4",
    "fp4": "fp-quantize:bits=4:samples=2:rounds=1:rows=64",
}


def _transformers():
    try:
        import transformers
    except ImportError as error:
        raise DataUnavailableError(
            f"zoo:tiny-llama needs transformers ({error}): pip install 'qcompile[llm]' (make setup does)"
        ) from None
    return transformers


def tiny_llama_config(**overrides):
    """The tiny configuration; `overrides` replace fields (tests build other widths, e.g. hidden 48)."""
    transformers = _transformers()
    fields = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        hidden_act="silu",
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        initializer_range=0.1,  # larger than the default 0.02, so the logits are not all near zero
        attention_bias=False,
        mlp_bias=False,
        use_cache=False,
    )
    fields.update(overrides)
    return transformers.LlamaConfig(**fields)


def tiny_llama_module(seed: int = SEED, **overrides):
    """The seeded float32 PyTorch model, in eval mode (`overrides`: configuration fields)."""
    import torch

    transformers = _transformers()
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(tiny_llama_config(**overrides))
    with torch.no_grad():  # distinct, non-unit RMSNorm gains, as trained models have (transformers inits γ = 1)
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.copy_(torch.exp(0.5 * torch.randn_like(parameter)))
    return model.float().eval()


def save_byte_tokenizer(folder: Path) -> None:
    """A 256-token byte-level tokenizer (no merges) saved as transformers saves one, for the tiny Llama."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE({ch: i for i, ch in enumerate(alphabet)}, []))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(str(folder))


def tiny_llama_onnx(seed: int = SEED) -> Path:
    """The cached ONNX export (exported on first use, atomically)."""
    path = cache_dir() / "models" / f"tiny-llama-v{VERSION}-seed{seed}" / "model.onnx"
    if not path.is_file():
        export_causal_lm(tiny_llama_module(seed), path, VOCAB)
    return path


class TinyLlamaTask(PerplexityTask):
    name = "tiny-llama"
    description = "a seeded random 2-layer Llama (GQA, SwiGLU, RoPE; transformers → ONNX) on random token windows"

    def __init__(self, seed: int = SEED, window: int = WINDOW, eval_windows: int = EVAL_WINDOWS) -> None:
        super().__init__(window, eval_windows, batch=4)
        self.seed = seed

    def _token_ids(self) -> np.ndarray:
        count = self.window * (self.eval_windows + CALIBRATION_WINDOWS)
        return np.random.default_rng(self.seed).integers(0, VOCAB, size=count, dtype=np.int64)

    def _load_model(self) -> ir.Model:
        from qcompile.frontends.onnx import load

        return load(tiny_llama_onnx(self.seed))

    def generation_prompts(self) -> list[tuple[str, list[int]]]:
        """Two seeded random prompts of 8 token ids (shown as the ids: there is no tokenizer)."""
        rng = np.random.default_rng(self.seed + 1)
        prompts = [rng.integers(0, VOCAB, size=8).tolist() for _ in range(2)]
        return [(" ".join(map(str, ids)), ids) for ids in prompts]
