"""Datasets as device-resident uint8 tensors.

Two digit pairs (``data.name``):

* ``mnist_mnistm``: MNIST -> MNIST-M, both uint8 ``N x 3 x 32 x 32`` (MNIST is zero-padded
  from 28 to 32 and its grey channel repeated, so source and target share one network input).
* ``mnist01_23``: MNIST digits 0/1 -> MNIST digits 2/3 (labels 2 -> 0, 3 -> 1), the ADDA
  blog's toy shift; uint8 ``N x 1 x 28 x 28``, no padding, 2 classes.

Batches are drawn by index on the training device and turned into floats there:
``x = (uint8 / 255 - 0.5) / 0.5`` for both domains (one normalisation shared by the two
domains, as in the DANN setup, so no domain gets its own statistics).

Target training labels are never handed to a domain-adaptation method:
:class:`DomainPair` carries them only when ``load_pair(..., with_target_labels=True)`` asks for
them (the ``target_only`` oracle); otherwise ``target_train_labels`` is ``None``.
"""

from __future__ import annotations

import dataclasses
import gzip
import http.client
import os
import pickle
import tarfile
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


class DataError(RuntimeError):
    """Missing or malformed data files; the message says which and how to fix it."""


MNISTM_URL = "https://github.com/ShichengChen/Domain-Adversarial-Training-of-Neural-Networks"

# What a failed download can raise: URLError/HTTPError/socket errors are OSErrors, torchvision
# reports a failed md5 check as RuntimeError, a dropped connection can be an HTTPException.
DOWNLOAD_ERRORS = (OSError, RuntimeError, http.client.HTTPException)


@dataclass
class Split:
    """Images (uint8, N x C x H x W) and integer labels of one split of one domain."""

    images: torch.Tensor
    labels: torch.Tensor

    def to(self, device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class DomainPair:
    """What the trainer sees: labelled source, unlabelled target train, and test splits.

    ``target_train_labels`` is ``None`` unless the oracle asked for it (see :func:`load_pair`).
    """

    source_train: Split
    target_train_images: torch.Tensor
    source_test: Split
    target_test: Split
    num_classes: int
    target_train_labels: torch.Tensor | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one source image ((d,) for vector toy data): sizes the backbone."""
        return tuple(self.source_train.images.shape[1:])

    def to(self, device) -> DomainPair:
        labels = self.target_train_labels
        return DomainPair(
            self.source_train.to(device),
            self.target_train_images.to(device),
            self.source_test.to(device),
            self.target_test.to(device),
            self.num_classes,
            None if labels is None else labels.to(device),
        )


def normalise(images: torch.Tensor, mode: str = "global") -> torch.Tensor:
    """uint8 images -> float; float inputs (toy data) pass through unchanged.

    ``global`` (default, the DANN setup): ``x / 127.5 - 1`` in [-1, 1], the same affine map for
    both domains. ``instance``: then each image's channels are standardised to zero mean and
    unit variance over their pixels, the "instance-normalised input" of VADA / DIRT-T (Shu et
    al. 2018): it removes each image's own colour cast and contrast, a large part of the
    MNIST -> MNIST-M shift, and needs no statistics from either domain. A flat channel (e.g. an
    all-black image) becomes 0 rather than dividing by zero.
    """
    if images.dtype != torch.uint8:
        return images
    x = images.float().div_(127.5).sub_(1.0)
    if mode == "instance":
        var, mean = torch.var_mean(x, dim=(-2, -1), keepdim=True)
        x = (x - mean) / (var + 1e-6).sqrt()
    return x


def _require_writable(folder: Path, what: str) -> None:
    """Fail before a download starts, not after it, when ``folder`` cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise DataError(
            f"{what} must be downloaded into {folder}, but that folder is not writable ({err}). "
            "Run with data.root=<writable folder> (or set DA_DATA_ROOT to one), or put the "
            "files there by hand."
        ) from err


# --------------------------------------------------------------------------- IDX / MNIST

def _refetch(path: Path) -> str:
    return f"Delete {path} and run again with data.download=true to fetch it again."


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally .gz) with header checks, so a truncated file is named."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise DataError(f"Cannot read IDX file {path}: {err}. {_refetch(path)}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an IDX uint8 file (bad magic number {raw[:4].hex()}, "
                        f"expected 000008xx). {_refetch(path)}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated (header incomplete). {_refetch(path)}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(f"{path} is truncated or corrupt: {len(raw)} bytes, expected {expected} "
                        f"for shape {shape}. {_refetch(path)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_idx(raw_dir: Path, name: str) -> Path | None:
    for candidate in (raw_dir / name, raw_dir / (name + ".gz")):
        if candidate.exists():
            return candidate
    return None


def load_mnist(root: str | Path, split: str, download: bool) -> Split:
    """MNIST as uint8 28x28 (N x 28 x 28) from ``<root>/MNIST/raw`` (torchvision's layout).

    With ``download`` the missing files are fetched by torchvision (md5-checked).
    """
    raw_dir = Path(root) / "MNIST" / "raw"
    names = MNIST_FILES[split]
    missing = [n for n in names if _find_idx(raw_dir, n) is None]
    if missing and download:
        download_mnist(raw_dir, missing)
        missing = [n for n in names if _find_idx(raw_dir, n) is None]
    if missing:
        why = "still missing after the download" if download else "data.download=false"
        raise DataError(_missing_mnist_message(raw_dir, missing, why))
    img_path, lbl_path = (_find_idx(raw_dir, n) for n in names)
    images, labels = read_idx(img_path), read_idx(lbl_path)
    _check_mnist_arrays(img_path, images, lbl_path, labels)
    return Split(torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))


