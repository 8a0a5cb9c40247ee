"""The decoded-image cache: every image decoded once into a uint8 memory-mapped file.

``<cache_dir>/<key>.u8`` holds N x 3 x S x S uint8 (shorter side resized to S, centre crop);
``<key>.json`` its count and the files left out. The key hashes the file list (in order), each
file's size and mtime, S and the error policy, so a rerun maps the file in seconds and decodes
nothing, and a changed, added or removed image gives a new key (a rebuild). Decoding runs in a
thread pool (Pillow releases the GIL while decoding and resizing) with a progress bar.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .core import DataError

VERSION = 1
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def cache_key(files: list[Path], size: int, on_error: str) -> str:
    """A hash of what the cache's bytes depend on (paths, sizes, mtimes, size, policy)."""
    h = hashlib.sha1(f"v{VERSION} {size} {on_error}\n".encode())
    for path in files:
        try:
            st = os.stat(path)
        except OSError as err:
            raise DataError(f"Image file not found or unreadable: {path} ({err}).") from err
        h.update(f"{path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def decode_image(path: Path, size: int) -> np.ndarray:
    """One image -> uint8 3 x size x size (RGB; shorter side resized, centre crop).

    JPEG ``draft`` lets libjpeg decode at a reduced scale when the image is much larger than
    ``size`` (never below it), which is most of the decoding cost for photos.
    """
    with Image.open(path) as im:
        im.draft("RGB", (size, size))
        im = ImageOps.fit(im.convert("RGB"), (size, size), Image.BILINEAR)
        return np.asarray(im).transpose(2, 0, 1)


def _decode_all(files, size, out, workers) -> list[tuple[Path, str]]:
    """Decode ``files`` into ``out`` (a memmap); return the (file, error) of failed ones."""
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
                      desc=f"decoding {len(files)} images", mininterval=1.0, leave=False):
            pass
    return sorted(failed)


def _failure_message(failed, on_error) -> str:
    shown = "; ".join(f"{p} ({e})" for p, e in failed[:10])
    more = f" and {len(failed) - 10} more" if len(failed) > 10 else ""
    if on_error == "skip":
        return f"Skipped {len(failed)} unreadable image(s): {shown}{more}."
    return (f"Cannot decode {len(failed)} image(s): {shown}{more}. Replace or delete them, or "
            "run with data.on_error=skip to leave them out with a warning.")


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


def cached_images(files: list[Path], size: int, cache_dir, workers: int = 0,
                  on_error: str = "raise") -> tuple[np.ndarray, np.ndarray]:
    """(images N' x 3 x size x size uint8, memory-mapped; indices of ``files`` they hold).

    Built on first use, reused while no file changes. ``on_error=raise`` names unreadable
    images in a DataError; ``skip`` leaves them out with a warning listing them.
    """
    cache_dir = Path(cache_dir)
    key = cache_key(files, size, on_error)
    final, meta_path = cache_dir / f"{key}.u8", cache_dir / f"{key}.json"
    if meta_path.exists() and final.exists():
        meta = json.loads(meta_path.read_text())
        keep = np.array(meta["kept"], dtype=np.int64)
        if final.stat().st_size == len(keep) * 3 * size * size:
            if meta["skipped"]:
                warnings.warn(meta["warning"], stacklevel=2)
            return _map(final, len(keep), size), keep
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f"{key}.{os.getpid()}.part"
    data = np.memmap(tmp, np.uint8, "w+", shape=(len(files), 3, size, size))
    failed = _decode_all(files, size, data, workers)
    if failed and on_error == "raise":
        del data
        tmp.unlink()
        raise DataError(_failure_message(failed, on_error))
    bad = {str(p) for p, _ in failed}
    keep = np.array([i for i, f in enumerate(files) if str(f) not in bad], dtype=np.int64)
    _finish(tmp, final, data, keep, size)
    warning = _failure_message(failed, "skip") if failed else ""
    meta_path.write_text(json.dumps({"kept": keep.tolist(), "skipped": [str(p) for p in bad],
                                     "warning": warning, "size": size}))
    if failed:
        warnings.warn(warning, stacklevel=2)
    return _map(final, len(keep), size), keep


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
