"""Passes and recipes by name, and the `--passes` mini-language.

`--passes` is a comma-separated list of steps; a step is a name with optional `:key=value` options,
e.g. `calibrate:observer=mse,quantize:weight_bits=4`. A name is a registered pass or a recipe (a named
list of steps with default options); options given to a recipe go to every step of it that accepts them.

Two expansion rules connect transform recipes to the quantization that follows them:

* a step whose pass declares `target_bits_option` (e.g. `repq-ln`'s `act_bits`) and was not given it
  inherits the `act_bits` of the next quantizing step (one that establishes QUANTIZED), so
  `repq,w4a4` tunes RepQ-ViT's search for 4 bits; `inherited_options` generalizes this ({own option:
  ("quantize" or a pass name, its option)}: `flatquant,w4a4kv4` trains for the weight and activation bits,
  the activation symmetry and the KV bits that follow);
* a recipe may name a `completes_with` recipe, appended when the whole list has no quantizing step:
  `repq` alone means `repq,w8a8`.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import math
import sys
import types as types_module
import typing
from pathlib import Path
from typing import Any

from qcompile.errors import InputError
from qcompile.pipeline.context import PipelineContext
from qcompile.pipeline.pass_base import Numerics, Pass

__all__ = [
    "PassSpec",
    "Recipe",
    "register_pass",
    "register_recipe",
    "registered_passes",
    "registered_recipes",
    "decoder_recipes",
    "parse_pass_list",
    "expand",
    "build_pass",
    "load_plugin",
    "load_builtin_passes",
    "pass_options",
]

_PASSES: dict[str, type[Pass]] = {}
_RECIPES: dict[str, Recipe] = {}
_DECODER_RECIPES: dict[str, Recipe] = {}  # what a recipe name means on decoder LLMs


@dataclasses.dataclass(frozen=True)
class PassSpec:
    """One step: a registered name and its options."""

    name: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        opts = "".join(f":{k}={v}" for k, v in self.options.items())
        return f"{self.name}{opts}"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A named list of steps with a one-line description."""

    name: str
    steps: tuple[PassSpec, ...]
    doc: str
    completes_with: str | None = None


def register_pass(name: str):
    """Class decorator: make a `Pass` subclass runnable by `name` (CLI, recipes, Python)."""

    def decorate(cls: type[Pass]) -> type[Pass]:
        if not (isinstance(cls, type) and issubclass(cls, Pass)):
            raise TypeError(f"@register_pass('{name}') needs a subclass of qcompile.Pass")
        if not isinstance(cls.numerics, Numerics):
            raise TypeError(f"pass '{name}' must declare numerics as a Numerics member")
        if name in _PASSES and _PASSES[name] is not cls:
            existing = _PASSES[name]
            if (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
                raise ValueError(f"a pass named '{name}' is already registered ({existing.__qualname__})")
        if name in _RECIPES:
            raise ValueError(f"'{name}' is already a recipe name")
        cls.name = name
        _PASSES[name] = cls
        return cls

    return decorate


def _specs(steps: list[str | tuple[str, dict[str, Any]]]) -> tuple[PassSpec, ...]:
    return tuple(PassSpec(s) if isinstance(s, str) else PassSpec(s[0], dict(s[1])) for s in steps)


def register_recipe(
    name: str,
    steps: list[str | tuple[str, dict[str, Any]]],
    doc: str,
    completes_with: str | None = None,
    decoder_steps: list[str | tuple[str, dict[str, Any]]] | None = None,
    decoder_doc: str | None = None,
) -> Recipe:
    """Register `name` as shorthand for `steps` (names, or (name, options) pairs); `completes_with` names
    the recipe appended when a pass list using `name` has no quantizing step. `decoder_steps` (with
    `decoder_doc`) are what the name means on decoder LLMs (`expand(..., decoder=True)`): `w8a8` is
    per-tensor on encoders and per-token on LLMs."""
    if name in _PASSES:
        raise ValueError(f"'{name}' is already a pass name")
    if name in _RECIPES and _RECIPES[name].doc != doc:
        raise ValueError(f"a recipe named '{name}' is already registered")
    recipe = Recipe(name, _specs(steps), doc, completes_with)
    _RECIPES[name] = recipe
    if decoder_steps is not None:
        _DECODER_RECIPES[name] = Recipe(name, _specs(decoder_steps), decoder_doc or doc)
    return recipe


def decoder_recipes() -> dict[str, Recipe]:
    """The recipes whose steps differ on decoder LLMs, by name."""
    load_builtin_passes()
    return dict(sorted(_DECODER_RECIPES.items()))


def registered_passes() -> dict[str, type[Pass]]:
    load_builtin_passes()
    return dict(sorted(_PASSES.items()))


def registered_recipes() -> dict[str, Recipe]:
    load_builtin_passes()
    return dict(sorted(_RECIPES.items()))


def load_builtin_passes() -> None:
    """Import the pass library so its decorators register every built-in pass and recipe."""
    importlib.import_module("qcompile.passes")


def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text
    if isinstance(value, float) and not math.isfinite(value):
        return text  # 1e999 is not a number any option takes; keep the words the user wrote
    return value


def parse_pass_list(text: str) -> list[PassSpec]:
    """Parse the `--passes` string into steps (names are not resolved here)."""
    specs = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise InputError(f"empty pass name in --passes '{text}'")
        name, *option_texts = item.split(":")
        if not name.strip():
            raise InputError(f"step '{item}' in --passes has options but no pass name")
        options: dict[str, Any] = {}
        for option in option_texts:
            key, sep, value = option.partition("=")
            if not sep or not key:
                raise InputError(f"option '{option}' of pass '{name}' must be key=value")
            options[key.strip()] = _parse_value(value.strip())
        specs.append(PassSpec(name.strip(), options))
    return specs


def _option_parameters(cls: type[Pass]) -> dict[str, inspect.Parameter]:
    """The constructor's named options (not `self`, `context`, nor an inherited `*args, **kwargs`)."""
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    params = inspect.signature(cls.__init__).parameters
    return {name: p for name, p in params.items() if name not in ("self", "context") and p.kind not in variadic}


def _accepted_options(cls: type[Pass]) -> set[str]:
    return set(_option_parameters(cls))


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list, frozenset, set)):
        return [_plain(v) for v in value]
    return str(value)


