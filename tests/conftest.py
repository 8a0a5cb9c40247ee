"""Shared fixtures: a tiny but well-formed data root written by the tests themselves."""

import bz2
import io
import os
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _share_cores_between_xdist_workers() -> None:
    """Under ``pytest -n N`` each worker gets cores / N torch threads, and so do the da-train
    processes it starts (through ``OMP_NUM_THREADS``): N workers with the default thread count
    each would oversubscribe the cores and run slower than one. A cap set by the user wins."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and not os.environ.get("OMP_NUM_THREADS"):
        import torch

        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


_share_cores_between_xdist_workers()


def tar_gz(members: dict[str, bytes]) -> bytes:
    """A .tar.gz archive in memory holding ``members`` (name -> bytes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_usps(path: Path, pixels: np.ndarray, labels: np.ndarray) -> None:
    """libsvm lines '<digit+1> 1:v ... 256:v', v = pixel / 255 * 2 - 1 (USPS's format)."""
    lines = []
    for img, y in zip(pixels.reshape(len(pixels), -1), labels, strict=True):
        vals = " ".join(f"{i + 1}:{v / 255 * 2 - 1:.6f}" for i, v in enumerate(img))
        lines.append(f"{y + 1} {vals}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with bz2.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")


def make_tiny_root(tmp_path: Path) -> Path:
    """MNIST/raw with 64 train / 32 test random digits, USPS with 64 / 32 random 16x16
    digits, and 3 BSDS500-like photos."""
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
    for name, n in (("usps.bz2", 64), ("usps.t.bz2", 32)):
        write_usps(tmp_path / "USPS" / name, rng.integers(0, 256, (n, 16, 16)),
                   rng.integers(0, 10, (n,)))
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


@pytest.fixture(autouse=True)
def _cache_dir_in_tmp(tmp_path_factory, monkeypatch):
    """Caches (built MNIST-M, decoded images) go to a fresh temporary folder, never to the
    user's ~/.cache/da-train nor a data folder (DA_CACHE_DIR; da-train processes inherit it)."""
    monkeypatch.setenv("DA_CACHE_DIR", str(tmp_path_factory.mktemp("da_cache")))
