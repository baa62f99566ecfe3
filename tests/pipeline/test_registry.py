"""Tests of the pass registry, recipes and the `--passes` mini-language."""

from __future__ import annotations

import inspect

import pytest

from qcompile import (
    Numerics,
    Pass,
    PassResult,
    PipelineContext,
    register_pass,
    register_recipe,
)
from qcompile.errors import InputError
from qcompile.pipeline.registry import (
    PassSpec,
    build_pass,
    expand,
    parse_pass_list,
    registered_passes,
    registered_recipes,
)


class _Nothing(Pass):
    """Changes nothing."""

    numerics = Numerics.EXACT

    def call(self, model):
        return PassResult(model, modified=False)


def test_builtin_passes_and_uniform_recipes_are_registered() -> None:
    assert {"calibrate", "quantize"} <= set(registered_passes())
    assert {"fp", "w8a8", "w6a6", "w4a4"} <= set(registered_recipes())


def test_register_pass_sets_the_name_and_makes_the_pass_findable(clean_registry) -> None:
    @register_pass("test_nothing")
    class Nothing(_Nothing):
        pass

    assert Nothing.name == "test_nothing" and Nothing().pass_name == "test_nothing"
    assert registered_passes()["test_nothing"] is Nothing
    assert expand(parse_pass_list("test_nothing")) == [PassSpec("test_nothing")]


def test_registering_the_same_class_twice_is_harmless(clean_registry) -> None:
    class Again(_Nothing):
        pass

    register_pass("test_again")(Again)
    register_pass("test_again")(Again)
    assert registered_passes()["test_again"] is Again


@pytest.mark.parametrize("thing", [lambda model: model, object, int, "text"])
def test_register_pass_rejects_what_is_not_a_pass_subclass(clean_registry, thing) -> None:
    with pytest.raises(TypeError, match="subclass of qcompile.Pass"):
        register_pass("test_not_a_pass")(thing)
    assert "test_not_a_pass" not in registered_passes()


def test_register_pass_rejects_numerics_that_are_not_a_numerics_member(clean_registry) -> None:
    class Stringly(_Nothing):
        numerics = "EXACT"

    with pytest.raises(TypeError, match="numerics"):
        register_pass("test_stringly")(Stringly)


def test_a_second_pass_under_a_taken_name_is_rejected(clean_registry) -> None:
    class First(_Nothing):
        pass

    class Second(_Nothing):
        pass

    register_pass("test_taken")(First)
    with pytest.raises(ValueError, match="'test_taken' is already registered"):
        register_pass("test_taken")(Second)
    assert registered_passes()["test_taken"] is First


def test_a_builtin_pass_name_cannot_be_taken(clean_registry) -> None:
    class Impostor(_Nothing):
        pass

    with pytest.raises(ValueError, match="'calibrate' is already registered"):
        register_pass("calibrate")(Impostor)


def test_pass_and_recipe_names_do_not_collide(clean_registry) -> None:
    class Clash(_Nothing):
        pass

    with pytest.raises(ValueError, match="already a recipe"):
        register_pass("w8a8")(Clash)
    with pytest.raises(ValueError, match="already a pass"):
        register_recipe("quantize", ["calibrate"], "clash")


def test_a_recipe_expands_to_its_steps_with_their_default_options() -> None:
    steps = expand(parse_pass_list("w4a4"))
    assert [s.name for s in steps] == ["calibrate", "quantize"]
    assert steps[0].options == {"observer": "mse", "bits": 4}
    assert steps[1].options == {"weight_bits": 4, "act_bits": 4, "keep_float": "Softmax"}


def test_recipe_options_go_only_to_the_steps_that_accept_them() -> None:
    steps = expand(parse_pass_list("w8a8:observer=percentile:weight_dtype=int8:act_bits=6"))
    calibrate, quantize = steps
    assert calibrate.options == {"observer": "percentile", "bits": 8}
    assert quantize.options == {"weight_bits": 8, "act_bits": 6, "keep_float": "Softmax", "weight_dtype": "int8"}


