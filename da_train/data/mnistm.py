"""MNIST-M: the released archive layout, or built from MNIST + the BSDS500 training photos
(DANN recipe), cached after the first build."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import torch

from .bsds import load_bsds_train
from .core import DataError, Split

MNISTM_URL = "https://github.com/ShichengChen/Domain-Adversarial-Training-of-Neural-Networks"

def load_mnistm_folder(root: str | Path, split: str) -> Split:
    """The released MNIST-M layout: ``mnist_m/mnist_m_<split>/*.png`` + ``*_labels.txt``."""
    from PIL import Image

    base = Path(root) / "mnist_m"
    label_file = base / f"mnist_m_{split}_labels.txt"
    image_dir = base / f"mnist_m_{split}"
    if not label_file.exists() or not image_dir.is_dir():
        lacking = [str(p) for p in (label_file, image_dir) if not p.exists()]
        raise DataError(
            f"MNIST-M {split} split not found: missing {' and '.join(lacking)} (the released "
            f"archive has {label_file} and the folder {image_dir}/). Get the released MNIST-M "
            f"(e.g. from {MNISTM_URL}, folder mnist_m/) and unpack it under {Path(root)}, or "
            "build it from MNIST and BSDS500 with `da-train data.mnistm=build`."
        )
    names, labels = _read_mnistm_labels(label_file)
    images = np.empty((len(names), 32, 32, 3), dtype=np.uint8)
    for i, name in enumerate(names):  # one-off decode at load time, never in the train loop
        try:
            with Image.open(image_dir / name) as im:
                arr = np.asarray(im.convert("RGB"))
        except OSError as err:
            raise DataError(f"Cannot read MNIST-M image {image_dir / name}: {err}.") from err
        if arr.shape != (32, 32, 3):
            raise DataError(f"{image_dir / name} has shape {arr.shape}, expected 32x32 RGB.")
        images[i] = arr
    return Split(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                 torch.tensor(labels, dtype=torch.int64))


def _read_mnistm_labels(label_file: Path) -> tuple[list[str], list[int]]:
    """Lines ``<file>.png <digit>``; a malformed line is reported with its number."""
    names, labels = [], []
    for lineno, line in enumerate(label_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise DataError(f"{label_file}, line {lineno}: expected '<file>.png <digit>', "
                            f"got {line!r}.")
        names.append(parts[0])
        labels.append(int(parts[1]))
    return names, labels


def blend_mnistm(digits: np.ndarray, photos: list[np.ndarray], seed: int) -> np.ndarray:
    """The DANN recipe: for each digit a random 32x32 crop of a random photo, |crop - digit|.

    ``digits``: N x 32 x 32 uint8 (already padded). Returns N x 32 x 32 x 3 uint8.
    Deterministic for a seed.
    """
    rng = np.random.default_rng(seed)
    n, size = len(digits), digits.shape[1]
    which = rng.integers(0, len(photos), size=n)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        photo = photos[which[i]]
        y = rng.integers(0, photo.shape[0] - size + 1)
        x = rng.integers(0, photo.shape[1] - size + 1)
        crop = photo[y: y + size, x: x + size].astype(np.int16)
        out[i] = np.abs(crop - digits[i, :, :, None].astype(np.int16)).astype(np.uint8)
    return out


def build_mnistm(root: str | Path, split: str, mnist: Split, seed: int,
                 cache_root: str | Path | None = None, download: bool = False) -> Split:
    """Build MNIST-M from MNIST + BSDS500 once, then reuse ``<cache_root>/mnist_m_built/``."""
    cache = Path(cache_root or root) / "mnist_m_built" / f"{split}_seed{seed}.pt"
    cached = _load_cache(cache, mnist)
    if cached is not None:
        return cached
    photos = load_bsds_train(root, download)
    digits = torch.nn.functional.pad(mnist.images, (2, 2, 2, 2)).numpy()
    split_seed = seed * 2 + (0 if split == "train" else 1)
    images = torch.from_numpy(blend_mnistm(digits, photos, split_seed)).permute(0, 3, 1, 2)
    result = Split(images.contiguous(), mnist.labels.clone())
    _save_cache(cache, result)
    return result


def _load_cache(cache: Path, mnist: Split) -> Split | None:
    """A cached build, or None when absent, unreadable or built from other MNIST files."""
    if not cache.exists():
        return None
    try:
        stored = torch.load(cache)
        split = Split(stored["images"], stored["labels"])
    except (OSError, RuntimeError, EOFError, KeyError, TypeError, pickle.UnpicklingError) as err:
        warnings.warn(f"Ignoring the unreadable MNIST-M cache {cache} ({err}); rebuilding it.",
                      stacklevel=2)
        return None
    if split.images.shape != (len(mnist.labels), 3, 32, 32) or not torch.equal(
            split.labels, mnist.labels):
        warnings.warn(f"The MNIST-M cache {cache} was built from other MNIST files; "
                      "rebuilding it.", stacklevel=2)
        return None
    return split


_UNWRITABLE_CACHES: set[Path] = set()


def _save_cache(cache: Path, split: Split) -> None:
    """Store a build atomically; an unwritable cache only costs a rebuild next run, so warn."""
    tmp = cache.with_suffix(".tmp")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"images": split.images, "labels": split.labels}, tmp)
        tmp.replace(cache)
    except OSError as err:
        if tmp.is_file():
            tmp.unlink()
        if cache.parent not in _UNWRITABLE_CACHES:  # once per folder, not once per split
            _UNWRITABLE_CACHES.add(cache.parent)
            warnings.warn(
                f"Cannot write the MNIST-M cache in {cache.parent} ({err}); using the images "
                "built in memory. They are built again on the next run unless data.cache_root "
                "points at a writable folder.", stacklevel=2)


