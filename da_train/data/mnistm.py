"""MNIST-M: the released archive layout, or built from MNIST + the BSDS500 training photos,
cached after the first build.

The default build recipe, ``mask``, is the one that made the released MNIST-M (Ganin &
Lempitsky): released image i is MNIST image i, padded by 2 to 32x32 (no resizing), used as a
binary mask (any pixel > 0, even 1, is ink) over a 32x32 crop, at full scale, of one of the
200 BSDS500 *training* photos; under the ink the crop is inverted (255 - value, per
channel), elsewhere it is copied verbatim. Evidence, on the 1,000 + 1,000 released images in
``shared/data/MNIST-M-sample`` (``scripts/check_mnistm.py --locate 1000``, numbers in
docs/mnistm-twin.md): the exact crop of every one of the 2,000 images was found among all
positions of the training photos at full scale, and the mask recipe rebuilds all 2,000
pixel for pixel (PIL's JPEG decoding); the photos (chi-square p = 0.53) and crop positions
(Kolmogorov-Smirnov p = 0.20 for y, 0.12 for x) are consistent with uniform draws. A small
CNN tells the mask build from the released images with held-out accuracy 0.50 (0.87 for
``absdiff``). Which photo and position each image gets is random (the released generator's
state is unknown), so a build matches the released set in distribution, not image for image.

``absdiff`` is the widely copied reimplementation (``|crop - grey digit|``), the build of
earlier versions of this project; it is kept, bit-identical for a seed, so that old results
stay reproducible.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from .bsds import load_bsds_train
from .core import DataError, Split
from .schemas import cache_root as resolve_cache_root

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


RECIPES = ("mask", "absdiff")
"""``mask``: the released MNIST-M (see the module docstring); ``absdiff``: the widely copied
reimplementation, this project's build before the twin recipe, kept for old results."""

_CHUNK = 4096  # images blended per step: bounds the temporary arrays (~16 MB each)


def blend_mnistm(digits: np.ndarray, photos: list[np.ndarray], seed: int,
                 recipe: str = "mask") -> np.ndarray:
    """Blend each digit with a random 32x32 crop of a random photo.

    ``digits``: N x S x S uint8 (already padded); ``photos``: H x W x 3 uint8 arrays of any
    sizes >= S. Returns N x S x S x 3 uint8, deterministic for a seed. ``mask`` inverts the
    crop wherever the digit is non-zero (the released set, pixel for pixel); ``absdiff`` takes
    ``|crop - digit|`` per channel. Both recipes draw the same photos and crop positions for a
    seed (the draws of the former per-image loop, so ``absdiff`` builds stay bit-identical).
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown MNIST-M recipe {recipe!r}; expected one of {RECIPES}")
    rng = np.random.default_rng(seed)
    which, ys, xs = _crop_positions(rng, photos, len(digits), digits.shape[1])
    groups = _group_photos(photos)
    out = np.empty((*digits.shape, 3), dtype=np.uint8)
    for lo in range(0, len(digits), _CHUNK):
        part = slice(lo, lo + _CHUNK)
        crops = _gather_crops(groups, which[part], ys[part], xs[part], digits.shape[1])
        out[part] = _apply_recipe(recipe, crops, digits[part])
    return out


def _crop_positions(rng: np.random.Generator, photos: list[np.ndarray], n: int,
                    size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Photo index and top-left corner of each crop, uniform over all positions in the photo.

    The corners are drawn as one interleaved (y0, x0, y1, x1, ...) batch with per-element
    bounds, which numpy's Generator draws in the same order as one scalar call per value.
    """
    which = rng.integers(0, len(photos), size=n)
    shapes = np.array([p.shape[:2] for p in photos], dtype=np.int64)
    corners = rng.integers(0, shapes[which] - size + 1)  # n x 2, columns y, x
    return which, corners[:, 0], corners[:, 1]


