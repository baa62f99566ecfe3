"""Greedy generation with a KV-cache decoder artifact (`qcompile.zoo.lm_export`'s interface) in ONNX Runtime.

One prefill call feeds the prompt's ids with an empty past; every further call feeds the last token and the
previous call's presents as the past, so the quantized weights of the one artifact serve both. The next token
is the argmax of the last position's logits (greedy), until `max_new_tokens` or an end-of-sequence token.

`generate(OUTDIR, prompt)` runs the artifact of a qcompile output folder with the tokenizer the run saved next
to it (`tokenizer.json`, `tokenizer_config.json`; transformers, the `qcompile[llm]` extra, applies the
tokenizer's chat template unless `chat=False`) and can stream the text as it is produced. An artifact with an
intact-kv prefix (report.json's `intact_kv_prefix`) prepends it itself: a prompt starting with it is fed without.
`generation_agreement` compares two greedy continuations position by position.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from qcompile.errors import DataUnavailableError, InputError

__all__ = ["Generation", "generate", "greedy_tokens", "generation_agreement", "load_tokenizer", "without_prefix"]


@dataclasses.dataclass
class Generation:
    prompt: str
    token_ids: list[int]
    text: str


def greedy_tokens(
    session,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    eos_ids: Sequence[int] = (),
    on_token: Callable[[int], None] | None = None,
) -> list[int]:
    """The greedy continuation (token ids) of `prompt_ids` by an ONNX Runtime session with a KV cache."""
    from qcompile.zoo.lm_export import kv_cache_of_session

    kv = kv_cache_of_session(session)
    if kv is None:
        raise InputError(
            "the model has no KV cache (past_key_values.*/present.* inputs and outputs): export it with one"
        )
    if len(prompt_ids) == 0:
        raise InputError("the prompt has no tokens")
    feeds = {**kv.empty(1), "input_ids": np.asarray([list(prompt_ids)], dtype=np.int64)}
    names = ["logits", *kv.outputs()]
    produced: list[int] = []
    for _ in range(max_new_tokens):
        outputs = dict(zip(names, session.run(names, feeds)))
        token = int(np.argmax(outputs["logits"][0, -1]))
        produced.append(token)
        if on_token is not None:
            on_token(token)
        if token in eos_ids:
            break
        feeds = {**kv.feeds_from(outputs), "input_ids": np.asarray([[token]], dtype=np.int64)}
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


def generate(
    output_dir: str | Path,
    prompt: str,
    max_new_tokens: int = 32,
    chat: bool = True,
    stream: Callable[[str], None] | None = None,
    threads: int = 2,
) -> Generation:
    """Greedy generation by the artifact of the qcompile output folder `output_dir` (module docstring);
    `stream` receives each new piece of text as it is decoded."""
    from qcompile import runtime

    folder = Path(output_dir)
    report_path = folder / "report.json"
    if not report_path.is_file():
        raise InputError(f"{folder} is not a qcompile output folder (no report.json)")
    report = json.loads(report_path.read_text())
    artifact = folder / report.get("artifact", "model.qdq.onnx")
    if not artifact.is_file():
        raise InputError(f"{artifact} is missing")
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    tokenizer = load_tokenizer(folder)
    session = runtime.make_session(str(artifact), threads=threads)
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
    tokens = greedy_tokens(session, ids, max_new_tokens, eos, on_token)
    return Generation(prompt, tokens, tokenizer.decode(tokens, skip_special_tokens=True))
