"""`qcompile generate OUTDIR --prompt TEXT`: greedy generation with a decoder-LLM run's artifact, streamed.

    qcompile generate OUTDIR --prompt "What is the capital of France?" [--max-new-tokens 32]
                             [--no-chat-template] [--threads 2] [--runtime auto|tvm|ort]

OUTDIR is the output folder of a decoder-LLM run (zoo:smollm2-135m, …): its KV-cache artifact and the
tokenizer saved next to it (`qcompile.folder_generation`), run by the folder's TVM decoder library (decoder.so,
written by `--target llvm`) where it has one built for this CPU, else by ONNX Runtime; stderr names which. The text
is printed as it is produced.
"""

from __future__ import annotations

import argparse
import sys

from qcompile.errors import InputError

__all__ = ["run_generate"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line through the CLI's InputError path, exit code 2
        raise InputError(f"generate: {message} (usage: qcompile generate OUTDIR --prompt TEXT)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qcompile generate", description="Greedy generation with a decoder-LLM run's artifact.")
    parser.add_argument("output", help="the output folder of a decoder-LLM run (report.json, artifact, tokenizer)")
    parser.add_argument("--prompt", required=True, help="the user's message (wrapped in the chat template)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate at most (default 32)")
    parser.add_argument("--no-chat-template", action="store_true", help="feed the prompt as plain text")
    parser.add_argument("--threads", type=int, default=2, help="threads of the runtime (default 2)")
    parser.add_argument(
        "--runtime",
        choices=("auto", "tvm", "ort"),
        default="auto",
        help="tvm: the run's TVM decoder library (decoder.so, from --target llvm); ort: the ONNX artifact in ONNX "
        "Runtime; auto (default): the library where there is one for this CPU, else ONNX Runtime",
    )
    return parser


def run_generate(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.threads < 1:
        raise InputError(f"--threads must be at least 1, got {args.threads}")
    from qcompile.folder_generation import generate

    def stream(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    generate(
        args.output,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        chat=not args.no_chat_template,
        stream=stream,
        threads=args.threads,
        runtime=args.runtime,
        on_start=lambda used: print(f"[{used}]", file=sys.stderr),
    )
    sys.stdout.write("\n")
    return 0
