"""The pass manager: order checking, instruments, timing, one record per pass.

Before anything runs, the whole list is checked statically: walking the passes in order and applying
each one's `establishes`/`invalidates` to the set of properties, every pass's `requires` must be met;
otherwise the error names the pass and the missing property. Then each pass runs between its
instruments' `before`/`after` hooks and yields a record {name, numerics, modified, seconds, ...}.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import onnx_ir as ir

from qcompile.errors import InputError, PassFailure
from qcompile.ir.properties import get_properties
from qcompile.pipeline.instruments import Instrument
from qcompile.pipeline.pass_base import Pass, PreconditionError

__all__ = ["PassManager", "check_order"]


def check_order(passes: Sequence[Pass], model: ir.Model) -> None:
    """Raise `InputError` if some pass would run without a property it requires."""
    properties = set(get_properties(model))
    invalidated_by: dict[str, str] = {}
    for index, pass_ in enumerate(passes):
        missing = sorted(str(p) for p in pass_.requires - properties)
        if missing and missing[0] in invalidated_by:
            raise InputError(
                f"pass '{pass_.pass_name}' (step {index + 1}) requires {missing[0]}, which the earlier pass "
                f"'{invalidated_by[missing[0]]}' invalidates; run the pass that establishes it again after that pass"
            )
        if missing:
            providers = ", ".join(
                sorted({p.pass_name for p in passes if set(missing) & {str(e) for e in p.establishes}})
            )
            hint = f" (established by: {providers}; put it earlier)" if providers else ""
            if not providers:  # name the registered passes that would provide it
                from qcompile.pipeline.registry import registered_passes

                registered = ", ".join(
                    name
                    for name, cls in registered_passes().items()
                    if set(missing) & {str(e) for e in cls.establishes}
                )
                hint = f" (established by: {registered}; add it before this pass)" if registered else ""
            raise InputError(
                f"pass '{pass_.pass_name}' (step {index + 1}) requires {', '.join(missing)}, "
                f"which no earlier pass establishes{hint}"
            )
        invalidated_by.update({str(p): pass_.pass_name for p in pass_.invalidates & properties})
        properties = (properties - pass_.invalidates) | pass_.establishes


class PassManager:
    """Run passes in order with instruments; `records` holds one dict per pass after `run`."""

    def __init__(self, passes: Sequence[Pass], instruments: Sequence[Instrument] = ()) -> None:
        self.passes = list(passes)
        self.instruments = list(instruments)
        self.records: list[dict[str, Any]] = []

    def run(self, model: ir.Model) -> ir.Model:
        check_order(self.passes, model)
        self.records = []
        for pass_ in self.passes:
            for instrument in self.instruments:
                instrument.before(pass_, model)
            start = time.perf_counter()
            try:
                result = pass_(model)
            except PreconditionError as error:
                raise InputError(str(error)) from None
            except (InputError, PassFailure):
                raise
            except Exception as error:
                raise PassFailure(f"pass '{pass_.pass_name}' crashed: {type(error).__name__}: {error}") from error
            record: dict[str, Any] = {
                "name": pass_.pass_name,
                "numerics": str(pass_.numerics),
                "modified": bool(result.modified),
                "seconds": time.perf_counter() - start,
                "stats": result.stats,
                "options": dict(getattr(pass_, "spec_options", {})),  # as given in --passes or a recipe
            }
            for instrument in self.instruments:
                instrument.after(pass_, model, result, record)
            self.records.append(record)
        return model
