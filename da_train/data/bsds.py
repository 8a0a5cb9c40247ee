"""The BSDS500 training photos: the backgrounds of the built MNIST-M."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

from . import download as download_module
from .core import DOWNLOAD_ERRORS, DataError, _require_writable
from .download import DownloadFailed, Missing, Remote, reason, write_atomic

log = logging.getLogger(__name__)

BSDS_URL = ("http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/BSR/"
            "BSR_bsds500.tgz")
BSDS_TRAIN_MEMBER = "BSR/BSDS500/data/images/train/"
BSDS_TRAIN_COUNT = 200
#: The fallback: the same 200 JPEGs in GitHub BIDS/BSDS500 (a 2016 mirror of the Berkeley
#: release) at a pinned commit, one raw file each, checked against the shipped sha256 list.
BSDS_GITHUB_COMMIT = "a04b7c6c3a9f0ace74bf205c72a43d32e1c72722"
BSDS_GITHUB_RAW = (f"https://raw.githubusercontent.com/BIDS/BSDS500/{BSDS_GITHUB_COMMIT}/"
                   "BSDS500/data/images/train/")
CHECKSUM_FILE = "checksums/bsds500_train.sha256"
STAGING = ".train.partial"


def train_checksums() -> dict[str, str]:
    """{file name: sha256} of the 200 training photos (``sha256sum`` format, paths relative to
    a data root, so ``cd <root> && sha256sum -c`` checks a copy by hand)."""
    text = resources.files(__package__).joinpath(CHECKSUM_FILE).read_text()
    sums = {}
    for line in text.splitlines():
        if line.strip():
            digest, path = line.split(maxsplit=1)
            sums[Path(path.lstrip("*")).name] = digest
    return sums


def missing_bsds(root: str | Path) -> Missing | None:
    """The training photos not in ``<root>/BSDS500/train``, or None when the set is usable.

    An empty folder misses all 200. A folder holding some of the release's file names but not
    all is a cut-short copy (it would change every built image), so the rest count as missing.
    A folder of other JPEGs only is taken as the user's own backgrounds (the tests use that).
    """
    folder = Path(root) / "BSDS500" / "train"
    known = train_checksums()
    present = {p.name for p in folder.glob("*.jpg")}
    missing = sorted(set(known) - present)
    if present and (not present & set(known) or not missing):
        return None
    return Missing("BSDS500 training photos", folder, missing, len(known),
                   f"the JPEGs of {BSDS_TRAIN_MEMBER} in {BSDS_URL} (or of {BSDS_GITHUB_RAW}); "
                   f"their sha256 are in da_train/data/{CHECKSUM_FILE} (needed by "
                   "data.mnistm=build).",
                   lambda: download_bsds_train(root))


def download_bsds_train(root: str | Path) -> None:
    """Fetch the 200 training photos into <root>/BSDS500/train, each checked against its sha256.

    Sources in order: the Berkeley archive (no published checksum, unreachable at times; its
    photos are checked one by one instead), then the GitHub mirror one photo at a time for
    whatever the archive did not deliver. Verified photos are staged in a hidden folder next
    to ``train`` (kept across runs, so a cut-off download resumes) and moved in only once all
    200 are there, so a half download never passes for the full set.
    """
    folder = Path(root) / "BSDS500" / "train"
    _require_writable(folder.parent, "The BSDS500 training photos (data.mnistm=build)")
    staging = folder.parent / STAGING
    staging.mkdir(exist_ok=True)
    sums, errors = train_checksums(), []
    for source in (_from_archive, _from_github):
        todo = _still_needed(sums, staging, folder)
        if not todo:
            break
        try:
            source(staging, todo, sums)
        except DOWNLOAD_ERRORS as err:  # DataError is a RuntimeError
            errors.append(reason(err))
    todo = _still_needed(sums, staging, folder)
    if todo:
        raise _photos_failed(staging, folder, len(todo), len(sums), errors)
    folder.mkdir(exist_ok=True)
    for name in sums:
        if (staging / name).exists():
            os.replace(staging / name, folder / name)
    shutil.rmtree(staging)  # and any temporary file a killed run left there


def _photos_failed(staging: Path, folder: Path, left: int, total: int,
                   errors: list[str]) -> DownloadFailed:
    why = f"{left} of {total} photos still missing ({'; '.join(errors)})"
    kept = (f"The {total - left} verified so far are kept in {staging}/ and the next run with "
            "data.download=true fetches only the rest. " if left < total else "")
    if left == total:
        shutil.rmtree(staging, ignore_errors=True)
    return DownloadFailed(
        f"Downloading the BSDS500 training photos failed from every source; {why}. {kept}Or "
        f"copy the photos by hand to {folder}/ (see da_train/data/{CHECKSUM_FILE}), or use "
        "data.mnistm=released.", why)


def _still_needed(sums: dict[str, str], staging: Path, folder: Path) -> list[str]:
    """Photos neither staged (only verified ones ever are) nor already in place."""
    return [n for n in sorted(sums) if not (staging / n).exists() and not (folder / n).exists()]


def _from_archive(staging: Path, todo: list[str], sums: dict[str, str]) -> None:
    """Source 1: the Berkeley release archive, downloaded into a temporary folder."""
    with tempfile.TemporaryDirectory(dir=staging.parent) as tmp:
        archive = Path(tmp) / Path(BSDS_URL).name
        log.info("Downloading %s (about 70 MB)", BSDS_URL)
        try:
            download_module.fetch_url(BSDS_URL, archive)
        except DOWNLOAD_ERRORS as err:
            log.warning("%s failed (%s); trying the GitHub mirror", BSDS_URL, err)
            raise DataError(f"{BSDS_URL}: {err}") from err
        _extract_verified(archive, staging, set(todo), sums)


def _from_github(staging: Path, todo: list[str], sums: dict[str, str]) -> None:
    """Source 2: the GitHub mirror, one raw JPEG per request; stops at the first that fails."""
    log.info("Downloading %d BSDS500 training photos from %s", len(todo), BSDS_GITHUB_RAW)
    for i, name in enumerate(todo):
        if i and i % 50 == 0:
            log.info("BSDS500 photos from GitHub: %d of %d", i, len(todo))
        download_module.download(Remote(name, (BSDS_GITHUB_RAW + name,), sums[name]), staging)


def _extract_verified(archive: Path, staging: Path, todo: set[str], sums: dict[str, str]) -> None:
    """Stage the training JPEGs of ``todo`` whose sha256 matches (by base name: no member path
    is trusted); a photo that differs is reported and left to the next source."""
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")
                       and m.name.removeprefix("./").startswith(BSDS_TRAIN_MEMBER)]
            if len(members) != BSDS_TRAIN_COUNT:
                raise DataError(
                    f"The archive downloaded from {BSDS_URL} holds {len(members)} JPEGs under "
                    f"{BSDS_TRAIN_MEMBER}, expected {BSDS_TRAIN_COUNT}: it is not the BSDS500 "
                    "release.")
            differ = [_stage_member(tar, m, staging, todo, sums) for m in members]
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(
            f"The archive downloaded from {BSDS_URL} is not a readable tar.gz ({err}); the "
            "download was probably cut short.") from err
    differ = [n for n in differ if n]
    if differ:
        raise DataError(f"{len(differ)} photos in the archive from {BSDS_URL} do not match "
                        f"their sha256 (e.g. {differ[0]}); the archive is not the expected "
                        "release.")


def _stage_member(tar: tarfile.TarFile, member: tarfile.TarInfo, staging: Path, todo: set[str],
                  sums: dict[str, str]) -> str | None:
    """Write one verified photo into ``staging``; returns its name when its sha256 differs."""
    name = Path(member.name).name
    if name not in todo:
        return None if name in sums else name
    with tar.extractfile(member) as src:
        data = src.read()
    if hashlib.sha256(data).hexdigest() != sums[name]:
        return name
    write_atomic(staging / name, data)
    return None


def load_bsds_train(root: str | Path, download: bool = False) -> list[np.ndarray]:
    """The BSDS500 training photos (RGB arrays), the backgrounds of the built MNIST-M."""
    folder = Path(root) / "BSDS500" / "train"
    missing = missing_bsds(root)
    if missing is not None and download:
        download_bsds_train(root)
        missing = missing_bsds(root)
    if missing is not None:
        raise DataError(
            f"BSDS500 training photos missing in {folder}/ ({len(missing.names)} of "
            f"{missing.total}), needed by data.mnistm=build. Run with data.download=true, or "
            f"copy {BSDS_TRAIN_MEMBER}*.jpg from {BSDS_URL} to {folder}/ and run with "
            "data.download=false, or use data.mnistm=released.")
    return [_read_photo(f) for f in sorted(folder.glob("*.jpg"))]


def _read_photo(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as err:
        raise DataError(f"Cannot decode BSDS500 photo {path}: {err}. Delete it (or the whole "
                        "folder, to download it again with data.download=true).") from err
