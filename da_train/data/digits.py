"""Digit domains (MNIST, MNIST-M, USPS, SVHN) and the pairs built from any two of them.

Every digit domain loads as uint8 ``N x C x H x W`` at its native size; a pair then brings both
domains to one common input (``size`` x ``size``, ``channels`` 1 or 3): bilinear resize for
USPS (16 -> 28, as ADDA did), zero padding for MNIST 28 -> 32, grey repeated to 3 channels or
RGB averaged to grey. Files use torchvision's names; only missing files are downloaded, with
torchvision's md5-checked downloader and only when ``data.download=true``.
"""

from __future__ import annotations

import bz2
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .core import DOWNLOAD_ERRORS, DataError, DomainPair, Split, _require_writable
from .mnist import load_mnist
from .mnistm import build_mnistm, load_mnistm_folder

DIGIT_NAMES = tuple(str(d) for d in range(10))

# torchvision's files: (url, filename, md5) per split (USPS.split_list / SVHN.split_list).
USPS_FILES = {"train": "usps.bz2", "test": "usps.t.bz2"}
SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


# ---------------------------------------------------------------------------- downloads
def _download_missing(folder: Path, split: str, tv_class, what: str) -> None:
    """Fetch one split's file with torchvision's md5-checked ``download_url``."""
    from torchvision.datasets.utils import download_url

    url, filename, md5 = tv_class.split_list[split]
    _require_writable(folder, f"The {what} files")
    try:
        download_url(url, str(folder), filename=filename, md5=md5)
    except DOWNLOAD_ERRORS as err:
        raise DataError(f"Downloading {filename} into {folder} from {url} failed ({err}). Check "
                        f"the network and run again with data.download=true, or copy {filename} "
                        f"there by hand.") from err


def _locate(root, folder: str, files: dict, split: str, download: bool, tv_name: str) -> Path:
    """The path of one split's file; downloaded first when missing and allowed."""
    import torchvision.datasets as tvd

    base = Path(root) / folder
    path = base / files[split]
    if not path.exists() and download:
        _download_missing(base, split, getattr(tvd, tv_name), tv_name)
    if not path.exists():
        why = "still missing after the download" if download else "data.download=false"
        raise DataError(f"{tv_name} file not found ({why}): {path}. Fetch it with `da-train "
                        f"data.root={root} data.download=true` (torchvision downloads it), or put "
                        f"torchvision's {files[split]} into {base} by hand.")
    return path


# ---------------------------------------------------------------------------- USPS
def read_usps(path: Path) -> Split:
    """Parse a libsvm-format USPS file (``<label 1..10> 1:v ... 256:v``, v in [-1, 1]).

    Pixels map as torchvision does, ``uint8((v + 1) / 2 * 255)``; label k is digit k - 1.
    Parsed as one text with numpy (no per-line Python), about 0.3 s for the train file.
    """
    try:
        with bz2.open(path, "rt") if str(path).endswith(".bz2") else open(path) as f:
            text = f.read()
    except (OSError, EOFError, ValueError) as err:
        raise DataError(f"Cannot read USPS file {path}: {err}. Delete it and run again with "
                        "data.download=true.") from err
    rows = text.strip().splitlines()
    values = np.array(re.sub(r"\d+:", " ", text).split(), dtype=np.float32)
    if not rows or values.size != len(rows) * 257:
        raise DataError(f"{path} is not a USPS file: expected {len(rows)} lines of a label and "
                        "256 values (libsvm format). Delete it and run again with "
                        "data.download=true.")
    values = values.reshape(len(rows), 257)
    labels = values[:, 0].astype(np.int64) - 1
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path} holds labels outside 1..10; it is not a USPS file.")
    pixels = ((values[:, 1:] + 1) / 2 * 255).astype(np.uint8).reshape(-1, 1, 16, 16)
    return Split(torch.from_numpy(pixels), torch.from_numpy(labels))


def load_usps(root, split: str, download: bool) -> Split:
    """USPS from ``<root>/USPS/usps.bz2`` (train, 7,291) / ``usps.t.bz2`` (test, 2,007)."""
    return read_usps(_locate(root, "USPS", USPS_FILES, split, download, "USPS"))


