"""Recipes as files: a pass list with options in TOML, for `qcompile --recipe FILE` and `qcompile.compile`.

Two spellings, mixable within one file's `passes` array:

    description = "RepQ-ViT, then integer-only lowering"      # optional
    passes = ["calibrate:observer=mse", "repq", "intonly"]    # steps in the --passes syntax

    [[pass]]                                                   # or one table per step
    name = "calibrate"
    observer = "percentile"
    percentile = 99.99

Table values keep their TOML types (strings with commas or colons, lists, floats), which the `--passes`
string cannot carry. The file becomes `PassSpec`s; names and options are checked by the registry as for
`--passes`. Errors name the file and the step.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from qcompile.errors import InputError
from qcompile.pipeline.registry import PassSpec, parse_pass_list

__all__ = ["load_recipe_file", "recipe_text"]

_KEYS = {"description", "passes", "pass"}


def _step(item: Any, where: str) -> list[PassSpec]:
    if isinstance(item, str):
        return parse_pass_list(item)
    if isinstance(item, dict):
        options = dict(item)
        name = options.pop("name", None)
        if not isinstance(name, str) or not name.strip():
            raise InputError(f'{where} needs name = "PASS" (a pass or recipe from `qcompile passes`)')
        return [PassSpec(name.strip(), options)]
    raise InputError(f'{where} must be a string like "calibrate:observer=mse" or a table with a name')


def load_recipe_file(path: str | Path) -> list[PassSpec]:
    """The steps of the TOML recipe at `path` (`passes` strings or tables first, then `[[pass]]` tables)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"recipe {path} is not a file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"recipe {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"recipe {path} is not valid TOML: {error}") from None
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise InputError(f"recipe {path}: unknown keys {', '.join(unknown)} (expected description, passes, [[pass]])")
    listed, tables = data.get("passes", []), data.get("pass", [])
    if isinstance(listed, str):
        listed = [listed]
    if not isinstance(listed, list) or not isinstance(tables, list):
        raise InputError(f"recipe {path}: `passes` must be an array and `pass` an array of tables ([[pass]])")
    specs: list[PassSpec] = []
    for index, item in enumerate([*listed, *tables], start=1):
        specs.extend(_step(item, f"recipe {path}, step {index}"))
    if not specs:
        raise InputError(f"recipe {path} lists no passes")
    return specs


def recipe_text(specs: list[PassSpec]) -> str:
    """The steps as one `--passes`-style line, for reports and logs."""
    return ",".join(str(spec) for spec in specs)
