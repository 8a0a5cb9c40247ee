"""The decoded-image cache: every image decoded once into a uint8 memory-mapped file.

``<cache_dir>/<key>.u8`` holds N x 3 x S x S uint8 (shorter side resized to S, centre crop);
``<key>.json`` its count, side S, the files left out and the source it was built for. S is the
requested size, or less when every image is smaller: images are never blown up into the cache
(2,000 28x28 digits take 4.7 MB, not 376 MB at 256), the augmentation resizes on the device.
The key hashes the file list (in order), each file's size and mtime, the requested size and
the error policy, so a rerun maps the file in milliseconds and decodes nothing, and a changed,
added or removed image gives a new key (a rebuild); the rebuilt cache then replaces the
stale one of the same source (the same folders or lists, split the same way), so old caches
do not pile up. Decoding runs in a thread pool (Pillow releases the GIL while decoding and
resizing), with a progress bar on a terminal and a log line before and after.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .core import DataError

VERSION = 2  # 2: images smaller than the requested size are cached at their own size
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
log = logging.getLogger(__name__)


def cache_key(files: list[Path], size: int, on_error: str) -> str:
    """A hash of what the cache's bytes depend on (paths, sizes, mtimes, size, policy).
    Every file that cannot be found is named in one DataError (not only the first)."""
    h = hashlib.sha1(f"v{VERSION} {size} {on_error}\n".encode())
    missing = []
    for path in files:
        try:
            st = os.stat(path)
        except OSError as err:
            missing.append((path, err.strerror or str(err)))
            continue
        h.update(f"{path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    if missing:
        shown = "; ".join(f"{p} ({why})" for p, why in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise DataError(f"{len(missing)} image file(s) listed but not found or unreadable: "
                        f"{shown}{more}. Fix the paths in the list (relative paths are read "
                        "from data.<domain>.list_root, else the list's folder) or remove those "
                        "lines.")
    return h.hexdigest()[:20]


def source_id(source: str, size: int, on_error: str) -> str:
    """Which caches are versions of one another: same source (folders or lists, split the
    same way), same requested size and policy; only the files' contents differ."""
    return hashlib.sha1(f"v{VERSION} {size} {on_error}\n{source}".encode()).hexdigest()[:20]


def decode_image(path: Path, size: int) -> np.ndarray:
    """One image -> uint8 3 x size x size (RGB; shorter side resized, centre crop).

    JPEG ``draft`` lets libjpeg decode at a reduced scale when the image is much larger than
    ``size`` (never below it), which is most of the decoding cost for photos.
    """
    with Image.open(path) as im:
        im.draft("RGB", (size, size))
        im = ImageOps.fit(im.convert("RGB"), (size, size), Image.BILINEAR)
        return np.asarray(im).transpose(2, 0, 1)


def _shorter_side(path: Path) -> int:
    """The shorter side of an image from its header (0 when unreadable: decoding says why)."""
    try:
        with Image.open(path) as im:
            return min(im.size)
    except DECODE_ERRORS:
        return 0


def cache_side(files: list[Path], size: int, workers: int = 0) -> int:
    """The side S of the cached images: ``size``, or the largest shorter side of the images
    when all are smaller (they are then stored as they are, not enlarged)."""
    if not files:
        return size
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        largest = max(pool.map(_shorter_side, files))
    return size if largest <= 0 else min(size, largest)


def _decode_all(files, size, out, workers) -> list[tuple[Path, str]]:
    """Decode ``files`` into ``out`` (a memmap); return the (file, error) of failed ones.
    The bar shows on a terminal only (no carriage-return fragments in log files)."""
    from tqdm import tqdm

    failed = []

    def one(i):
        try:
            out[i] = decode_image(files[i], size)
        except DECODE_ERRORS as err:
            failed.append((files[i], f"{type(err).__name__}: {err}"))

    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(workers) as pool:
        for _ in tqdm(pool.map(one, range(len(files))), total=len(files), unit="img",
                      desc=f"decoding {len(files)} images", mininterval=1.0, leave=False,
                      disable=not sys.stderr.isatty()):
            pass
    return sorted(failed)


def _failure_message(failed, on_error) -> str:
    shown = "; ".join(f"{p} ({e})" for p, e in failed[:10])
    more = f" and {len(failed) - 10} more" if len(failed) > 10 else ""
    if on_error == "skip":
        return (f"Skipped {len(failed)} unreadable image(s) (data.on_error=skip; all listed in "
                f"results.json skipped_images): {shown}{more}.")
    return (f"Cannot decode {len(failed)} image(s): {shown}{more}. Replace or delete them, or "
            "run with data.on_error=skip to leave them out (they are then listed in cli.log "
            "and results.json).")