def _check_mnist_arrays(img_path: Path, images: np.ndarray, lbl_path: Path,
                        labels: np.ndarray) -> None:
    """A well-formed IDX file can still hold the wrong thing (e.g. two files swapped)."""
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{img_path} holds an array of shape {images.shape}, expected "
                        f"N x 28 x 28 MNIST images. {_refetch(img_path)}")
    if labels.ndim != 1 or (labels.size and labels.max() > 9):
        raise DataError(f"{lbl_path} does not hold MNIST labels (shape {labels.shape}, expected "
                        f"N digits 0-9). {_refetch(lbl_path)}")
    if len(images) != len(labels):
        raise DataError(f"{img_path} has {len(images)} images but {lbl_path} has {len(labels)} "
                        "labels. Delete both and run again with data.download=true.")


def _missing_mnist_message(raw_dir: Path, missing: list[str], why: str) -> str:
    files = ", ".join(f"{raw_dir / n}[.gz]" for n in missing)
    return (f"MNIST files not found ({why}): {files}. Fetch them with "
            f"`da-train data.root={raw_dir.parent.parent} data.download=true` (torchvision "
            "downloads them), or point data.root / DA_DATA_ROOT at a folder holding MNIST/raw.")


def download_mnist(raw_dir: Path, names: list[str]) -> None:
    """Fetch MNIST IDX files (``names`` without .gz) with torchvision's md5-checked downloader.

    One file at a time (not torchvision's ``MNIST(download=True)``) so that a failure names
    the file, and a checksum failure is told apart from a network failure.
    """
    from torchvision.datasets import MNIST
    from torchvision.datasets import utils as tv_utils

    _require_writable(raw_dir, "The MNIST files")
    md5s = dict(MNIST.resources)
    for name in names:
        archive, errors = name + ".gz", []
        for mirror in MNIST.mirrors:
            try:
                tv_utils.download_and_extract_archive(
                    mirror + archive, str(raw_dir), filename=archive, md5=md5s[archive])
                break
            except DOWNLOAD_ERRORS as err:
                errors.append(f"{mirror}: {err}".strip())
        else:
            raise DataError(_mnist_download_message(raw_dir / archive, md5s[archive], errors))


def _mnist_download_message(path: Path, md5: str, errors: list[str]) -> str:
    from torchvision.datasets.utils import check_integrity

    tried = "; ".join(" ".join(e.split()) for e in errors)
    rerun = f"`da-train data.root={path.parent.parent.parent} data.download=true`"
    if path.exists() and not check_integrity(str(path), md5):
        return (f"The downloaded {path} does not match its published md5 {md5} (the download "
                f"was cut short or a mirror served a different file; tried {tried}). Delete "
                f"{path} and run {rerun} again.")
    return (f"Downloading {path.name} into {path.parent} failed from every mirror ({tried}). "
            f"Check the network and run {rerun} again, or copy the MNIST files there by hand.")


def mnist_to_rgb32(images: torch.Tensor) -> torch.Tensor:
    """N x 28 x 28 grey -> N x 3 x 32 x 32 (zero padding of 2, grey repeated)."""
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    return padded.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def select_digits(split: Split, digits: tuple[int, ...]) -> Split:
    """Keep the images of ``digits`` (N x 28 x 28 -> N x 1 x 28 x 28), relabelled 0, 1, ...

    ``digits[i]`` becomes label ``i``, so (2, 3) maps 2 -> 0 and 3 -> 1.
    """
    keep = torch.isin(split.labels, torch.tensor(digits, dtype=split.labels.dtype))
    old = split.labels[keep]
    labels = torch.empty_like(old)
    for new, digit in enumerate(digits):
        labels[old == digit] = new
    return Split(split.images[keep].unsqueeze(1).contiguous(), labels)


# --------------------------------------------------------------------------- MNIST-M

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


BSDS_URL = ("http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/BSR/"
            "BSR_bsds500.tgz")
BSDS_TRAIN_MEMBER = "BSR/BSDS500/data/images/train/"
BSDS_TRAIN_COUNT = 200


