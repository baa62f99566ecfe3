"""The PyTorch frontend: torch.export → FX → ONNX, as `torch.onnx.export(..., dynamo=True)` does.

The exporter builds an `onnx_ir` model directly, so the result is the same `ir.Model` type the ONNX
frontend returns; FX is only the importer's intermediate form, never a pass target.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import onnx_ir as ir

from qcompile.errors import InputError
from qcompile.frontends.onnx import validate
from qcompile.frontends.precision import compute_in_float32

__all__ = ["from_torch"]


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's informational warnings and logs (the result or the error is what counts)."""
    loggers = [logging.getLogger(name) for name in ("torch", "torch.onnx", "torch.export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def from_torch(
    module: Any,
    example_inputs: Sequence[Any],
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_shapes: Mapping[str, Any] | Sequence[Any] | None = None,
    opset_version: int = 18,
) -> ir.Model:
    """Export `module(*example_inputs)` to an `ir.Model`.

    Args:
        module: a `torch.nn.Module` in eval mode.
        example_inputs: positional example tensors.
        input_names / output_names: names of the graph inputs/outputs.
        dynamic_shapes: as for `torch.export.export` (e.g. `torch.export.Dim` per axis).
        opset_version: ONNX opset of the exported model.
    """
    import torch

    if not isinstance(module, torch.nn.Module):
        raise InputError(f"from_torch needs a torch.nn.Module, got {type(module).__name__}")
    module.eval()
    try:
        with torch.no_grad(), _quiet_exporter():
            program = torch.onnx.export(
                module,
                tuple(example_inputs),
                dynamo=True,
                input_names=list(input_names) if input_names else None,
                output_names=list(output_names) if output_names else None,
                dynamic_shapes=dynamic_shapes,
                opset_version=opset_version,
                optimize=True,
                verbose=False,
            )
    except Exception as error:  # the exporter raises many types; all mean "this module does not export"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"torch export of {type(module).__name__} failed: {first}") from None
    model = program.model
    source = f"<torch {type(module).__name__}>"
    validate(model, source)
    compute_in_float32(model, source)
    return model