def pass_options(cls: type[Pass]) -> dict[str, dict[str, Any]]:
    """Each option of a pass: `default` (absent when the option is required) and `types`, the plain types
    its annotation allows (what `--passes name:key=value` is checked against)."""
    types = _option_types(cls)
    described = {}
    for name, parameter in _option_parameters(cls).items():
        item: dict[str, Any] = {"types": sorted(t.__name__ for t in types.get(name, ()) if t is not type(None))}
        if parameter.default is not inspect.Parameter.empty:
            item["default"] = _plain(parameter.default)
        described[name] = item
    return described


def _expand_names(specs: list[PassSpec], decoder: bool = False) -> tuple[list[PassSpec], list[str]]:
    """Recipes replaced by their steps (their decoder-LLM steps with `decoder`), and the `completes_with`
    tails of the recipes used."""
    out: list[PassSpec] = []
    tails: list[str] = []
    for spec in specs:
        if spec.name in _PASSES:
            out.append(spec)
        elif spec.name in _RECIPES:
            recipe = _DECODER_RECIPES[spec.name] if decoder and spec.name in _DECODER_RECIPES else _RECIPES[spec.name]
            unused = set(spec.options)
            for step in recipe.steps:
                if step.name not in _PASSES:
                    raise InputError(f"recipe '{spec.name}' has a step '{step.name}' that is not a registered pass")
                accepted = _accepted_options(_PASSES[step.name])
                extra = {k: v for k, v in spec.options.items() if k in accepted}
                unused -= set(extra)
                out.append(PassSpec(step.name, {**step.options, **extra}))
            if unused:
                raise InputError(f"recipe '{spec.name}' has no step taking option(s) {', '.join(sorted(unused))}")
            if recipe.completes_with and recipe.completes_with not in tails:
                tails.append(recipe.completes_with)
        else:
            known = ", ".join(sorted(_PASSES) + sorted(_RECIPES))
            raise InputError(f"unknown pass or recipe '{spec.name}' (known: {known})")
    return out, tails


def _quantizes(spec: PassSpec) -> bool:
    from qcompile.ir.properties import Property

    return Property.QUANTIZED in _PASSES[spec.name].establishes


def _needs_quantized(spec: PassSpec) -> bool:
    from qcompile.ir.properties import Property

    return Property.QUANTIZED in _PASSES[spec.name].requires


def _option(spec: PassSpec, name: str) -> Any:
    """The value of option `name` of a step: given, else the pass's default (None: the pass has none)."""
    if name in spec.options:
        return spec.options[name]
    parameter = inspect.signature(_PASSES[spec.name].__init__).parameters.get(name)
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def _inherited(out: list[PassSpec], index: int) -> dict[str, Any]:
    """Options step `index` takes from later steps (`target_bits_option`, `inherited_options`)."""
    cls = _PASSES[out[index].name]
    wanted = dict(cls.inherited_options)
    if cls.target_bits_option is not None:
        wanted[cls.target_bits_option] = ("quantize", "act_bits")
    values = {}
    for own, (source, name) in wanted.items():
        if own in out[index].options:
            continue
        later = [s for s in out[index + 1 :] if (_quantizes(s) if source == "quantize" else s.name == source)]
        value = _option(later[0], name) if later else None
        if value is not None:
            values[own] = value
    return values