def test_a_recipe_option_several_steps_accept_goes_to_each() -> None:
    calibrate, quantize = expand(parse_pass_list("w8a8:op_types=MatMul"))
    assert calibrate.options["op_types"] == "MatMul" and quantize.options["op_types"] == "MatMul"


def test_a_recipe_option_no_step_accepts_is_an_input_error() -> None:
    with pytest.raises(InputError, match="recipe 'w8a8' has no step taking option.* bogus, zzz"):
        expand(parse_pass_list("w8a8:zzz=1:bogus=2"))


def test_a_recipe_with_an_unregistered_step_is_an_input_error(clean_registry) -> None:
    register_recipe("test_typo", ["calibrate", "quantise"], "has a typo")
    with pytest.raises(InputError, match="recipe 'test_typo' has a step 'quantise' that is not a registered pass"):
        expand(parse_pass_list("test_typo"))


def test_the_empty_recipe_expands_to_nothing() -> None:
    assert expand(parse_pass_list("fp")) == []


def test_unknown_pass_error_lists_every_known_name() -> None:
    with pytest.raises(InputError, match="unknown pass or recipe 'quantise'") as info:
        expand(parse_pass_list("calibrate,quantise"))
    message = str(info.value)
    for name in list(registered_passes()) + list(registered_recipes()):
        assert name in message


def test_unknown_option_error_lists_the_options_the_pass_takes() -> None:
    with pytest.raises(InputError, match="pass 'quantize' has no option bitz") as info:
        build_pass(PassSpec("quantize", {"bitz": 4}), PipelineContext())
    listed = str(info.value).split("(options: ")[1].rstrip(")").split(", ")
    from qcompile.passes.quantize.uniform import QuantizeUniformPass

    expected = [p for p in inspect.signature(QuantizeUniformPass.__init__).parameters if p not in ("self", "context")]
    assert (
        sorted(listed)
        == sorted(expected)
        == sorted(
            [
                "weight_bits",
                "act_bits",
                "op_types",
                "weight_dtype",
                "keep_float",
                "weight_search",
                "weight_group",
                "weight_symmetric",
                "act_granularity",
                "act_symmetric",
                "act_clip_ratio",
                "gptq_sequential",
                "gptq_act_order",
                "keep_head_float",
                "act_matmuls",
                "group_clip",
            ]
        )
    )


def test_calibrate_takes_observer_options_by_name() -> None:
    pass_ = build_pass(
        PassSpec("calibrate", {"observer": "percentile", "percentile": 99.9, "num_bins": 512}), PipelineContext()
    )
    assert pass_.observer_options == {"percentile": 99.9, "num_bins": 512}


def test_an_observer_option_the_observer_does_not_take_is_an_input_error() -> None:
    with pytest.raises(InputError, match="percentile.*'minmax'"):
        build_pass(PassSpec("calibrate", {"observer": "minmax", "percentile": 99.9}), PipelineContext())


def test_build_pass_hands_the_context_to_passes_that_take_one() -> None:
    context = PipelineContext(seed=7)
    assert build_pass(PassSpec("calibrate"), context).context is context


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (PassSpec("quantize", {"weight_bits": 9}), "pass 'quantize': weight_bits must be in 2..8, got 9"),
        (PassSpec("quantize", {"weight_dtype": "int4"}), "pass 'quantize': weight_dtype must be one of"),
        (PassSpec("calibrate", {"observer": "magic"}), "pass 'calibrate': unknown observer 'magic'"),
        (PassSpec("calibrate", {"bits": "eight"}), "pass 'calibrate' option bits takes an integer, got 'eight'"),
        (
            parse_pass_list("quantize:weight_bits=8.9")[0],
            r"pass 'quantize' option weight_bits takes an integer, got 8\.9",
        ),
        (
            parse_pass_list("quantize:weight_bits=1e999")[0],
            "pass 'quantize' option weight_bits takes an integer, got '1e999'",
        ),
        (
            parse_pass_list("quantize:weight_bits=true")[0],
            "pass 'quantize' option weight_bits takes an integer, got True",
        ),
        (
            parse_pass_list("calibrate:observer=percentile:percentile=nan")[0],
            "pass 'calibrate' option percentile takes",
        ),
    ],
)
def test_bad_option_values_are_input_errors_naming_the_pass(spec: PassSpec, match: str) -> None:
    with pytest.raises(InputError, match=match):
        build_pass(spec, PipelineContext())


