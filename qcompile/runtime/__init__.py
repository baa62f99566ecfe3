"""The model-execution layer: everything that runs a model while it is being compiled.

`qcompile.runtime` (this module) is the ONNX Runtime session API (`make_session`, `run`, `with_outputs`,
`session_source`: `sessions.py`); `qcompile.runtime.qdq` is the QDQ view of an annotated model that
checks, calibration and export all run (`to_qdq`), with the log√2 quantizer functions of `log_quant`.
Core, passes and calibration execute models only through here; `qcompile.backends` turns the IR into
deployable artifacts and is imported by nothing in `qcompile/` core or `passes/`.
"""

from qcompile.runtime.sessions import (
    IN_MEMORY,
    SessionSource,
    make_session,
    run,
    session_options,
    session_source,
    with_outputs,
)

__all__ = ["make_session", "run", "with_outputs", "session_options", "session_source", "SessionSource", "IN_MEMORY"]
