"""Datasets as device-resident uint8 tensors.

Every digit domain ends up as uint8 ``N x 3 x 32 x 32`` (MNIST is zero-padded from 28 to 32
and its grey channel repeated), so source and target share one network input. Batches are
drawn by index on the training device and turned into floats there:
``x = (uint8 / 255 - 0.5) / 0.5`` for both domains (one normalisation shared by the two
domains, as in the DANN setup, so no domain gets its own statistics).

Target training labels are never handed to the training loop: :class:`DomainPair` keeps
only the target training *images*.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


class DataError(RuntimeError):
    """Missing or malformed data files; the message says which and how to fix it."""


MNISTM_URL = "https://github.com/ShichengChen/Domain-Adversarial-Training-of-Neural-Networks"


@dataclass
class Split:
    """Images (uint8, N x C x H x W) and integer labels of one split of one domain."""

    images: torch.Tensor
    labels: torch.Tensor

    def to(self, device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class DomainPair:
    """What the trainer sees: labelled source, unlabelled target train, and test splits."""

    source_train: Split
    target_train_images: torch.Tensor
    source_test: Split
    target_test: Split
    num_classes: int

    def to(self, device) -> DomainPair:
        return DomainPair(
            self.source_train.to(device),
            self.target_train_images.to(device),
            self.source_test.to(device),
            self.target_test.to(device),
            self.num_classes,
        )


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [-1, 1]; float inputs (toy data) pass through unchanged."""
    if images.dtype != torch.uint8:
        return images
    return images.float().div_(127.5).sub_(1.0)


# --------------------------------------------------------------------------- IDX / MNIST

