"""Shared fixtures: the tiny synthetic encoder, an isolated cache directory, a registry guard, and the IR
verifier after every direct pass call.

`run_passes` and `PassManager` always run VerifyIR; `verify_after_every_pass` (autouse) gives the same check
to tests that call a pass directly (`SomePass()(model)`), so a pass that leaves an ill-formed model fails
the test that called it. A test that feeds a pass a deliberately ill-formed model marks itself `no_verify`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qcompile.ir.verifier import verify_model
from qcompile.pipeline import registry
from qcompile.pipeline.pass_base import Pass
from qcompile.testing.builders import TinyModel, tiny_encoder


@pytest.fixture
def tiny() -> TinyModel:
    """A fresh seeded one-block encoder with 4 calibration batches of 4 samples and one evaluation batch."""
    return tiny_encoder()


TINY_LLAMA_SHAPES = {
    "pow2": {},  # hidden 64, FFN 128, 4 query / 2 KV heads of 16: power-of-two Hadamards
    "paley": {"hidden_size": 48, "intermediate_size": 96, "head_dim": 12},  # 48 = 12·4, 96 = 12·8: Paley 12
    "deep": {"num_hidden_layers": 6},  # enough layers to prune a span that keeps the first and the last
}


@pytest.fixture(scope="session")
def tiny_llama_export(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], str]:
    """`tiny_llama_export(shape)`: the ONNX file of the seeded tiny Llama of that shape (TINY_LLAMA_SHAPES),
    exported from transformers once per test session."""
    files: dict[str, str] = {}

    def get(shape: str) -> str:
        if shape not in files:
            from qcompile.testing.tiny_llama import VOCAB, tiny_llama_module
            from qcompile.zoo.lm_export import export_causal_lm

            path = tmp_path_factory.mktemp(f"tiny-llama-{shape}") / "model.onnx"
            files[shape] = str(export_causal_lm(tiny_llama_module(0, **TINY_LLAMA_SHAPES[shape]), path, VOCAB))
        return files[shape]

    return get


@pytest.fixture
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point QCOMPILE_CACHE at a fresh temporary directory for the duration of the test."""
    path = tmp_path / "qcompile-cache"
    monkeypatch.setenv("QCOMPILE_CACHE", str(path))
    return path


@pytest.fixture
def lee_only_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh QCOMPILE_CACHE holding only Lee's corpus (copied from the real cache; skips without it), so a
    run exports its model into an empty cache."""
    import shutil

    from qcompile.zoo.data.lee import lee_path

    corpus = lee_path()
    if not corpus.is_file():
        pytest.skip(f"Lee corpus not in the cache ({corpus}); `make data` fetches it")
    cache = tmp_path / "cache"
    (cache / "data").mkdir(parents=True)
    shutil.copy(corpus, cache / "data" / corpus.name)
    monkeypatch.setenv("QCOMPILE_CACHE", str(cache))
    return cache


@pytest.fixture
def clean_registry() -> Iterator[None]:
    """Let a test register passes, recipes or plugins; restore the registry (and sys.modules) afterwards.

    The built-in passes are loaded first, so that restoring the snapshot never drops them (their module
    stays imported, so they would not register again).
    """
    registry.load_builtin_passes()
    passes, recipes = dict(registry._PASSES), dict(registry._RECIPES)
    modules = set(sys.modules)
    try:
        yield
    finally:
        registry._PASSES.clear()
        registry._PASSES.update(passes)
        registry._RECIPES.clear()
        registry._RECIPES.update(recipes)
        for name in set(sys.modules) - modules:
            if name.startswith("qcompile_plugin_"):
                del sys.modules[name]


@pytest.fixture(autouse=True)
def verify_after_every_pass(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run `verify_model` on the model after every direct `Pass.__call__` of the test."""
    if request.node.get_closest_marker("no_verify"):
        return
    call = Pass.__call__

    def call_and_verify(self, model_or_result, /):
        result = call(self, model_or_result)
        verify_model(result.model)
        return result

    monkeypatch.setattr(Pass, "__call__", call_and_verify)
