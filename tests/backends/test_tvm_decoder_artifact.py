"""The decoder library as files (`backends.tvm.decoder.artifact`): what is saved loads into sessions whose logits
are the NumPy reference's (the intact-kv prefix restored from its own file), the metadata says what was built, and
another CPU, another format and impossible cache sizes are refused with their reason (CUDA libraries:
test_tvm_decoder_gpu.py)."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest

from qcompile.backends.tvm.decoder import artifact, reference
from qcompile.backends.tvm.decoder.reader import read_decoder
from qcompile.backends.tvm.kernels.int4_matmul import flavours_for
from qcompile.backends.tvm.target import cpu_features, host_target

FLAVOURS = flavours_for(cpu_features(host_target(1)))
pytestmark = pytest.mark.skipif(not FLAVOURS, reason="the 4-bit matmul needs AVX2 at least")


@pytest.fixture(scope="module")
def saved_intact_kv(tiny_llama_artifact, tmp_path_factory):
    path = tiny_llama_artifact("intact-kv")
    folder = tmp_path_factory.mktemp("decoder-library")
    compiled = artifact.compile_decoder(path, capacity=12, chunk=4, threads=2)
    files = artifact.save(compiled, folder)
    return path, folder, compiled, files


def test_saved_files_and_metadata(saved_intact_kv) -> None:
    path, folder, compiled, files = saved_intact_kv
    assert [f.name for f in files] == [artifact.LIBRARY, artifact.METADATA, artifact.PREFIX]
    meta = json.loads((folder / artifact.METADATA).read_text())
    decoder = read_decoder(ir.load(str(path)))
    assert meta["format"] == artifact.FORMAT and meta["kernels"] == FLAVOURS[0]
    assert (meta["capacity"], meta["chunk"], meta["vocab"], meta["layers"]) == (12, 4, decoder.vocab, 2)
    assert meta["prefix_positions"] == 2 and len(meta["prefix_slots"]) == 4  # 2 layers × keys and values
    assert [entry["shape"] for entry in meta["cache"]] == [[decoder.kv_heads, 12, decoder.head_dim]] * 4


def test_a_loaded_library_decodes_as_the_reference_from_the_prefix(saved_intact_kv) -> None:
    path, folder, _, _ = saved_intact_kv
    decoder = read_decoder(ir.load(str(path)))
    session = artifact.load(folder).session()
    assert session.position == 2  # the intact-kv prefix's positions, restored from decoder.prefix.npz
    cache = reference.Cache.empty(decoder)
    ids = np.random.default_rng(3).integers(0, decoder.vocab, 7)
    want, cache = reference.step(decoder, ids[:5], cache)
    np.testing.assert_allclose(session.prefill(ids[:5]), want[-1], rtol=0, atol=1e-5 * float(np.abs(want).max()))
    for token in ids[5:]:
        want, cache = reference.step(decoder, np.array([token]), cache)
        np.testing.assert_allclose(session.step(int(token)), want[0], rtol=0, atol=1e-5 * float(np.abs(want).max()))


def test_two_sessions_of_one_library_keep_their_own_caches(saved_intact_kv) -> None:
    _, folder, _, _ = saved_intact_kv
    library = artifact.load(folder)
    first, second, alone = library.session(), library.session(), library.session()
    first.prefill([1, 2, 3])
    second.prefill([4, 5])
    alone.prefill([1, 2, 3])
    np.testing.assert_array_equal(first.step(6), alone.step(6))  # second's writes are not in first's cache
    assert (first.position, second.position) == (2 + 4, 2 + 2)


def test_load_refuses_another_cpu_and_another_format(saved_intact_kv, tmp_path) -> None:
    _, folder, _, files = saved_intact_kv
    for file in files:
        (tmp_path / file.name).write_bytes(file.read_bytes())
    meta = json.loads((tmp_path / artifact.METADATA).read_text())
    (tmp_path / artifact.METADATA).write_text(json.dumps({**meta, "cpu": "another-cpu"}))
    with pytest.raises(RuntimeError, match="built for CPU another-cpu"):
        artifact.load(tmp_path)
    (tmp_path / artifact.METADATA).write_text(json.dumps({**meta, "format": "qcompile-tvm/1"}))
    with pytest.raises(ValueError, match="expected 'qcompile-tvm-decoder/1'"):
        artifact.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no TVM decoder library"):
        artifact.load(tmp_path / "nothing")


def test_compile_refuses_impossible_sizes(tiny_llama_artifact) -> None:
    path = tiny_llama_artifact("w4a8")
    for capacity, chunk in ((0, None), (8, 9), (8, 0)):
        with pytest.raises(ValueError, match="capacity must be"):
            artifact.compile_decoder(path, capacity=capacity, chunk=chunk)
