"""Errors that qcompile reports to its user.

`InputError` means the user's input is at fault (a malformed model, an unknown pass, missing data): the CLI
prints its message on one line and exits with code 2. Any other exception is an internal failure (exit 1).
`PassFailure` means a pass broke a promise it declared (e.g. an EXACT_IN_REALS pass changed the outputs).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

__all__ = ["QcompileError", "InputError", "DataUnavailableError", "PassFailure", "Interrupted", "one_line", "ort_stage"]


class QcompileError(Exception):
    """Base class of every error qcompile raises on purpose."""


class InputError(QcompileError):
    """The input (model file, options, data) is invalid; the message says what and where."""


class DataUnavailableError(InputError):
    """A data set or model package the task needs is not installed; the message says how to install it."""


class PassFailure(QcompileError):
    """A pass or an instrument's check failed; the message names the pass."""


class Interrupted(BaseException):
    """A signal (SIGTERM, SIGHUP) asked the run to stop; raised where the run is, so every `finally` and
    `with` block on the way out cleans up. A `BaseException`, like `KeyboardInterrupt`, so that no
    `except Exception` swallows it."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal_number)
        self.signal_number = signal_number


def one_line(error: BaseException, limit: int = 300) -> str:
    """The error's text on one line (whitespace collapsed), cut to `limit` characters; the type if empty."""
    text = " ".join(str(error).split())
    return text[:limit] if text else type(error).__name__


@contextlib.contextmanager
def ort_stage(stage: str, internal: bool = False) -> Iterator[None]:
    """Turn an ONNX Runtime failure inside the block into one line naming `stage`: an `InputError` (the
    user's model is at fault) or, with `internal`, a `RuntimeError` (qcompile's own output is)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    runtime_errors = tuple(
        getattr(ort_state, name)
        for name in (
            "Fail",
            "InvalidArgument",
            "NoSuchFile",
            "NoModel",
            "EngineError",
            "RuntimeException",
            "InvalidProtobuf",
            "ModelLoaded",
            "NotImplemented",
            "InvalidGraph",
            "EPFail",
        )
        if hasattr(ort_state, name)
    )
    try:
        yield
    except runtime_errors as error:
        text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : [A-Z_]+ : ", "", one_line(error, 1000))[:300]
        if internal:
            raise RuntimeError(f"{stage}: {text}") from None
        raise InputError(f"{stage}: {text}") from None