def _finish(tmp: Path, final: Path, data, keep: np.ndarray, size: int) -> None:
    """Write the kept rows to ``final`` (a compacted copy when some were skipped)."""
    if len(keep) == len(data):
        data.flush()
        del data
        os.replace(tmp, final)
        return
    out = np.memmap(final.with_suffix(".part2"), np.uint8, "w+", shape=(len(keep), 3, size, size))
    for j in range(0, len(keep), 256):
        out[j:j + 256] = data[keep[j:j + 256]]
    out.flush()
    del out, data
    os.replace(final.with_suffix(".part2"), final)
    tmp.unlink()


def _remove_stale(cache_dir: Path, source: str, key: str) -> None:
    """Delete the caches built earlier for the same source (files since changed); a process
    that still maps one keeps its pages (POSIX unlink), so this is safe while others run."""
    for meta_path in cache_dir.glob("*.json"):
        if meta_path.stem == key:
            continue
        try:
            if json.loads(meta_path.read_text()).get("source") != source:
                continue
            meta_path.with_suffix(".u8").unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
            log.info("removed the stale image cache %s (its images changed)",
                     meta_path.with_suffix(".u8"))
        except (OSError, ValueError):
            continue


def cached_images(files: list[Path], size: int, cache_dir, workers: int = 0,
                  on_error: str = "raise", source: str | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(images N' x 3 x S x S uint8, memory-mapped; indices of ``files`` they hold), where S
    is ``size`` or, when every image is smaller, the largest image's shorter side.

    Built on first use, reused while no file changes. ``on_error=raise`` names unreadable
    images in a DataError; ``skip`` leaves them out, logging them (cli.log) each time the
    cache is used. ``source`` (e.g. the domain's folder and split) lets a rebuild delete the
    stale cache of the same source.
    """
    cache_dir = Path(cache_dir)
    key = cache_key(files, size, on_error)
    final, meta_path = cache_dir / f"{key}.u8", cache_dir / f"{key}.json"
    if meta_path.exists() and final.exists():
        meta = json.loads(meta_path.read_text())
        keep, side = np.array(meta["kept"], dtype=np.int64), int(meta.get("size", size))
        if final.stat().st_size == len(keep) * 3 * side * side:
            if meta["skipped"]:
                log.warning(meta["warning"])
            return _map(final, len(keep), side), keep
    cache_dir.mkdir(parents=True, exist_ok=True)
    side = cache_side(files, size, workers)
    started = time.perf_counter()
    log.info("decoding %d images into %s at %dx%d", len(files), final, side, side)
    tmp = cache_dir / f"{key}.{os.getpid()}.part"
    data = np.memmap(tmp, np.uint8, "w+", shape=(len(files), 3, side, side))
    failed = _decode_all(files, side, data, workers)
    if failed and on_error == "raise":
        del data
        tmp.unlink()
        raise DataError(_failure_message(failed, on_error))
    bad = {str(p) for p, _ in failed}
    keep = np.array([i for i, f in enumerate(files) if str(f) not in bad], dtype=np.int64)
    _finish(tmp, final, data, keep, side)
    warning = _failure_message(failed, "skip") if failed else ""
    sid = source_id(source, size, on_error) if source is not None else None
    meta_path.write_text(json.dumps({"kept": keep.tolist(), "skipped": sorted(bad),
                                     "warning": warning, "size": side, "source": sid}))
    log.info("decoded %d images in %.1f s", len(files), time.perf_counter() - started)
    if sid is not None:
        _remove_stale(cache_dir, sid, key)
    if failed:
        log.warning(warning)
    return _map(final, len(keep), side), keep


def _map(path: Path, n: int, size: int) -> np.ndarray:
    """The cache file mapped copy-on-write (torch can wrap it; nothing is written back).

    MAP_POPULATE maps every page at once: a random batch then never page-faults (first
    touches of a plain mapping cost about 3 ms per 256x256 image here, more than the
    augmentation), while the pages stay shared with the OS file cache (no second copy).
    """
    if n == 0:
        return np.zeros((0, 3, size, size), np.uint8)
    nbytes = n * 3 * size * size
    flags = mmap.MAP_PRIVATE
    if nbytes < 0.5 * _available_memory():  # a cache larger than RAM is paged in on demand
        flags |= getattr(mmap, "MAP_POPULATE", 0)
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), nbytes, flags=flags,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE)
    return np.frombuffer(mapped, np.uint8).reshape(n, 3, size, size)


def _available_memory() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0
