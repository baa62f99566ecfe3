"""Greedy generation with a KV-cache decoder artifact (`qcompile.zoo.lm_export`'s interface), in ONNX Runtime or
by the artifact's TVM decoder library.

In ONNX Runtime (`OrtSteps`) one prefill call feeds the prompt's ids with an empty past; every further call feeds
the last token and the previous call's presents as the past, so the quantized weights of the one artifact serve
both. The next token is the argmax of the last position's logits (greedy), until `max_new_tokens` or an
end-of-sequence token.

`generate(OUTDIR, prompt)` runs the artifact of a qcompile output folder with the tokenizer the run saved next
to it (`tokenizer.json`, `tokenizer_config.json`; transformers, the `qcompile[llm]` extra, applies the
tokenizer's chat template unless `chat=False`) and can stream the text as it is produced; where the run built a
TVM decoder library for this CPU (`--target llvm`: decoder.so) that library runs it, its own cache in place of
the presents (`backends.tvm.decoder.session`). An artifact with an intact-kv prefix (report.json's
`intact_kv_prefix`) prepends it itself, and so does the library: a prompt starting with it is fed without.
`generation_agreement` compares two greedy continuations position by position.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from qcompile.errors import DataUnavailableError, InputError, one_line

__all__ = [
    "Generation",
    "OrtSteps",
    "generate",
    "greedy_tokens",
    "generation_agreement",
    "load_tokenizer",
    "open_steps",
    "without_prefix",
]


@dataclasses.dataclass
class Generation:
    prompt: str
    token_ids: list[int]
    text: str
    runtime: str = ""  # what ran the model (`open_steps`)


class OrtSteps:
    """`prefill(ids)` / `step(token)` (each → the last position's logits) over an ONNX Runtime session with a KV
    cache: the presents of one call are the past of the next."""

    def __init__(self, session) -> None:
        from qcompile.zoo.lm_export import kv_cache_of_session

        self.session, self.kv = session, kv_cache_of_session(session)
        if self.kv is None:
            raise InputError(
                "the model has no KV cache (past_key_values.*/present.* inputs and outputs): export it with one"
            )
        self.names = ["logits", *self.kv.outputs()]
        self.reset()

    def reset(self) -> None:
        self.past = self.kv.empty(1)

    def _run(self, ids: Sequence[int]) -> np.ndarray:
        feeds = {**self.past, "input_ids": np.asarray([list(ids)], dtype=np.int64)}
        outputs = dict(zip(self.names, self.session.run(self.names, feeds)))
        self.past = self.kv.feeds_from(outputs)
        return outputs["logits"][0, -1]

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        return self._run(ids)

    def step(self, token: int) -> np.ndarray:
        return self._run([token])


def greedy_tokens(
    model,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    eos_ids: Sequence[int] = (),
    on_token: Callable[[int], None] | None = None,
) -> list[int]:
    """The greedy continuation (token ids) of `prompt_ids` by `model`: an ONNX Runtime session with a KV cache, or
    an object with `reset()`, `prefill(ids)` and `step(token)` returning logits (`OrtSteps`, the TVM library's
    `DecodeSession`)."""
    steps = model if hasattr(model, "step") else OrtSteps(model)
    if len(prompt_ids) == 0:
        raise InputError("the prompt has no tokens")
    steps.reset()
    logits = steps.prefill(list(prompt_ids))
    produced: list[int] = []
    for _ in range(max_new_tokens):
        token = int(np.argmax(logits))
        produced.append(token)
        if on_token is not None:
            on_token(token)
        if token in eos_ids or len(produced) == max_new_tokens:
            break
        logits = steps.step(token)
    return produced


def without_prefix(ids: Sequence[int], prefix: Sequence[int] | None) -> list[int]:
    """`ids` without a leading `prefix` (a model with an intact-kv prefix prepends it itself)."""
    ids = list(ids)
    if prefix and ids[: len(prefix)] == list(prefix) and len(ids) > len(prefix):
        return ids[len(prefix) :]
    return ids


def generation_agreement(reference: Sequence[int], other: Sequence[int]) -> float:
    """Fraction of the reference's positions where `other` has the same token (0 where it is shorter)."""
    if not reference:
        return 1.0
    return sum(1 for i, token in enumerate(reference) if i < len(other) and other[i] == token) / len(reference)


def load_tokenizer(folder: str | Path):
    """The tokenizer a qcompile LLM run saved in `folder` (transformers' AutoTokenizer)."""
    try:
        import transformers
    except ImportError:
        raise DataUnavailableError("generation needs transformers: pip install 'qcompile[llm]'") from None
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise InputError(f"{folder} holds no tokenizer.json (only decoder-LLM runs of the zoo save one)")
    return transformers.AutoTokenizer.from_pretrained(str(folder))


def prompt_ids(tokenizer, prompt: str, chat: bool) -> list[int]:
    """The prompt's ids, wrapped in the tokenizer's chat template (one user turn) when `chat`."""
    if chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return list(ids["input_ids"] if isinstance(ids, dict) else ids)
    return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])


