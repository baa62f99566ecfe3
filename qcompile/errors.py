"""Errors that qcompile reports to its user.

`InputError` means the user's input is at fault (a malformed model, an unknown pass, missing data): the CLI
prints its message on one line and exits with code 2. Any other exception is an internal failure (exit 1).
`PassFailure` means a pass broke a promise it declared (e.g. an EXACT_IN_REALS pass changed the outputs).
"""

__all__ = ["QcompileError", "InputError", "DataUnavailableError", "PassFailure"]


class QcompileError(Exception):
    """Base class of every error qcompile raises on purpose."""


class InputError(QcompileError):
    """The input (model file, options, data) is invalid; the message says what and where."""


class DataUnavailableError(InputError):
    """A data set or model package the task needs is not installed; the message says how to install it."""


class PassFailure(QcompileError):
    """A pass or an instrument's check failed; the message names the pass."""
