"""The BSDS500 training photos: the backgrounds of the built MNIST-M."""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from .core import DOWNLOAD_ERRORS, DataError, _require_writable

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
