"""Greedy generation with a KV-cache decoder (`qcompile.zoo.lm_export`'s interface), in ONNX Runtime or by any
object with the same steps (the TVM decoder library's sessions).

In ONNX Runtime (`OrtSteps`) one prefill call feeds the prompt's ids with an empty past; every further call feeds
the last token and the previous call's presents as the past, so the quantized weights of the one artifact serve
both. The next token is the argmax of the last position's logits (greedy), until `max_new_tokens` or an
end-of-sequence token. `greedy_tokens` takes a session or any object with `reset()`, `prefill(ids)` and
`step(token)`.

The tokenizer a run saved next to its artifact (`tokenizer.json`, `tokenizer_config.json`; transformers, the
`qcompile[llm]` extra) is `load_tokenizer`'s; `prompt_ids` wraps a prompt in its chat template. An artifact with
an intact-kv prefix prepends it itself (`without_prefix`). `generation_agreement` compares two greedy
continuations position by position. Generating with a run's output folder (the artifact or its TVM library) is
`qcompile.folder_generation`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from qcompile.errors import DataUnavailableError, InputError

__all__ = [
    "Generation",
    "OrtSteps",
    "greedy_tokens",
    "generation_agreement",
    "load_tokenizer",
    "without_prefix",
]


@dataclasses.dataclass
class Generation:
    prompt: str
    token_ids: list[int]
    text: str
    runtime: str = ""  # what ran the model (`folder_generation.open_steps`)


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
