"""The whole corpus: every case of every category, in a stable order, with unique names."""

from __future__ import annotations

from qcompile.testing.robustness import (
    external_data_cases,
    file_cases,
    graph_cases,
    option_cases,
    plugin_cases,
    process_cases,
    valid_cases,
)
from qcompile.testing.robustness.case import CATEGORIES, Case

__all__ = ["CASES", "by_name"]

CASES: list[Case] = [
    *file_cases.CASES,
    *graph_cases.CASES,
    *external_data_cases.CASES,
    *option_cases.CASES,
    *plugin_cases.CASES,
    *process_cases.CASES,
    *valid_cases.CASES,
]

_names = [case.name for case in CASES]
if len(set(_names)) != len(_names):
    raise RuntimeError(f"duplicate case names: {sorted({n for n in _names if _names.count(n) > 1})}")
if {case.category for case in CASES} != set(CATEGORIES):
    raise RuntimeError("every category needs at least one case")


def by_name(name: str) -> Case:
    return next(case for case in CASES if case.name == name)
