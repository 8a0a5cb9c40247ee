"""MNIST in torchvision's file layout (IDX files, optionally gzipped), md5-checked downloads,
and the two ways the digit pairs reshape it (RGB 32x32, a subset of digits)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from .core import DOWNLOAD_ERRORS, DataError, Split, _require_writable


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


