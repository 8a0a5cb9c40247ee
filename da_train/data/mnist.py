"""MNIST in torchvision's file layout (IDX files, optionally gzipped), md5-checked downloads,
and the two ways the digit pairs reshape it (RGB 32x32, a subset of digits)."""

from __future__ import annotations

import gzip
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from .core import DataError, Split, _require_writable
from .download import Missing, Remote, download, temp_path

log = logging.getLogger(__name__)

#: torchvision's MNIST mirrors (``MNIST.mirrors``), named in messages without importing it.
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "http://yann.lecun.com/exdb/mnist/")


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

    With ``download`` only the missing files are fetched (md5-checked, mirrors in order).
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


def missing_mnist(root: str | Path) -> Missing | None:
    """The MNIST files (both splits) not in ``<root>/MNIST/raw``, or None when all are there:
    what the pair checks before building anything, to name every missing file at once."""
    raw_dir = Path(root) / "MNIST" / "raw"
    names = [n for split in MNIST_FILES.values() for n in split]
    missing = [n for n in names if _find_idx(raw_dir, n) is None]
    if not missing:
        return None
    return Missing("MNIST files", raw_dir, [n + ".gz" for n in missing], len(names),
                   "the .gz files from a torchvision MNIST mirror "
                   f"({MNIST_MIRRORS[0]}); the uncompressed files (no .gz) work too.",
                   lambda: download_mnist(raw_dir, missing))


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
            f"`da-train data.root={raw_dir.parent.parent} data.download=true`, or copy them "
            "there by hand and run `DA_DATA_ROOT=<folder holding MNIST/raw> da-train "
            "data.download=false`.")


def mnist_remotes(names: list[str]) -> list[Remote]:
    """The .gz files of ``names`` (IDX names without .gz): torchvision's mirrors in its order,
    checked against the md5 torchvision publishes (``MNIST.resources``)."""
    from torchvision.datasets import MNIST

    md5s = dict(MNIST.resources)
    return [Remote(n + ".gz", tuple(m + n + ".gz" for m in MNIST.mirrors), md5s[n + ".gz"], "md5")
            for n in names]


def download_mnist(raw_dir: Path, names: list[str]) -> None:
    """Fetch MNIST IDX files (``names`` without .gz) and unpack each next to its .gz.

    One file at a time, each from every mirror in turn; the first file that no mirror delivers
    stops the download (the network is most likely down) with a message naming it.
    """
    _require_writable(raw_dir, "The MNIST files")
    for remote in mnist_remotes(names):
        log.info("Downloading %s into %s", remote.name, raw_dir)
        gz = download(remote, raw_dir)
        _gunzip(gz, raw_dir / remote.name.removesuffix(".gz"))


def _gunzip(src: Path, dest: Path) -> None:
    """Unpack next to the archive (torchvision's layout: both forms in MNIST/raw), atomically."""
    tmp = temp_path(dest.parent, dest.name)
    try:
        with gzip.open(src, "rb") as f_in, open(tmp, "wb") as f_out:
            shutil.copyfileobj(f_in, f_out, 1 << 20)
        os.replace(tmp, dest)
    except (OSError, EOFError) as err:
        raise DataError(f"Cannot unpack {src} ({err}) although its md5 matched. "
                        f"{_refetch(src)}") from err
    finally:
        tmp.unlink(missing_ok=True)


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


