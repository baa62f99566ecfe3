"""`generate(OUTDIR, prompt)`: greedy generation with the output folder of a decoder-LLM run, by its TVM decoder
library (decoder.so, written by `--target llvm`) where the folder has one built for this CPU, else by the artifact
in ONNX Runtime (`open_steps`), with the tokenizer the run saved next to it, streamed as it is decoded.

The application layer, like the CLI and the job: it composes the core's generation (`qcompile.generation`) with a
backend's library. The chat template wraps the prompt as one user turn unless `chat=False`; an intact-kv prefix
(report.json's `intact_kv_prefix`) is prepended by the artifact and by the library, so a prompt starting with it
is fed without.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from qcompile.errors import InputError, one_line
from qcompile.generation import Generation, OrtSteps, greedy_tokens, load_tokenizer, prompt_ids, without_prefix

__all__ = ["RUNTIMES", "open_steps", "generate"]


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