# ---------------------------------------------------------------------------- SVHN
def read_svhn(path: Path) -> Split:
    """A SVHN ``.mat`` (X: 32 x 32 x 3 x N uint8, y: N x 1 with 10 meaning digit 0)."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path), variable_names=("X", "y"))
        images, labels = mat["X"], mat["y"].reshape(-1).astype(np.int64)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"Cannot read SVHN file {path} ({err!r}): it should be torchvision's "
                        ".mat with X (32x32x3xN) and y. Delete it and run again with "
                        "data.download=true.") from err
    if images.ndim != 4 or images.shape[:3] != (32, 32, 3) or images.shape[3] != len(labels):
        raise DataError(f"{path} holds X of shape {images.shape} and {len(labels)} labels; "
                        "expected 32 x 32 x 3 x N and N labels.")
    labels[labels == 10] = 0
    chw = np.ascontiguousarray(images.transpose(3, 2, 0, 1)).astype(np.uint8)
    return Split(torch.from_numpy(chw), torch.from_numpy(labels))


def load_svhn(root, split: str, download: bool) -> Split:
    """SVHN from ``<root>/SVHN/{train,test}_32x32.mat`` (73,257 / 26,032)."""
    return read_svhn(_locate(root, "SVHN", SVHN_FILES, split, download, "SVHN"))


# ---------------------------------------------------------------------------- registry
def _mnist(cfg, split):
    s = load_mnist(cfg.root, split, cfg.download)
    return Split(s.images.unsqueeze(1), s.labels)


def _mnistm(cfg, split):
    if cfg.mnistm == "build":
        mnist = load_mnist(cfg.root, split, cfg.download)
        return build_mnistm(cfg.root, split, mnist, cfg.build_seed, cfg.cache_root, cfg.download,
                            recipe=cfg.mnistm_recipe)
    return load_mnistm_folder(cfg.mnistm_dir, split)


def _usps(cfg, split):
    return load_usps(cfg.root, split, cfg.download)


def _svhn(cfg, split):
    return load_svhn(cfg.root, split, cfg.download)


# name -> loader(cfg, split) giving uint8 N x C x H x W. Adding a digit domain: one line here.
DIGIT_DOMAINS = {"mnist": _mnist, "mnistm": _mnistm, "usps": _usps, "svhn": _svhn}
GREY = {"mnist", "usps"}


# ---------------------------------------------------------------------------- common input
def to_common(images: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """uint8 N x C x h x w -> uint8 N x ``channels`` x ``size`` x ``size``.

    A 28x28 MNIST digit going to 32 is zero-padded (as in mnist_mnistm), any other size change
    is a bilinear resize; 1 -> 3 channels repeats grey, 3 -> 1 averages (ITU-R 601 weights).
    """
    h = images.shape[-1]
    if h != size:
        if h == 28 and size == 32:
            images = F.pad(images, (2, 2, 2, 2))
        else:
            x = F.interpolate(images.float(), size=(size, size), mode="bilinear",
                              align_corners=False, antialias=size < h)
            images = x.round_().clamp_(0, 255).to(torch.uint8)
    if images.shape[1] == 3 and channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        images = (images.float() * w).sum(1, keepdim=True).round_().to(torch.uint8)
    elif images.shape[1] == 1 and channels == 3:
        images = images.expand(-1, 3, -1, -1)
    return images.contiguous()


def limit_split(split: Split, limit: int, seed: int) -> Split:
    """A seeded random subset of ``limit`` samples (0 or >= N: the whole split, in order)."""
    if limit <= 0 or limit >= len(split.labels):
        return split
    gen = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(split.labels), generator=gen)[:limit].sort().values
    return Split(split.images[keep], split.labels[keep])


def common_input(source: str, target: str, size: int, channels: int) -> tuple[int, int]:
    """(size, channels) of a pair; 0 = automatic: 28 x 1 for two grey domains, else 32 x 3."""
    grey = source in GREY and target in GREY
    return size or (28 if grey else 32), channels or (1 if grey else 3)


def _domain(cfg, dom_cfg, size, channels, seed_offset):
    """One domain's train (limited) and test splits at the common input."""
    name = dom_cfg.name
    if name not in DIGIT_DOMAINS:
        raise DataError(f"Unknown digit domain {name!r} (data.source.name / data.target.name); "
                        f"choices: {', '.join(DIGIT_DOMAINS)}.")
    out = {}
    for split in ("train", "test"):
        s = DIGIT_DOMAINS[name](cfg, split)
        if split == "train":  # sample first: only the kept images are converted
            s = limit_split(s, dom_cfg.limit, cfg.limit_seed + seed_offset)
        out[split] = Split(to_common(s.images, size, channels), s.labels)
    return out


def digits_pair(cfg) -> DomainPair:
    """Any two digit domains (``data.source.name`` -> ``data.target.name``), 10 classes."""
    size, channels = common_input(cfg.source.name, cfg.target.name, cfg.size, cfg.channels)
    src = _domain(cfg, cfg.source, size, channels, 0)
    tgt = _domain(cfg, cfg.target, size, channels, 1)
    return DomainPair(src["train"], tgt["train"].images, src["test"], tgt["test"], 10,
                      tgt["train"].labels, DIGIT_NAMES, cfg.normalize)
