"""A local Hugging Face causal LM as MODEL: a folder (config.json + safetensors + tokenizer) or a `.gguf` file.

`qcompile ./my-llama/ --passes rotate,w4a8 -o out` and `qcompile model.Q8_0.gguf ...` load the model with
transformers (`qcompile[llm]`; a GGUF is dequantized to float32 by transformers + gguf), export it once as a
decoder with a KV cache (`lm_export`) into ``$QCOMPILE_CACHE/models/hf-<key>/``, and score it like
``zoo:smollm2-135m``: perplexity on 512-token windows of gensim's Lee corpus tokenized with the model's own
tokenizer (the first 16 windows evaluated, calibration from the rest), plus the generation check on the chat
prompts when the tokenizer has a chat template. The cache key hashes the source's resolved path, sizes and
modification times, so an edited model is exported again. Llama, Qwen2 and Mistral-family models are what
the LLM passes are built for; other architectures are exported and scored, and passes that do not find their
patterns say so.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir

from qcompile.errors import DataUnavailableError, InputError
from qcompile.zoo.cache import cache_dir
from qcompile.zoo.lm_export import export_causal_lm
from qcompile.zoo.perplexity import PerplexityTask

__all__ = ["HfCausalLM", "is_hf_source"]

WINDOW = 512
EVAL_WINDOWS = 16
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".gguf", ".jinja", ".txt")


def is_hf_source(path: str | Path) -> bool:
    """A folder holding config.json, or a `.gguf` file."""
    path = Path(path)
    return (path.is_dir() and (path / "config.json").is_file()) or (path.is_file() and path.suffix == ".gguf")


def _transformers():
    try:
        import transformers
    except ImportError:
        raise DataUnavailableError(
            "a Hugging Face model as MODEL needs transformers: pip install 'qcompile[llm]'"
        ) from None
    return transformers


class HfCausalLM(PerplexityTask):
    """A local Hugging Face causal LM (module docstring)."""

    description = "a local Hugging Face causal LM (folder or GGUF) on gensim's Lee background corpus, 512-token windows"

    def __init__(self, source: str | Path, window: int = WINDOW, eval_windows: int = EVAL_WINDOWS) -> None:
        super().__init__(window, eval_windows, batch=1)
        self.source = Path(source).resolve()
        if not is_hf_source(self.source):
            raise InputError(f"{source}: not a Hugging Face model folder (no config.json) nor a .gguf file")
        self.name = f"hf:{self.source.name}"
        self._tokenizer = None

    def _files(self) -> list[Path]:
        if self.source.is_file():
            return [self.source]
        return sorted(p for p in self.source.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)

    def key(self) -> str:
        digest = hashlib.sha1(str(self.source).encode())
        for path in self._files():
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]

    def _pretrained_arguments(self) -> tuple[str, dict]:
        if self.source.is_file():
            return str(self.source.parent), {"gguf_file": self.source.name}
        return str(self.source), {}

    def tokenizer(self):
        if self._tokenizer is None:
            folder, extra = self._pretrained_arguments()
            try:
                self._tokenizer = _transformers().AutoTokenizer.from_pretrained(folder, **extra)
            except (OSError, ValueError) as error:
                raise InputError(
                    f"{self.source}: cannot load its tokenizer ({type(error).__name__}: {error})"
                ) from None
        return self._tokenizer

    def onnx_path(self) -> Path:
        return cache_dir() / "models" / f"hf-{self.key()}" / "model.onnx"

    def _load_model(self) -> ir.Model:
        from qcompile.frontends.onnx import load

        path = self.onnx_path()
        if not path.is_file():
            transformers = _transformers()
            folder, extra = self._pretrained_arguments()
            print(f"exporting {self.source} to {path} (once)")
            start = time.perf_counter()
            try:
                module = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype="float32", **extra).eval()
            except (OSError, ValueError, KeyError) as error:
                raise InputError(
                    f"{self.source}: transformers cannot load it ({type(error).__name__}: {error})"
                ) from None
            export_causal_lm(module, path, int(module.config.vocab_size))
            print(f"exported in {time.perf_counter() - start:.0f} s")
        return load(path)

    def _token_ids(self) -> np.ndarray:
        from qcompile.zoo.data.lee import lee_token_ids

        def tokenize(text: str) -> list[int]:
            return self.tokenizer()(text, add_special_tokens=False)["input_ids"]

        return lee_token_ids(f"hf-{self.key()}", tokenize)

    def generation_prompts(self) -> list[tuple[str, list[int]]]:
        from qcompile.generation import prompt_ids
        from qcompile.zoo.smollm2 import PROMPTS

        tokenizer = self.tokenizer()
        chat = bool(getattr(tokenizer, "chat_template", None))
        return [(prompt, prompt_ids(tokenizer, prompt, chat=chat)) for prompt in PROMPTS]
