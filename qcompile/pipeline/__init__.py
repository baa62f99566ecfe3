"""Pass infrastructure: the `Pass` contract, registry and recipes, the manager and its instruments."""

from qcompile.pipeline.context import CalibrationData, Feeds, PipelineContext
from qcompile.pipeline.instruments import CheckNumerics, VerifyIR
from qcompile.pipeline.manager import PassManager, check_order
from qcompile.pipeline.pass_base import Numerics, Pass, PassResult, PreconditionError
from qcompile.pipeline.registry import (
    PassSpec,
    build_pass,
    expand,
    load_plugin,
    parse_pass_list,
    register_pass,
    register_recipe,
    registered_passes,
    registered_recipes,
)

__all__ = [
    "CalibrationData",
    "Feeds",
    "PipelineContext",
    "CheckNumerics",
    "VerifyIR",
    "PassManager",
    "check_order",
    "Numerics",
    "Pass",
    "PassResult",
    "PreconditionError",
    "PassSpec",
    "build_pass",
    "expand",
    "load_plugin",
    "parse_pass_list",
    "register_pass",
    "register_recipe",
    "registered_passes",
    "registered_recipes",
]