def test_build_pass_rejects_an_unknown_name() -> None:
    with pytest.raises(InputError, match="unknown pass 'nope'"):
        build_pass(PassSpec("nope"), PipelineContext())


def test_pass_lists_parse_names_and_typed_options() -> None:
    specs = parse_pass_list("a:x=1:y=true,b")
    assert specs == [PassSpec("a", {"x": 1, "y": True}), PassSpec("b", {})]
    assert type(specs[0].options["x"]) is int and specs[0].options["y"] is True


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1.5", 1.5),
        ("-3", -3),
        ("1e-3", 1e-3),
        ("False", False),
        ("TRUE", True),
        ("mse", "mse"),
        ("MatMul+Gemm", "MatMul+Gemm"),
        ("'quoted'", "quoted"),
        ("None", None),
    ],
)
def test_option_values_are_parsed_as_python_literals_or_kept_as_text(text: str, value) -> None:
    (spec,) = parse_pass_list(f"p:k={text}")
    assert spec.options == {"k": value} and type(spec.options["k"]) is type(value)


def test_whitespace_around_items_names_and_options_is_ignored() -> None:
    assert parse_pass_list(" a : k = 2 , b ") == [PassSpec("a", {"k": 2}), PassSpec("b")]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a,,b", "empty pass name"),
        ("a,", "empty pass name"),
        ("", "empty pass name"),
        ("a:x", "option 'x' of pass 'a' must be key=value"),
        ("a:=1", "must be key=value"),
        ("a:x=1:", "must be key=value"),
    ],
)
def test_malformed_pass_lists_are_input_errors(text: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        parse_pass_list(text)


def test_a_pass_spec_prints_as_it_parses() -> None:
    spec = PassSpec("calibrate", {"observer": "mse", "bits": 4})
    assert str(spec) == "calibrate:observer=mse:bits=4"
    assert parse_pass_list(str(spec)) == [spec]


def test_a_step_with_options_but_no_name_is_rejected_when_parsed():
    with pytest.raises(InputError, match="no pass name"):
        parse_pass_list(":x=1")


def test_registering_a_different_recipe_under_an_existing_name_is_rejected(clean_registry):
    from qcompile.pipeline.registry import register_recipe

    register_recipe("my-recipe", ["calibrate"], "first")
    register_recipe("my-recipe", ["calibrate"], "first")  # re-importing the same definition is fine
    with pytest.raises(ValueError, match="already registered"):
        register_recipe("my-recipe", ["quantize"], "second")


# ----------------------------------------------------------- target-bit inheritance and recipe completion


def _register_bit_passes() -> None:
    """Throwaway passes (registered under `clean_registry`): a transform tuned for a bit width, given under
    `act_bits` or `bits`; a quantizing pass with its own act_bits default (5); a quantizing pass without
    act_bits; and a non-quantizing pass."""
    from qcompile.ir.properties import Property

    @register_pass("test_tb_target")
    class Target(_Nothing):
        target_bits_option = "act_bits"

        def __init__(self, act_bits: int = 8) -> None:
            self.act_bits = act_bits

    @register_pass("test_tb_bits")
    class TargetBits(_Nothing):
        target_bits_option = "bits"

        def __init__(self, bits: int = 8, act_bits: int = 3) -> None:
            self.bits, self.act_bits = bits, act_bits

    @register_pass("test_tb_quant5")
    class Quant5(_Nothing):
        establishes = frozenset({Property.QUANTIZED})

        def __init__(self, act_bits: int = 5) -> None:
            self.act_bits = act_bits

    @register_pass("test_tb_quant_nobits")
    class QuantNoBits(_Nothing):
        establishes = frozenset({Property.QUANTIZED})

    @register_pass("test_tb_plain")
    class Plain(_Nothing):
        pass


def _options(text: str) -> list[tuple[str, dict]]:
    return [(s.name, s.options) for s in expand(parse_pass_list(text))]


@pytest.mark.parametrize(
    ("text", "inherited"),
    [
        ("test_tb_target,quantize:act_bits=4", {"act_bits": 4}),  # the next quantizing step's act_bits
        ("test_tb_target,quantize", {"act_bits": 8}),  # quantize's default act_bits
        ("test_tb_target,quantize:weight_bits=4", {"act_bits": 8}),  # weight bits are not activation bits
        ("test_tb_target,test_tb_quant5", {"act_bits": 5}),  # that pass's own default
        ("test_tb_target,w6a6", {"act_bits": 6}),  # through a recipe's quantize step
        (
            "test_tb_target,calibrate:bits=4,test_tb_plain,quantize:act_bits=3",
            {"act_bits": 3},
        ),  # skips non-quantizing steps
        ("test_tb_target,quantize:act_bits=4,quantize:act_bits=6", {"act_bits": 4}),  # the NEXT one, not a later one
        ("quantize:act_bits=4,test_tb_target,quantize:act_bits=6", {"act_bits": 6}),  # not an earlier one
        ("test_tb_target", {}),  # nothing follows
        ("test_tb_target,calibrate:bits=4", {}),  # calibrate does not quantize
        ("quantize:act_bits=4,test_tb_target", {}),  # only an earlier quantizing step
        ("test_tb_target,test_tb_quant_nobits,quantize:act_bits=4", {}),  # the next quantizing step has no act_bits
        ("test_tb_target:act_bits=2,quantize:act_bits=4", {"act_bits": 2}),  # an explicit option wins
    ],
)
def test_a_target_bits_pass_inherits_the_act_bits_of_the_next_quantizing_step(clean_registry, text, inherited) -> None:
    _register_bit_passes()
    steps = _options(text)
    (target,) = [options for name, options in steps if name == "test_tb_target"]
    assert target == inherited
    # the other steps are untouched
    assert [(n, o) for n, o in steps if n != "test_tb_target"] == [
        (s.name, s.options) for s in expand([s for s in parse_pass_list(text) if s.name != "test_tb_target"])
    ]


def test_the_target_option_is_the_one_the_pass_names(clean_registry) -> None:
    _register_bit_passes()
    # `bits` receives the next step's act_bits; the pass's own act_bits option is not touched
    assert _options("test_tb_bits,quantize:act_bits=4")[0] == ("test_tb_bits", {"bits": 4})
    assert _options("test_tb_bits:bits=7,quantize:act_bits=4")[0] == ("test_tb_bits", {"bits": 7})
    assert _options("test_tb_bits:act_bits=2,quantize:act_bits=4")[0] == ("test_tb_bits", {"act_bits": 2, "bits": 4})


def test_each_target_pass_inherits_from_its_own_next_quantizing_step(clean_registry) -> None:
    _register_bit_passes()
    steps = _options("test_tb_target,quantize:act_bits=4,test_tb_target,test_tb_bits,quantize:act_bits=6")
    assert steps[0] == ("test_tb_target", {"act_bits": 4})
    assert steps[2] == ("test_tb_target", {"act_bits": 6})
    assert steps[3] == ("test_tb_bits", {"bits": 6})


def test_a_recipe_option_counts_as_explicit_for_its_target_steps(clean_registry) -> None:
    _register_bit_passes()
    register_recipe("test_tb_recipe", ["test_tb_target", "test_tb_plain"], "a target step and a plain one")
    assert _options("test_tb_recipe,w4a4")[0] == ("test_tb_target", {"act_bits": 4})
    assert _options("test_tb_recipe:act_bits=2,w4a4")[0] == ("test_tb_target", {"act_bits": 2})
    # a default option written into the recipe's step is explicit too
    register_recipe("test_tb_recipe_fixed", [("test_tb_target", {"act_bits": 6})], "a fixed target")
    assert _options("test_tb_recipe_fixed,w4a4")[0] == ("test_tb_target", {"act_bits": 6})


def test_completes_with_appends_its_tail_only_when_nothing_quantizes(clean_registry) -> None:
    _register_bit_passes()
    register_recipe("test_cw", ["test_tb_target", "test_tb_plain"], "completes with w8a8", completes_with="w8a8")
    w8a8 = [(s.name, s.options) for s in expand(parse_pass_list("w8a8"))]
    # alone: the tail is appended, and the target inherits from it
    assert _options("test_cw") == [("test_tb_target", {"act_bits": 8}), ("test_tb_plain", {}), *w8a8]
    # with non-quantizing steps around it: still appended, at the very end
    assert _options("calibrate,test_cw,test_tb_plain") == [
        ("calibrate", {}),
        ("test_tb_target", {"act_bits": 8}),
        ("test_tb_plain", {}),
        ("test_tb_plain", {}),
        *w8a8,
    ]
    # a quantizing step anywhere (a recipe, a bare pass, a plugin pass, before or after): no tail
    w4a4 = [(s.name, s.options) for s in expand(parse_pass_list("w4a4"))]
    assert _options("test_cw,w4a4") == [("test_tb_target", {"act_bits": 4}), ("test_tb_plain", {}), *w4a4]
    assert _options("test_cw,quantize") == [
        ("test_tb_target", {"act_bits": 8}),
        ("test_tb_plain", {}),
        ("quantize", {}),
    ]
    assert _options("test_cw,test_tb_quant5") == [
        ("test_tb_target", {"act_bits": 5}),
        ("test_tb_plain", {}),
        ("test_tb_quant5", {}),
    ]
    assert _options("w4a4,test_cw") == [*w4a4, ("test_tb_target", {}), ("test_tb_plain", {})]
    # the same recipe twice: one tail
    assert _options("test_cw,test_cw") == [("test_tb_target", {"act_bits": 8}), ("test_tb_plain", {})] * 2 + w8a8


def test_the_tail_goes_before_the_first_step_that_needs_a_quantized_model(clean_registry) -> None:
    _register_bit_passes()
    register_recipe("test_cw_lower", ["test_tb_target"], "completes with w8a8", completes_with="w8a8")
    w8a8 = [(s.name, s.options) for s in expand(parse_pass_list("w8a8"))]
    # intonly requires QUANTIZED: `repq,intonly` means repq, its w8a8 tail, then the lowering
    assert _options("test_cw_lower,test_tb_plain,intonly") == [
        ("test_tb_target", {"act_bits": 8}),
        ("test_tb_plain", {}),
        *w8a8,
        ("intonly", {}),
    ]
    steps = [s.name for s in expand(parse_pass_list("repq,intonly"))]
    assert steps == ["repq-ln", "log-softmax", "calibrate", "quantize", "intonly"]


def test_the_tail_is_expanded_before_bits_are_inherited(clean_registry) -> None:
    _register_bit_passes()
    register_recipe("test_cw4", ["test_tb_target"], "completes with w4a4", completes_with="w4a4")
    steps = _options("test_cw4")
    assert steps[0] == ("test_tb_target", {"act_bits": 4})
    assert [name for name, _ in steps] == ["test_tb_target", "calibrate", "quantize"]


def test_a_bare_pass_has_no_completion(clean_registry) -> None:
    _register_bit_passes()
    register_recipe("test_cw_only", ["test_tb_target"], "completes with w8a8", completes_with="w8a8")
    assert _options("test_tb_target") == [("test_tb_target", {})]
    assert _options("repq-ln") == [("repq-ln", {})]


def test_a_completion_naming_an_unknown_recipe_is_an_input_error(clean_registry) -> None:
    _register_bit_passes()
    register_recipe("test_cw_typo", ["test_tb_plain"], "completes with a typo", completes_with="w8a9")
    with pytest.raises(InputError, match="unknown pass or recipe 'w8a9'"):
        expand(parse_pass_list("test_cw_typo"))
    assert _options("test_cw_typo,w8a8")[0] == ("test_tb_plain", {})  # unused when something quantizes