RUNTIMES = ("auto", "tvm", "ort")


def open_steps(folder: Path, artifact: Path, runtime: str = "auto", threads: int = 2):
    """(steps, runtime name) for generating with a run's output folder: its TVM decoder library (decoder.so, built
    with --target llvm) where there is one built for this CPU and `runtime` is "auto" or "tvm", else the artifact
    in ONNX Runtime ("ort", or "auto" without a usable library)."""
    from qcompile.backends.tvm.decoder import artifact as library_files

    if runtime not in RUNTIMES:
        raise InputError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime != "ort" and library_files.has_library(folder):
        from qcompile.backends.tvm import configure_pool

        configure_pool(threads)
        try:
            library = library_files.load(folder)
        except (RuntimeError, ValueError) as error:  # built for another CPU, or another format
            if runtime == "tvm":
                raise InputError(one_line(error)) from None
        else:
            return library.session(), f"TVM library {library_files.LIBRARY} ({library.metadata['kernels']} kernels)"
    if runtime == "tvm":
        raise InputError(f"{folder} holds no TVM decoder library: compile the model with --target llvm")
    from qcompile import runtime as ort_runtime

    if not artifact.is_file():
        raise InputError(f"{artifact} is missing")
    return OrtSteps(ort_runtime.make_session(str(artifact), threads=threads)), f"ONNX Runtime ({artifact.name})"


def generate(
    output_dir: str | Path,
    prompt: str,
    max_new_tokens: int = 32,
    chat: bool = True,
    stream: Callable[[str], None] | None = None,
    threads: int = 2,
    runtime: str = "auto",
    on_start: Callable[[str], None] | None = None,
) -> Generation:
    """Greedy generation by the artifact of the qcompile output folder `output_dir` (module docstring), run by its
    TVM decoder library when it has one for this CPU (`open_steps`); `stream` receives each new piece of text as
    it is decoded; `on_start` the name of what runs the model, before the first token."""
    folder = Path(output_dir)
    report_path = folder / "report.json"
    if not report_path.is_file():
        raise InputError(f"{folder} is not a qcompile output folder (no report.json)")
    report = json.loads(report_path.read_text())
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    tokenizer = load_tokenizer(folder)
    steps, used = open_steps(folder, folder / report.get("artifact", "model.qdq.onnx"), runtime, threads)
    if on_start is not None:
        on_start(used)
    ids = without_prefix(prompt_ids(tokenizer, prompt, chat), report.get("intact_kv_prefix"))
    shown = ""
    produced: list[int] = []

    def on_token(token: int) -> None:
        nonlocal shown
        produced.append(token)
        text = tokenizer.decode(produced, skip_special_tokens=True)
        if stream is not None and text.startswith(shown) and len(text) > len(shown):
            stream(text[len(shown) :])
            shown = text

    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    tokens = greedy_tokens(steps, ids, max_new_tokens, eos, on_token)
    return Generation(prompt, tokens, tokenizer.decode(tokens, skip_special_tokens=True), used)
