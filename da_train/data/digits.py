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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .core import DOWNLOAD_ERRORS, DataError, DomainPair, Split, _require_writable
from .mnist import load_mnist
from .mnistm import build_mnistm, load_mnistm_folder
from .required import require_files
from .schemas import MnistmKeys, cache_root, schema_of

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
def _mnist_raw(cfg, split, memo):
    """MNIST ``N x 28 x 28``, read once per pair (the mnist and mnistm domains share it)."""
    if ("mnist", split) not in memo:
        memo["mnist", split] = load_mnist(cfg.root, split, cfg.download)
    return memo["mnist", split]


def _mnist(cfg, split, memo):
    s = _mnist_raw(cfg, split, memo)
    return Split(s.images.unsqueeze(1), s.labels)


def _mnistm(cfg, split, memo):
    """MNIST-M built from MNIST (cached) or read from the released archive; the keys default
    as in the schema (:class:`.schemas.MnistmKeys`) for configs written by hand."""
    if cfg.get("mnistm", "build") == "build":
        return build_mnistm(cfg.root, split, _mnist_raw(cfg, split, memo),
                            cfg.get("build_seed", 0), cache_root(cfg.get("cache_root")),
                            cfg.download, recipe=cfg.get("mnistm_recipe", "mask"))
    return load_mnistm_folder(cfg.get("mnistm_dir") or cfg.root, split)


def _usps(cfg, split, memo):
    return load_usps(cfg.root, split, cfg.download)


def _svhn(cfg, split, memo):
    return load_svhn(cfg.root, split, cfg.download)


# name -> loader(cfg, split, memo) giving uint8 N x C x H x W. Adding a digit domain: one line
# here.
DIGIT_DOMAINS = {"mnist": _mnist, "mnistm": _mnistm, "usps": _usps, "svhn": _svhn}
GREY = {"mnist", "usps"}


@dataclass(frozen=True)
class DigitPairSpec:
    """The two domains of a digit pair, their training-sample sizes and the common input."""

    source: str
    target: str
    source_limit: int = 0
    target_limit: int = 0
    limit_seed: int = 0
    size: int = 0
    channels: int = 0
    usps_frame: str = "resize"

    @property
    def domains(self) -> tuple[str, str]:
        return self.source, self.target


#: Pairs whose domains are fixed (their config has no source/target keys).
FIXED_PAIRS = {"mnist_mnistm": DigitPairSpec("mnist", "mnistm", size=32, channels=3)}


def pair_spec(cfg) -> DigitPairSpec:
    """The pair a digit config describes: ``data.source`` / ``data.target`` and the common
    input, or the fixed domains of ``mnist_mnistm``."""
    if cfg.name in FIXED_PAIRS:
        return FIXED_PAIRS[cfg.name]
    return DigitPairSpec(cfg.source.name, cfg.target.name, cfg.source.limit, cfg.target.limit,
                         cfg.limit_seed, cfg.size, cfg.channels,
                         cfg.get("usps_frame", "resize"))


# ---------------------------------------------------------------------------- common input
#: MNIST's digits sit in a 20x20 box centred in the 28x28 frame
MNIST_BOX = 20 / 28


def to_common(images: torch.Tensor, size: int, channels: int,
              frame: str = "resize") -> torch.Tensor:
    """uint8 N x C x h x w -> uint8 N x ``channels`` x ``size`` x ``size``.

    A 28x28 MNIST digit going to 32 is zero-padded (as in mnist_mnistm), any other size change
    is a bilinear resize; 1 -> 3 channels repeats grey, 3 -> 1 averages (ITU-R 601 weights).
    ``frame="pad"`` (USPS, whose digits fill their 16x16 frame): resize to the MNIST digit box
    (``round(size * 20 / 28)``), then zero-pad to ``size``, so both domains share MNIST's
    scale and margins.
    """
    h = images.shape[-1]
    if frame == "pad":
        box = round(size * MNIST_BOX)
        images = to_common(images, box, images.shape[1])
        before = (size - box) // 2
        images = F.pad(images, (before, size - box - before, before, size - box - before))
        h = size
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


def _domain(cfg, name: str, limit: int, spec: DigitPairSpec, size: int, channels: int,
            seed_offset: int, memo: dict) -> dict[str, Split]:
    """One domain's train (limited) and test splits at the common input."""
    if name not in DIGIT_DOMAINS:
        raise DataError(f"Unknown digit domain {name!r} (data.source.name / data.target.name); "
                        f"choices: {', '.join(DIGIT_DOMAINS)}.")
    out = {}
    for split in ("train", "test"):
        s = DIGIT_DOMAINS[name](cfg, split, memo)
        if split == "train":  # sample first: only the kept images are converted
            s = limit_split(s, limit, spec.limit_seed + seed_offset)
        frame = spec.usps_frame if name == "usps" else "resize"
        out[split] = Split(to_common(s.images, size, channels, frame), s.labels)
    return out


def _check_mnistm_keys(cfg, spec: DigitPairSpec) -> None:
    """An MNIST-M domain needs the MNIST-M keys, which only data=digits and mnist_mnistm have."""
    schema = schema_of(cfg)
    if "mnistm" in spec.domains and schema is not None and not issubclass(schema, MnistmKeys):
        raise ConfigError(
            f"data={cfg.name} has no MNIST-M keys (data.mnistm, data.cache_root, ...), so it "
            "cannot load an mnistm domain. Use data=digits data.source.name="
            f"{spec.source} data.target.name={spec.target} (or data=mnist_mnistm).")


def digit_pair(cfg) -> DomainPair:
    """The one builder of every digit pair: ``data.source.name`` -> ``data.target.name`` (or
    the fixed domains of ``mnist_mnistm``), 10 classes, both at one common input.

    Every file the pair needs from the MNIST / MNIST-M family is checked first and reported in
    one message (:func:`.required.require_files`); USPS and SVHN are fetched per file.
    """
    spec = pair_spec(cfg)
    _check_mnistm_keys(cfg, spec)
    require_files(cfg, spec.domains)
    size, channels = common_input(spec.source, spec.target, spec.size, spec.channels)
    memo: dict = {}
    src = _domain(cfg, spec.source, spec.source_limit, spec, size, channels, 0, memo)
    tgt = _domain(cfg, spec.target, spec.target_limit, spec, size, channels, 1, memo)
    return DomainPair(src["train"], tgt["train"].images, src["test"], tgt["test"], 10,
                      tgt["train"].labels, DIGIT_NAMES, cfg.get("normalize", "global"))


#: The name of earlier versions.
digits_pair = digit_pair