def download_bsds_train(root: str | Path) -> None:
    """Fetch the BSDS500 release and keep only its 200 training photos in <root>/BSDS500/train.

    Berkeley publishes no checksum for the archive, so the archive is checked for what is used
    from it instead: a readable tar holding exactly the 200 training JPEGs. The photos are
    staged in a temporary folder and moved in only once all are out, so an interrupted run
    leaves no half-filled folder that would later pass for the full set.
    """
    from torchvision.datasets import utils as tv_utils

    folder = Path(root) / "BSDS500" / "train"
    _require_writable(folder.parent, "The BSDS500 training photos (data.mnistm=build)")
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        archive = Path(tmp) / Path(BSDS_URL).name
        tv_utils.download_url(BSDS_URL, tmp, filename=archive.name)
        staged = Path(tmp) / "train"
        _extract_bsds_train(archive, staged, folder)
        folder.mkdir(exist_ok=True)
        for photo in staged.iterdir():
            os.replace(photo, folder / photo.name)


def _extract_bsds_train(archive: Path, dest: Path, folder: Path) -> None:
    """Copy the training JPEGs out of the archive into ``dest`` by base name (no member path
    is trusted); ``folder`` (where they end up) is only named in the error messages."""
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")
                       and m.name.removeprefix("./").startswith(BSDS_TRAIN_MEMBER)]
            if len(members) != BSDS_TRAIN_COUNT:
                raise DataError(
                    f"The archive downloaded from {BSDS_URL} holds {len(members)} JPEGs under "
                    f"{BSDS_TRAIN_MEMBER}, expected {BSDS_TRAIN_COUNT}: it is not the BSDS500 "
                    "release. Download it by hand and copy those photos to "
                    f"{folder}/, or use data.mnistm=released.")
            dest.mkdir()
            for member in members:
                with tar.extractfile(member) as src:
                    (dest / Path(member.name).name).write_bytes(src.read())
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(
            f"The archive downloaded from {BSDS_URL} is not a readable tar.gz ({err}); the "
            "download was probably cut short. Run again, or download it by hand and copy "
            f"{BSDS_TRAIN_MEMBER}*.jpg to {folder}/."
        ) from err


def load_bsds_train(root: str | Path, download: bool = False) -> list[np.ndarray]:
    """The BSDS500 training photos (RGB arrays), the backgrounds of the built MNIST-M."""
    folder = Path(root) / "BSDS500" / "train"
    files = sorted(folder.glob("*.jpg"))
    if not files and download:
        try:
            download_bsds_train(root)
        except DataError:
            raise
        except DOWNLOAD_ERRORS as err:
            raise DataError(f"Downloading BSDS500 from {BSDS_URL} failed: {err}. Download it "
                            f"by hand and copy {BSDS_TRAIN_MEMBER}*.jpg to "
                            f"{folder}/, or use data.mnistm=released.") from err
        files = sorted(folder.glob("*.jpg"))
    if not files:
        raise DataError(
            f"No BSDS500 training photos found in {folder}/*.jpg, needed by data.mnistm=build. "
            f"Download {BSDS_URL} (or run with data.download=true) and copy "
            f"{BSDS_TRAIN_MEMBER}*.jpg to {folder}/, or use data.mnistm=released."
        )
    return [_read_photo(f) for f in files]


def _read_photo(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as err:
        raise DataError(f"Cannot decode BSDS500 photo {path}: {err}. Delete it (or the whole "
                        "folder, to download it again with data.download=true).") from err


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


# --------------------------------------------------------------------------- pairs

def load_pair(data_cfg, with_target_labels: bool = False) -> DomainPair:
    """Build the DomainPair named by ``data.name``.

    Target training labels stay attached only when asked for (the ``target_only`` oracle), so
    a domain-adaptation method cannot read them even by mistake.
    """
    builder = PAIRS.get(data_cfg.name)
    if builder is None:
        raise DataError(f"Unknown data pair {data_cfg.name!r}; choices: {', '.join(PAIRS)}.")
    pair = builder(data_cfg)
    if not with_target_labels:
        pair = dataclasses.replace(pair, target_train_labels=None)
    return pair


def _mnist_mnistm(cfg) -> DomainPair:
    mnist = {s: load_mnist(cfg.root, s, cfg.download) for s in ("train", "test")}
    if cfg.mnistm == "build":
        mnistm = {s: build_mnistm(cfg.root, s, mnist[s], cfg.build_seed, cfg.cache_root,
                                  cfg.download)
                  for s in mnist}
    else:
        mnistm = {s: load_mnistm_folder(cfg.mnistm_dir, s) for s in ("train", "test")}
    source = {s: Split(mnist_to_rgb32(mnist[s].images), mnist[s].labels) for s in mnist}
    return DomainPair(source["train"], mnistm["train"].images, source["test"], mnistm["test"],
                      10, mnistm["train"].labels)


def _mnist01_23(cfg) -> DomainPair:
    """MNIST 0/1 -> MNIST 2/3 (2 -> 0, 3 -> 1): single-channel 28x28, 2 classes."""
    mnist = {s: load_mnist(cfg.root, s, cfg.download) for s in ("train", "test")}
    source = {s: select_digits(mnist[s], (0, 1)) for s in mnist}
    target = {s: select_digits(mnist[s], (2, 3)) for s in mnist}
    return DomainPair(source["train"], target["train"].images, source["test"], target["test"],
                      2, target["train"].labels)


PAIRS = {"mnist_mnistm": _mnist_mnistm, "mnist01_23": _mnist01_23}