def _group_photos(photos: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Same-size photos stacked into one array each (BSDS500 has two sizes: landscape and
    portrait), with the map from a photo's index in ``photos`` to its row (-1: not in it).
    An RGB pixel is packed into one uint32 (RGB + a zero byte), so that a crop is gathered as
    whole 4-byte words rather than 3-byte rows (several times faster)."""
    by_shape: dict[tuple, list[int]] = {}
    for k, photo in enumerate(photos):
        by_shape.setdefault(photo.shape, []).append(k)
    groups = []
    for members in by_shape.values():
        local = np.full(len(photos), -1)
        local[members] = np.arange(len(members))
        stack = np.zeros((len(members), *photos[members[0]].shape[:2], 4), dtype=np.uint8)
        for row, k in enumerate(members):
            stack[row, ..., :3] = photos[k]
        groups.append((stack.view(np.uint32)[..., 0], local))
    return groups


def _gather_crops(groups: list[tuple[np.ndarray, np.ndarray]], which: np.ndarray,
                  ys: np.ndarray, xs: np.ndarray, size: int) -> np.ndarray:
    """The crops as one n x S x S array of packed pixels, no per-crop Python: each group of
    photos is seen (without a copy) as the grid of all its S x S windows, and the drawn windows
    are gathered from it by (photo, y, x) index."""
    packed = np.empty((len(which), size, size), dtype=np.uint32)
    for stack, local in groups:
        rows = np.flatnonzero(local[which] >= 0)
        windows = np.lib.stride_tricks.sliding_window_view(stack, (size, size), axis=(1, 2))
        packed[rows] = windows[local[which[rows]], ys[rows], xs[rows]]
    return packed


_RGB_BITS = np.array([255, 255, 255, 0], dtype=np.uint8).view(np.uint32)[0]


def _apply_recipe(recipe: str, packed: np.ndarray, digits: np.ndarray) -> np.ndarray:
    """Blend packed crops (n x S x S uint32, see ``_group_photos``) with digits (n x S x S
    uint8); returns n x S x S x 3 uint8."""
    if recipe == "mask":  # any ink at all, even a grey value of 1, inverts the pixel
        blended = np.where(digits > 0, packed ^ _RGB_BITS, packed)  # v ^ 255 == 255 - v
        return blended[..., None].view(np.uint8)[..., :3]
    rgb = packed[..., None].view(np.uint8)[..., :3].astype(np.int16)
    return np.abs(rgb - digits[..., None]).astype(np.uint8)


def build_mnistm(root: str | Path, split: str, mnist: Split, seed: int,
                 cache_root: str | Path | None = None, download: bool = False,
                 recipe: str = "mask") -> Split:
    """Build MNIST-M from MNIST + BSDS500 once, then reuse
    ``<cache_root>/mnist_m_built/<split>_<recipe>_seed<seed>.pt`` (None: the per-user cache
    directory, :func:`.schemas.default_cache_root`; the recipe in the name, so a
    cache of one recipe is never read for another, nor one from before recipes had names)."""
    if recipe not in RECIPES:
        raise ConfigError(
            f"data.mnistm_recipe={recipe!r} is not a known MNIST-M recipe. Use 'mask' (the "
            "default: a twin of the released MNIST-M, see docs/mnistm-twin.md) or 'absdiff' "
            "(|crop - digit|, the build of earlier versions, for reproducing old results).")
    # None: the per-user cache directory, never the data folder (which may be read-only)
    cache = resolve_cache_root(cache_root) / "mnist_m_built" / f"{split}_{recipe}_seed{seed}.pt"
    cached = _load_cache(cache, mnist)
    if cached is not None:
        return cached
    photos = load_bsds_train(root, download)
    digits = torch.nn.functional.pad(mnist.images, (2, 2, 2, 2)).numpy()
    split_seed = seed * 2 + (0 if split == "train" else 1)
    blended = blend_mnistm(digits, photos, split_seed, recipe)
    images = torch.from_numpy(blended).permute(0, 3, 1, 2)
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


