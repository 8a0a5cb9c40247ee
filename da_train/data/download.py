"""Downloads that survive dead links, and the one message that lists every missing file.

Every file the tool downloads has a checksum and a list of sources tried in order. A file is
written under a temporary name next to its final place and moved there (``os.replace``, atomic
on one file system) only once its checksum matches, so a cut-short or wrong download is never
left where a loader would take it for the real file.

The fetch itself is a plain ``urllib`` request with a timeout (torchvision's ``download_url``
has none, so a dead host that never answers would hang a run forever, and it draws a progress
bar per file, 200 of them for the BSDS500 photos); the mirror lists and MNIST md5s still come
from torchvision.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .core import DOWNLOAD_ERRORS, DataError

log = logging.getLogger(__name__)

USER_AGENT = "da-train (python urllib)"
#: Seconds without an answer before a source counts as dead and the next one is tried.
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Remote:
    """One file to download: its name in the target folder, its sources in the order they are
    tried, and its checksum (``algorithm`` is any hashlib name: sha256, md5)."""

    name: str
    urls: tuple[str, ...]
    digest: str
    algorithm: str = "sha256"


class DownloadFailed(DataError):
    """A download that no source completed. The message says what to do; ``reason`` is the
    short why (each source and its error), for messages that gather several failures."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def _file_failed(remote: Remote, dest: Path, failures: list[str]) -> DownloadFailed:
    tried = "; ".join(failures)
    return DownloadFailed(
        f"Downloading {remote.name} into {dest.parent} failed from every mirror ({tried}). "
        f"Nothing was left at {dest}. Check the network and run again with "
        f"data.download=true, or copy the file there by hand (its {remote.algorithm} must "
        f"be {remote.digest}).", f"{remote.name}: {tried}")


def reason(err: Exception) -> str:
    """The short why of a failed download (the whole message for other errors)."""
    return getattr(err, "reason", None) or " ".join(str(err).split())


def fetch_url(url: str, dest: Path, timeout: float = TIMEOUT_S) -> None:
    """Write the body of ``url`` to ``dest``; a body shorter than its Content-Length fails."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)
        expected = response.length  # bytes still unread; None without Content-Length
    if expected:
        raise OSError(f"connection closed {expected} bytes before the end")


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks (hashlib.file_digest needs Python 3.11)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def temp_path(folder: Path, name: str) -> Path:
    """A fresh hidden file next to the final place, so ``os.replace`` into place is atomic and
    a leftover (after a kill) never has the final name."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
    os.close(fd)
    return Path(tmp)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` all at once or not at all."""
    tmp = temp_path(path.parent, path.name)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def download(remote: Remote, folder: str | Path, fetch: Callable | None = None) -> Path:
    """Fetch ``remote`` into ``folder``, trying its sources in order; returns the final path.

    A source that fails (network error, HTTP error, timeout, wrong checksum) is recorded and
    the next one tried; when all fail, :class:`DownloadFailed` lists each source and why, and
    no file is left at the final path.
    """
    fetch = fetch or fetch_url  # looked up per call, so tests can patch the module attribute
    dest = Path(folder) / remote.name
    failures = []
    for url in remote.urls:
        tmp = temp_path(dest.parent, remote.name)
        try:
            log.debug("Downloading %s", url)
            fetch(url, tmp)
            actual = file_digest(tmp, remote.algorithm)
            if actual == remote.digest:
                os.replace(tmp, dest)
                return dest
            failures.append(f"{url}: the downloaded {dest} does not match its published "
                            f"{remote.algorithm} {remote.digest} (got {actual}: cut short, or "
                            "the source serves a different file)")
        except DOWNLOAD_ERRORS as err:
            failures.append(f"{url}: {' '.join(str(err).split()) or type(err).__name__}")
        finally:
            tmp.unlink(missing_ok=True)
        log.warning("Download failed, trying the next source: %s", failures[-1])
    raise _file_failed(remote, dest, failures)


# ------------------------------------------------------------------------ missing data
@dataclass
class Missing:
    """Files of one dataset that are not on disk: what the message lists, where they belong,
    how to get them by hand, and (when the tool can download them) the function that does."""

    what: str
    folder: Path
    names: list[str]
    total: int
    by_hand: str
    fetch: Callable[[], None] | None = None

    def line(self) -> str:
        shown = self.names if len(self.names) <= 8 else [*self.names[:3], "..."]
        return (f"- {self.what} not found in {self.folder}/: {len(self.names)} of {self.total} "
                f"missing ({', '.join(shown)}). By hand: {self.by_hand}")


def fetch_missing(groups: list[Missing]) -> list[str]:
    """Download every group that can be downloaded; returns why each failed group failed
    (every group is tried, so one dead source does not hide the state of the others)."""
    failures = []
    for group in groups:
        if group.fetch is None:
            failures.append(f"{group.what}: no download exists for these; copy them by hand")
            continue
        try:
            group.fetch()
        except DataError as err:
            failures.append(f"{group.what}: {reason(err)}")
    return failures


def missing_message(pair: str, root: str | Path, groups: list[Missing], download: bool,
                    failures: list[str], cache_root: str | Path | None = None) -> str:
    """One message for all missing files of a pair, with both ways forward."""
    root = Path(root).absolute()
    if download:
        state = "data.download=true, but the download failed"
        online = ("1. With network: check the connection (or proxy) and run the same command "
                  "again; files already fetched are kept, only the rest is downloaded.")
    else:
        state = "data.download=false"
        online = ("1. With network: run again with data.download=true (the default); each file "
                  "is checksum-verified and fetched from a mirror when its first source fails.")
    lines = [f"Data for data.name={pair} is missing under data.root={root} ({state}):",
             *(g.line() for g in groups)]
    if failures:
        lines += ["Why the download failed:", *(f"  {f}" for f in failures)]
    lines += [
        "Two ways forward:", online,
        "2. Offline: on a machine with the files, lay them out in one folder <dir> as above "
        f"({', '.join(_relative(g.folder, root) for g in groups)}), copy <dir> here and run "
        "`DA_DATA_ROOT=<dir> da-train data.download=false` (data.root defaults to "
        "$DA_DATA_ROOT, else ./data; or pass data.root=<dir>)."]
    if cache_root is not None:
        lines.append(
            f"   Nothing is written into <dir>: the built MNIST-M is cached in {cache_root} "
            "(data.cache_root; default $DA_CACHE_DIR, else ~/.cache/da-train), so <dir> may be "
            "read-only or shared; add data.cache_root=<folder> to put the cache elsewhere.")
    return "\n".join(lines)


def _relative(folder: Path, root: Path) -> str:
    try:
        return f"<dir>/{Path(folder).absolute().relative_to(root)}/"
    except ValueError:
        return f"{folder}/"
