"""Tests of the Fashion-MNIST loader (reads the installed `dataset-fashion-mnist` files) and ViT preprocessing."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from qcompile.errors import DataUnavailableError, InputError
from qcompile.zoo.data.fashion_mnist import CLASS_NAMES, load_split, vit_preprocess

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _write_idx(path: Path, magic: int, array: np.ndarray) -> None:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


def test_test_split_shapes_and_dtypes() -> None:
    images, labels = load_split("test")
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10_000,) and labels.dtype == np.int64
    assert labels.min() == 0 and labels.max() == len(CLASS_NAMES) - 1
    assert images.max() > 200 and images.min() == 0  # real pictures, not an all-zero buffer


def test_test_split_is_balanced() -> None:
    _, labels = load_split("test")
    assert np.bincount(labels, minlength=10).tolist() == [1000] * 10


def test_train_split_shapes() -> None:
    images, labels = load_split("train")
    assert images.shape == (60_000, 28, 28) and labels.shape == (60_000,)
    assert np.bincount(labels, minlength=10).tolist() == [6000] * 10


def test_class_names() -> None:
    assert len(CLASS_NAMES) == 10 and CLASS_NAMES[0] == "T-shirt/top" and CLASS_NAMES[9] == "Ankle boot"


def test_bad_split_is_input_error() -> None:
    with pytest.raises(InputError, match="validation"):
        load_split("validation")


def test_missing_files_raise_data_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QCOMPILE_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataUnavailableError) as info:
        load_split("test")
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message and "nowhere" in message
    assert "\n" not in message


def test_parses_synthetic_idx_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 0x803, images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 0x801, labels)
    monkeypatch.setenv("QCOMPILE_FASHION_MNIST_DIR", str(tmp_path))
    got_images, got_labels = load_split("test")
    np.testing.assert_array_equal(got_images, images)
    assert got_labels.dtype == np.int64 and got_labels.tolist() == [3, 1, 4, 1, 5]


def test_corrupt_idx_is_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 0x801, np.zeros((4,), np.uint8))  # wrong magic
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 0x801, np.zeros((4,), np.uint8))
    monkeypatch.setenv("QCOMPILE_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(InputError, match="idx"):
        load_split("test")


@pytest.mark.parametrize("value", [0, 37, 255])
def test_preprocess_constant_image_matches_normalised_value(value: int) -> None:
    images = np.full((2, 28, 28), value, dtype=np.uint8)
    out = vit_preprocess(images)
    assert out.shape == (2, 3, 224, 224) and out.dtype == np.float32
    for channel in range(3):
        expected = (value / 255.0 - MEAN[channel]) / STD[channel]
        np.testing.assert_allclose(out[:, channel], expected, rtol=0, atol=1e-5)


def test_preprocess_replicates_grayscale_and_keeps_range() -> None:
    images, _ = load_split("test")
    out = vit_preprocess(images[:3], size=64)
    assert out.shape == (3, 3, 64, 64)
    unnormalised = out * np.array(STD, np.float32)[:, None, None] + np.array(MEAN, np.float32)[:, None, None]
    np.testing.assert_allclose(unnormalised[:, 0], unnormalised[:, 1], atol=1e-5)
    np.testing.assert_allclose(unnormalised[:, 0], unnormalised[:, 2], atol=1e-5)
    assert unnormalised.min() >= -1e-5 and unnormalised.max() <= 1 + 1e-5


def test_preprocess_bilinear_upsampling_of_a_step() -> None:
    # Left half black, right half white: after 8x bilinear upsampling (align_corners=False) the far
    # columns keep their values and the two output columns either side of the edge are 1/16 and 15/16 of the way.
    image = np.zeros((1, 28, 28), dtype=np.uint8)
    image[:, :, 14:] = 255
    row = vit_preprocess(image)[0, 0, 100] * STD[0] + MEAN[0]
    assert abs(row[0]) < 1e-5 and abs(row[-1] - 1) < 1e-5
    assert np.all(np.diff(row) >= -1e-6)
    np.testing.assert_allclose(row[[111, 112]], [7 / 16, 9 / 16], atol=1e-5)


def test_preprocess_handles_single_and_empty_batches() -> None:
    assert vit_preprocess(np.zeros((1, 28, 28), np.uint8)).shape == (1, 3, 224, 224)
    assert vit_preprocess(np.zeros((0, 28, 28), np.uint8)).shape == (0, 3, 224, 224)
    with pytest.raises(InputError):
        vit_preprocess(np.zeros((28, 28), np.uint8))