def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally .gz) with header checks, so a truncated file is named."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise DataError(
            f"Cannot read IDX file {path}: {err}. Delete it and fetch it again.") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an IDX uint8 file (bad magic number). "
                        "Delete it and fetch it again.")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated (header incomplete). Delete it and fetch it again.")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(f"{path} is truncated or corrupt: {len(raw)} bytes, expected {expected} "
                        f"for shape {shape}. Delete it and fetch it again.")
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

    With ``download`` the files are fetched by torchvision (md5-checked) when missing.
    """
    root = Path(root)
    raw_dir = root / "MNIST" / "raw"
    img_name, lbl_name = MNIST_FILES[split]
    paths = [_find_idx(raw_dir, img_name), _find_idx(raw_dir, lbl_name)]
    if None in paths and download:
        from torchvision.datasets import MNIST

        try:
            MNIST(str(root), train=(split == "train"), download=True)
        except Exception as err:  # network errors come in many types
            raise DataError(_missing_mnist_message(raw_dir, f"download failed: {err}")) from err
        paths = [_find_idx(raw_dir, img_name), _find_idx(raw_dir, lbl_name)]
    if None in paths:
        raise DataError(_missing_mnist_message(raw_dir, "data.download=false"))
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if len(images) != len(labels):
        raise DataError(f"{paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} "
                        "labels. Delete both and fetch them again.")
    return Split(torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))


def _missing_mnist_message(raw_dir: Path, why: str) -> str:
    files = ", ".join(f"{raw_dir}/{n}[.gz]" for pair in MNIST_FILES.values() for n in pair)
    return (f"MNIST files not found ({why}). Expected {files}. Fetch them with "
            f"`da-train data.root={raw_dir.parent.parent} data.download=true` (torchvision "
            "downloads them), or point data.root / DA_DATA_ROOT at a folder holding MNIST/raw.")


def mnist_to_rgb32(images: torch.Tensor) -> torch.Tensor:
    """N x 28 x 28 grey -> N x 3 x 32 x 32 (zero padding of 2, grey repeated)."""
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    return padded.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


# --------------------------------------------------------------------------- MNIST-M

def load_mnistm_folder(root: str | Path, split: str) -> Split:
    """The released MNIST-M layout: ``mnist_m/mnist_m_<split>/*.png`` + ``*_labels.txt``."""
    from PIL import Image

    base = Path(root) / "mnist_m"
    label_file = base / f"mnist_m_{split}_labels.txt"
    image_dir = base / f"mnist_m_{split}"
    if not label_file.exists() or not image_dir.is_dir():
        raise DataError(
            f"MNIST-M {split} split not found: expected {label_file} and the folder {image_dir}/ "
            f"(the released archive layout). Get the released MNIST-M (e.g. from {MNISTM_URL}, "
            f"folder mnist_m/) and unpack it under {Path(root)}, or build it from MNIST and "
            "BSDS500 with `da-train data.mnistm=build`."
        )
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


BSDS_URL = ("http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/BSR/"
            "BSR_bsds500.tgz")


def download_bsds_train(root: str | Path) -> None:
    """Fetch the BSDS500 release and keep only its 200 training photos in <root>/BSDS500/train.

    No checksum is published for the archive, so none is checked; the photos are decoded
    (and any undecodable one reported) when MNIST-M is built.
    """
    import shutil
    import tempfile

    from torchvision.datasets.utils import download_and_extract_archive

    folder = Path(root) / "BSDS500" / "train"
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        download_and_extract_archive(BSDS_URL, tmp)
        photos = sorted(Path(tmp).glob("BSR/BSDS500/data/images/train/*.jpg"))
        folder.mkdir(parents=True, exist_ok=True)
        for photo in photos:
            shutil.copy2(photo, folder / photo.name)


def load_bsds_train(root: str | Path, download: bool = False) -> list[np.ndarray]:
    from PIL import Image

    folder = Path(root) / "BSDS500" / "train"
    files = sorted(folder.glob("*.jpg"))
    if not files and download:
        try:
            download_bsds_train(root)
        except Exception as err:  # network and archive errors come in many types
            raise DataError(f"Downloading BSDS500 from {BSDS_URL} failed: {err}. Download it "
                            f"by hand and copy BSR/BSDS500/data/images/train/*.jpg to "
                            f"{folder}/, or use data.mnistm=released.") from err
        files = sorted(folder.glob("*.jpg"))
    if not files:
        raise DataError(
            f"No BSDS500 training photos found in {folder}/*.jpg, needed by data.mnistm=build. "
            f"Download {BSDS_URL} (or run with data.download=true) and copy "
            f"BSR/BSDS500/data/images/train/*.jpg to {folder}/, or use data.mnistm=released."
        )
    return [np.asarray(Image.open(f).convert("RGB")) for f in files]


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
    if cache.exists():
        stored = torch.load(cache)
        return Split(stored["images"], stored["labels"])
    photos = load_bsds_train(root, download)
    digits = torch.nn.functional.pad(mnist.images, (2, 2, 2, 2)).numpy()
    split_seed = seed * 2 + (0 if split == "train" else 1)
    images = torch.from_numpy(blend_mnistm(digits, photos, split_seed)).permute(0, 3, 1, 2)
    result = Split(images.contiguous(), mnist.labels.clone())
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        torch.save({"images": result.images, "labels": result.labels}, tmp)
        tmp.replace(cache)
    except OSError as err:
        raise DataError(f"Cannot write the MNIST-M cache {cache}: {err}. Make {cache.parent} "
                        "writable or set data.cache_root to a writable folder.") from err
    return result


# --------------------------------------------------------------------------- pairs

def load_pair(data_cfg) -> DomainPair:
    """Build the DomainPair named by ``data.name``."""
    if data_cfg.name == "mnist_mnistm":
        return _mnist_mnistm(data_cfg)
    raise DataError(f"Unknown data pair {data_cfg.name!r}; choices: mnist_mnistm.")


def _mnist_mnistm(cfg) -> DomainPair:
    mnist = {s: load_mnist(cfg.root, s, cfg.download) for s in ("train", "test")}
    if cfg.mnistm == "build":
        mnistm = {s: build_mnistm(cfg.root, s, mnist[s], cfg.build_seed, cfg.cache_root,
                               cfg.download)
                  for s in mnist}
    else:
        mnistm = {s: load_mnistm_folder(cfg.mnistm_dir, s) for s in ("train", "test")}
    source = {s: Split(mnist_to_rgb32(mnist[s].images), mnist[s].labels) for s in mnist}
    return DomainPair(source["train"], mnistm["train"].images, source["test"], mnistm["test"], 10)
