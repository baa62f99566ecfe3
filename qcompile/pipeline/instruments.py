"""Instruments: checks that run around every pass.

* `VerifyIR` — after each pass, the model must satisfy the IR invariants of `qcompile.ir.verifier`.
* `CheckNumerics` — runs the model (with its quantizers materialized as QDQ) on a calibration batch
  before and after each pass that modified it:
  - EXACT and EXACT_IN_REALS passes must reproduce every graph output within the tolerances of
    `qcompile.pipeline.numerics.TOLERANCES`, else the run fails naming the pass;
  - LOSSY passes get their SQNR recorded per graph output and per layer (the output of every
    MatMul/Gemm/Conv whose inputs are quantized, compared with the same value before the pass);
  - every modifying pass also gets `sqnr_vs_float_db`: the lowest output SQNR against the float model's
    outputs (those before the first pass), so the report can show how each pass moved the error.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import onnx_ir as ir

from qcompile.errors import PassFailure
from qcompile.ir import quant_meta
from qcompile.ir.cache_state import is_state_output
from qcompile.ir.verifier import VerificationError, verify_model
from qcompile.pipeline.context import Feeds
from qcompile.pipeline.numerics import TOLERANCES, max_abs_error, sqnr_db, within_tolerance
from qcompile.pipeline.pass_base import Numerics, Pass, PassResult

__all__ = ["Instrument", "VerifyIR", "CheckNumerics", "LAYER_OPS"]

LAYER_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})


class Instrument(Protocol):
    def before(self, pass_: Pass, model: ir.Model) -> None: ...

    def after(self, pass_: Pass, model: ir.Model, result: PassResult, record: dict[str, Any]) -> None: ...


class VerifyIR:
    """Fail the run, naming the pass, when a pass leaves an ill-formed model."""

    def before(self, pass_: Pass, model: ir.Model) -> None:
        del pass_, model

    def after(self, pass_: Pass, model: ir.Model, result: PassResult, record: dict[str, Any]) -> None:
        del result, record
        try:
            verify_model(model)
        except VerificationError as error:
            raise PassFailure(f"pass '{pass_.pass_name}' left an invalid model: {error}") from None


def _layer_names(model: ir.Model, quantized_only: bool) -> list[str]:
    names = []
    for node in model.graph:
        if node.op_type not in LAYER_OPS:
            continue
        if quantized_only and not any(v is not None and quant_meta.get_quant(v) for v in node.inputs):
            continue
        names.append(node.outputs[0].name)
    return names


def _result_outputs(model: ir.Model) -> list[ir.Value]:
    """The graph outputs that carry results: all but KV-cache state (`qcompile.ir.cache_state`), whose basis
    (rotate) or precision (KV quantization) passes may change while the logits keep their meaning."""
    outputs = [v for v in model.graph.outputs if not is_state_output(v.name)]
    return outputs or list(model.graph.outputs)


class CheckNumerics:
    """Compare the result outputs (`_result_outputs`) before and after every modifying pass on one batch of
    calibration feeds."""

    def __init__(self, feeds: Feeds, threads: int = 2) -> None:
        self.feeds = feeds
        self.threads = threads
        self._reference: dict[str, np.ndarray] | None = None
        self._float: dict[str, np.ndarray] | None = None  # the outputs before the first pass
        self._layers_before: dict[str, np.ndarray] = {}

    def _run(self, model: ir.Model, extra: list[str]) -> dict[str, np.ndarray]:
        from qcompile import runtime
        from qcompile.runtime import qdq

        materialized = qdq.to_qdq(model)
        session = runtime.make_session(runtime.with_outputs(materialized, extra), threads=self.threads)
        return runtime.run(session, self.feeds)

    def before(self, pass_: Pass, model: ir.Model) -> None:
        layers = _layer_names(model, quantized_only=False) if pass_.numerics is Numerics.LOSSY else []
        if self._reference is None or layers:
            outputs = self._run(model, layers)
            self._reference = {v.name: outputs[v.name] for v in _result_outputs(model)}
            self._layers_before = {name: outputs[name] for name in layers}
            if self._float is None:
                self._float = dict(self._reference)

    def after(self, pass_: Pass, model: ir.Model, result: PassResult, record: dict[str, Any]) -> None:
        if not result.modified:
            return
        assert self._reference is not None
        layers = [n for n in _layer_names(model, quantized_only=True) if n in self._layers_before]
        outputs = self._run(model, layers if pass_.numerics is Numerics.LOSSY else [])
        reference, self._reference = self._reference, {v.name: outputs[v.name] for v in _result_outputs(model)}
        self._record_float_sqnr(record)
        if set(reference) != set(self._reference):
            if pass_.numerics is not Numerics.LOSSY:
                raise PassFailure(
                    f"pass '{pass_.pass_name}' is declared {pass_.numerics} but changed the graph outputs "
                    f"({sorted(reference)} -> {sorted(self._reference)})"
                )
            return
        if pass_.numerics is Numerics.LOSSY:
            per_output = {name: sqnr_db(ref, outputs[name]) for name, ref in reference.items()}
            record["sqnr_db"] = min(per_output.values())
            record["sqnr_db_per_output"] = per_output
            record["per_layer"] = [
                {"node": name, "sqnr_db": sqnr_db(self._layers_before[name], outputs[name])} for name in layers
            ]
            return
        rtol, atol = TOLERANCES[pass_.numerics.value]
        worst, worst_relative = 0.0, 0.0
        for name, ref in reference.items():
            test = outputs[name]
            error = max_abs_error(ref, test) if ref.shape == test.shape else float("inf")
            worst = max(worst, error)
            worst_relative = max(worst_relative, error / max(float(np.max(np.abs(ref), initial=0.0)), 1e-30))
            if not within_tolerance(ref, test, rtol, atol):
                raise PassFailure(
                    f"pass '{pass_.pass_name}' is declared {pass_.numerics} but changed output '{name}' by "
                    f"{error:.3g} (max |ref| {float(np.max(np.abs(ref), initial=0.0)):.3g}; "
                    f"allowed rtol={rtol:g}, atol={atol:g})"
                )
        record["max_abs_err"] = worst
        record["max_rel_err"] = worst_relative  # relative to max |reference|, the scale the tolerance uses

    def _record_float_sqnr(self, record: dict[str, Any]) -> None:
        assert self._float is not None and self._reference is not None
        shared = [name for name, ref in self._float.items() if name in self._reference]
        if shared and all(self._float[n].shape == self._reference[n].shape for n in shared):
            record["sqnr_vs_float_db"] = min(sqnr_db(self._float[n], self._reference[n]) for n in shared)
