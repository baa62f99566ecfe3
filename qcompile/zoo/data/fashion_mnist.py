"""Fashion-MNIST, read from the Debian package ``dataset-fashion-mnist``, and its ViT preprocessing.

The package installs the four idx files (gzip-compressed) under ``/usr/share/datasets/fashion-mnist``;
``$QCOMPILE_FASHION_MNIST_DIR`` overrides that directory.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np

from qcompile.errors import DataUnavailableError, InputError

__all__ = ["CLASS_NAMES", "IMAGENET_MEAN", "IMAGENET_STD", "data_dir", "load_split", "vit_preprocess"]

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_PREFIX = {"train": "train", "test": "t10k"}
_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension


def data_dir() -> Path:
    """Return the directory holding the Fashion-MNIST idx files.

    Returns:
        ``$QCOMPILE_FASHION_MNIST_DIR`` if set, else ``/usr/share/datasets/fashion-mnist``.
    """
    override = os.environ.get("QCOMPILE_FASHION_MNIST_DIR")
    return Path(override).expanduser() if override else DEFAULT_DIR


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Parse one gzip-compressed idx file of unsigned bytes.

    Args:
        path: the ``*-ubyte.gz`` file.
        magic: the expected big-endian magic number.
        ndim: the expected number of dimensions.

    Returns:
        A uint8 array with the shape stored in the header.

    Raises:
        DataUnavailableError: the file is missing.
        InputError: the file is not a well-formed idx file.
    """
    if not path.is_file():
        raise DataUnavailableError(
            f"Fashion-MNIST file {path} not found: run `apt-get install dataset-fashion-mnist` (or `make data`)"
        )
    with gzip.open(path, "rb") as stream:
        raw = stream.read()
    header = np.frombuffer(raw, dtype=">u4", count=1 + ndim) if len(raw) >= 4 * (1 + ndim) else None
    if header is None or int(header[0]) != magic:
        raise InputError(f"{path} is not an idx file of {ndim}-d unsigned bytes")
    shape = tuple(int(d) for d in header[1:])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 * (1 + ndim))
    if data.size != int(np.prod(shape)):
        raise InputError(f"{path}: header says {shape} but holds {data.size} bytes of data")
    return data.reshape(shape)


@functools.lru_cache(maxsize=4)
def _load_cached(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load and cache one split from one directory (the directory is part of the key, so overrides work)."""
    base = Path(directory)
    prefix = _PREFIX[split]
    images = _read_idx(base / f"{prefix}-images-idx3-ubyte.gz", _IMAGES_MAGIC, 3)
    labels = _read_idx(base / f"{prefix}-labels-idx1-ubyte.gz", _LABELS_MAGIC, 1).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise InputError(f"Fashion-MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load one Fashion-MNIST split.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).

    Returns:
        ``(images, labels)``: read-only uint8 ``[N, 28, 28]`` and int64 ``[N]`` with values in 0..9
        (indices into `CLASS_NAMES`). The arrays are cached in-process.

    Raises:
        InputError: `split` is not ``"train"`` or ``"test"``.
        DataUnavailableError: the idx files are not installed.
    """
    if split not in _PREFIX:
        raise InputError(f"unknown Fashion-MNIST split {split!r}: expected 'train' or 'test'")
    return _load_cached(str(data_dir()), split)


def vit_preprocess(images: np.ndarray, size: int = 224) -> np.ndarray:
    """Turn Fashion-MNIST images into ViT inputs.

    The grayscale image is replicated to 3 channels, resized bilinearly (``align_corners=False``) to
    ``size x size``, scaled to [0, 1] and normalised with the ImageNet mean and std.

    Args:
        images: uint8 ``[N, 28, 28]`` (any N >= 0, any square or rectangular H, W).
        size: output height and width.

    Returns:
        float32 ``[N, 3, size, size]``.

    Raises:
        InputError: `images` is not a 3-d array.
    """
    import torch
    import torch.nn.functional as F

    array = np.asarray(images)
    if array.ndim != 3:
        raise InputError(f"vit_preprocess expects images of shape [N, H, W], got {array.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32) / np.float32(255.0))
    tensor = tensor.unsqueeze(1)  # [N, 1, H, W]
    if tensor.shape[0] > 0 and tuple(tensor.shape[-2:]) != (size, size):
        tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)
    elif tensor.shape[0] == 0:
        tensor = tensor.new_zeros((0, 1, size, size))
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    out = (tensor.expand(-1, 3, -1, -1) - mean) / std
    return out.contiguous().numpy().astype(np.float32, copy=False)