def expand(specs: list[PassSpec], decoder: bool = False) -> list[PassSpec]:
    """Replace recipe names by their steps (adding `completes_with` tails when nothing quantizes, before the
    first step that requires a quantized model), fill
    inherited target bit widths, and reject unknown names. `decoder`: the model is a decoder LLM (recipes
    with decoder steps expand to those)."""
    load_builtin_passes()
    out, tails = _expand_names(specs, decoder)
    if tails and not any(_quantizes(s) for s in out):
        # the tail goes before the first step that needs a quantized model (`repq,intonly` lowers the
        # w8a8 model), else at the end
        needs = [i for i, s in enumerate(out) if _needs_quantized(s)]
        at = needs[0] if needs else len(out)
        for tail in tails:
            more, _ = _expand_names([PassSpec(tail)], decoder)
            out[at:at] = more
            at += len(more)
    for index, spec in enumerate(out):
        values = _inherited(out, index)
        if values:
            out[index] = PassSpec(spec.name, {**spec.options, **values})
    return out


def _option_types(cls: type[Pass]) -> dict[str, set[type]]:
    """The plain types each constructor option is annotated with ({} where annotations do not resolve)."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # a plugin's annotations may name things that do not resolve; then nothing is coerced
        return {}
    types: dict[str, set[type]] = {}
    for name, hint in hints.items():
        members = (
            typing.get_args(hint)
            if isinstance(hint, types_module.UnionType) or typing.get_origin(hint) is typing.Union
            else (hint,)
        )
        types[name] = {typing.get_origin(m) or m for m in members}
    return types


def _coerce_option(pass_name: str, key: str, value: Any, allowed: set[type]) -> Any:
    """Check an option value against its annotation: integers stay integers (8.9 and 1e999 are refused, not
    truncated), numbers are finite, words stay words."""
    if not allowed or value is None and type(None) in allowed:
        return value
    where = f"pass '{pass_name}' option {key}"
    if bool in allowed and isinstance(value, bool):
        return value
    if int in allowed and float not in allowed:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if str in allowed or tuple in allowed:
            return str(value)
        raise InputError(f"{where} takes an integer, got {value!r}")
    if float in allowed and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise InputError(f"{where} takes a finite number, got {value!r}")
        return value
    if str in allowed:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str):
            return value
    if tuple in allowed and isinstance(value, tuple):
        return value
    kinds = sorted(t.__name__ for t in allowed if t is not type(None))
    raise InputError(f"{where} takes {' or '.join(kinds)}, got {value!r}")


def build_pass(spec: PassSpec, context: PipelineContext) -> Pass:
    """Instantiate the pass of `spec`, handing it `context` if its constructor takes one."""
    load_builtin_passes()
    cls = _PASSES.get(spec.name)
    if cls is None:
        raise InputError(f"unknown pass '{spec.name}'")
    accepted = _accepted_options(cls)
    unknown = set(spec.options) - accepted
    if unknown:
        raise InputError(
            f"pass '{spec.name}' has no option {', '.join(sorted(unknown))} (options: "
            f"{', '.join(sorted(accepted)) or 'none'})"
        )
    option_types = _option_types(cls)
    kwargs = {
        key: _coerce_option(spec.name, key, value, option_types.get(key, set())) for key, value in spec.options.items()
    }
    if "context" in inspect.signature(cls.__init__).parameters:
        kwargs["context"] = context
    try:
        instance = cls(**kwargs)
    except (TypeError, ValueError, OverflowError, ArithmeticError) as error:
        raise InputError(f"pass '{spec.name}': {' '.join(str(error).split())}") from None
    try:  # the options as given, for the report (a plugin class with __slots__ goes without)
        instance.spec_options = {key: value for key, value in kwargs.items() if key != "context"}
    except AttributeError:
        pass
    return instance


def load_plugin(path: str | Path) -> None:
    """Import a user's Python file so that its `@register_pass` classes become available.

    The built-in passes are registered first, so a plugin cannot take their names. A plugin is code run
    with the user's rights; any failure of it, `sys.exit` included, is reported as an `InputError`
    naming the file, and no bytecode is written next to it."""
    load_builtin_passes()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"plugin {path}: no such file" + (" (a directory)" if path.is_dir() else ""))
    module_name = f"qcompile_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"plugin {path}: not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    dont_write = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        spec.loader.exec_module(module)
    except SystemExit as error:
        del sys.modules[module_name]
        raise InputError(f"plugin {path} called sys.exit({error.code!r}) while being imported") from None
    except Exception as error:
        del sys.modules[module_name]
        first = " ".join(str(error).split())[:300]
        raise InputError(f"plugin {path} failed to import: {type(error).__name__}: {first}") from None
    finally:
        sys.dont_write_bytecode = dont_write
