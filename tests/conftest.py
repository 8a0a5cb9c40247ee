"""Shared fixtures: a tiny but well-formed data root written by the tests themselves."""

import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_tiny_root(tmp_path: Path) -> Path:
    """MNIST/raw with 64 train / 32 test random digits and 3 BSDS500-like photos."""
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 64), ("t10k", 32)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (n,)))
    photos = tmp_path / "BSDS500" / "train"
    photos.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(
            photos / f"{i}.jpg")
    return tmp_path


@pytest.fixture
def tiny_root(tmp_path) -> Path:
    """A tiny, well-formed data root (see :func:`make_tiny_root`)."""
    return make_tiny_root(tmp_path)


@pytest.fixture
def real_root() -> Path:
    root = os.environ.get("DA_DATA_ROOT")
    if not root:
        pytest.skip("DA_DATA_ROOT is not set (real data tests)")
    return Path(root).resolve()


@pytest.fixture
def digits_root(tmp_path) -> Path:
    """MNIST/raw with known contents: image i is filled with the value i, label i % 10
    (40 train, 20 test images), so tests can tell which images a loader kept."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 40), ("t10k", 20)):
        images = np.broadcast_to(np.arange(n)[:, None, None], (n, 28, 28))
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return tmp_path
