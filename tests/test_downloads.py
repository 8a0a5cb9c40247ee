"""Downloads that survive dead links, and the one missing-data message (issue 17).

Never the network: a local http.server on 127.0.0.1 serves files from a tmp folder, and a
port with no server stands for a dead link.
"""

import gzip
import hashlib
import io
import socket
import threading
import urllib.error
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import da_train
from conftest import tar_gz, write_idx
from omegaconf import OmegaConf
from PIL import Image

from da_train.data import DataError, load_mnist, load_pair
from da_train.data import bsds as bsds_module
from da_train.data.bsds import load_bsds_train, missing_bsds, train_checksums
from da_train.data.download import DownloadFailed, Remote, download, fetch_url, file_digest
from da_train.data.pairs import missing_files

MNIST_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class _Handler(SimpleHTTPRequestHandler):
    """Serves a folder; records each requested path; ``/short/<n>`` announces 100 bytes more
    than it sends (a connection dropped mid-file)."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.server.requests.append(self.path)
        if self.path.startswith("/short/"):
            body = b"x" * int(self.path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) + 100))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """(base URL, served folder, list of requested paths)."""
    served = tmp_path / "served"
    served.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(served)))
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", served, httpd.requests
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def dead_url():
    """A URL on a port where nothing listens: the connection is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------ download()
def test_dead_first_source_falls_back_to_the_next(server, dead_url, tmp_path):
    base, served, requests = server
    (served / "f.bin").write_bytes(b"payload")
    dest = tmp_path / "dest"
    dest.mkdir()
    remote = Remote("f.bin", (dead_url + "f.bin", base + "missing/f.bin", base + "f.bin"),
                    _sha(b"payload"))
    path = download(remote, dest)
    assert path == dest / "f.bin" and path.read_bytes() == b"payload"
    assert requests == ["/missing/f.bin", "/f.bin"]  # the 404 was tried, then the good one
    assert _leftovers(dest) == ["f.bin"]  # no temporary file left behind


def test_corrupted_file_fails_its_checksum_and_leaves_nothing(server, dead_url, tmp_path):
    base, served, _ = server
    (served / "f.bin").write_bytes(b"corrupted")
    dest = tmp_path / "dest"
    dest.mkdir()
    remote = Remote("f.bin", (dead_url + "f.bin", base + "f.bin"), _sha(b"payload"))
    with pytest.raises(DownloadFailed) as err:
        download(remote, dest)
    msg = str(err.value)
    assert f"Downloading f.bin into {dest} failed from every mirror" in msg
    assert "Connection refused" in msg  # the dead source, with its reason
    assert f"{base}f.bin: the downloaded {dest / 'f.bin'} does not match its published " \
           f"sha256 {_sha(b'payload')} (got {_sha(b'corrupted')}" in msg
    assert "run again with data.download=true" in msg and "copy the file there by hand" in msg
    assert err.value.reason.startswith(f"f.bin: {dead_url}f.bin: ") and f"; {base}f.bin: " \
        in err.value.reason  # the short why, for messages that gather several failures
    assert _leftovers(dest) == []  # neither the bad file nor a temporary one


def test_connection_dropped_mid_file_is_an_error(server, tmp_path):
    base, _, _ = server
    with pytest.raises(OSError, match="connection closed 100 bytes before the end"):
        fetch_url(base + "short/50", tmp_path / "x")


def test_md5_checked_download(server, tmp_path):
    base, served, _ = server
    (served / "a").write_bytes(b"abc")
    md5 = hashlib.md5(b"abc").hexdigest()
    assert download(Remote("a", (base + "a",), md5, "md5"), tmp_path).read_bytes() == b"abc"
    assert file_digest(tmp_path / "a", "md5") == md5


# ------------------------------------------------------------------------ MNIST
def _serve_mnist(served: Path, monkeypatch, mirrors: list[str]) -> dict[str, np.ndarray]:
    """Gzipped tiny MNIST files in ``served`` and torchvision's mirror list / md5s pointed at
    them (the order of ``mirrors`` is the order tried)."""
    from torchvision.datasets import MNIST

    rng, arrays, md5s = np.random.default_rng(0), {}, []
    for name in MNIST_NAMES:
        n = 30 if name.startswith("train") else 20
        arrays[name] = (rng.integers(0, 256, (n, 28, 28)) if "images" in name
                        else rng.integers(0, 10, (n,))).astype(np.uint8)
        write_idx(served / name, arrays[name])
        (served / f"{name}.gz").write_bytes(gzip.compress((served / name).read_bytes()))
        md5s.append((f"{name}.gz", file_digest(served / f"{name}.gz", "md5")))
    monkeypatch.setattr(MNIST, "mirrors", mirrors)
    monkeypatch.setattr(MNIST, "resources", md5s)
    return arrays


def test_mnist_downloads_from_second_mirror_only_missing_files(server, dead_url, tmp_path,
                                                                monkeypatch):
    base, served, requests = server
    arrays = _serve_mnist(served, monkeypatch, [dead_url, base])
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "t10k-images-idx3-ubyte", arrays["t10k-images-idx3-ubyte"])  # present
    test = load_mnist(tmp_path / "root", "test", download=True)
    assert requests == ["/t10k-labels-idx1-ubyte.gz"]
    assert np.array_equal(test.labels.numpy(), arrays["t10k-labels-idx1-ubyte"])
    # torchvision's layout: the .gz and its unpacked twin, nothing else
    assert _leftovers(raw) == ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
                               "t10k-labels-idx1-ubyte.gz"]


def test_mnist_corrupt_mirror_falls_back_and_never_leaves_bad_file(server, tmp_path, monkeypatch):
    base, served, _ = server
    _serve_mnist(served, monkeypatch, [base + "bad/", base])
    (served / "bad").mkdir()
    (served / "bad" / "t10k-images-idx3-ubyte.gz").write_bytes(b"<html>gone</html>")
    load_mnist(tmp_path, "test", download=True)  # 404 / wrong md5 on the first, fine on second
    (served / "t10k-labels-idx1-ubyte.gz").write_bytes(b"truncated")
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz .*does not match its "
                                        r"published md5"):
        load_mnist(tmp_path, "test", download=True)
    assert _leftovers(tmp_path / "MNIST" / "raw") == [
        "t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz"]


# ------------------------------------------------------------------------ BSDS500
def _photos(n: int) -> dict[str, bytes]:
    rng, photos = np.random.default_rng(1), {}
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(buf, "JPEG")
        photos[f"{1000 + i}.jpg"] = buf.getvalue()
    return photos


def _serve_bsds(monkeypatch, served: Path, base: str, archive_url: str, photos: dict) -> Path:
    """The GitHub fallback pointed at ``served/github/`` and a checksum list for ``photos``."""
    github = served / "github"
    github.mkdir()
    for name, data in photos.items():
        (github / name).write_bytes(data)
    monkeypatch.setattr(bsds_module, "BSDS_URL", archive_url)
    monkeypatch.setattr(bsds_module, "BSDS_GITHUB_RAW", base + "github/")
    monkeypatch.setattr(bsds_module, "train_checksums",
                        lambda: {n: _sha(d) for n, d in photos.items()})
    return github


def test_bsds_dead_archive_falls_back_to_github(server, dead_url, tmp_path, monkeypatch):
    base, served, requests = server
    photos = _photos(6)
    _serve_bsds(monkeypatch, served, base, dead_url + "BSR_bsds500.tgz", photos)
    loaded = load_bsds_train(tmp_path, download=True)
    assert len(loaded) == 6 and loaded[0].shape == (36, 40, 3)
    assert sorted(requests) == sorted(f"/github/{n}" for n in photos)
    folder = tmp_path / "BSDS500" / "train"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == photos
    assert _leftovers(tmp_path / "BSDS500") == ["train"]  # the staging folder is gone


def test_bsds_archive_photo_with_wrong_sha256_comes_from_github(server, tmp_path, monkeypatch):
    base, served, requests = server
    photos = _photos(4)
    members = {f"{bsds_module.BSDS_TRAIN_MEMBER}{n}": d for n, d in photos.items()}
    members[f"{bsds_module.BSDS_TRAIN_MEMBER}1002.jpg"] = b"re-encoded"
    (served / "BSR_bsds500.tgz").write_bytes(tar_gz(members))
    _serve_bsds(monkeypatch, served, base, base + "BSR_bsds500.tgz", photos)
    monkeypatch.setattr(bsds_module, "BSDS_TRAIN_COUNT", 4)
    load_bsds_train(tmp_path, download=True)
    assert requests == ["/BSR_bsds500.tgz", "/github/1002.jpg"]
    folder = tmp_path / "BSDS500" / "train"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == photos


def test_bsds_failed_download_resumes_with_only_the_rest(server, dead_url, tmp_path,
                                                         monkeypatch):
    base, served, requests = server
    photos = _photos(5)
    github = _serve_bsds(monkeypatch, served, base, dead_url + "x.tgz", photos)
    (github / "1003.jpg").write_bytes(b"a different file")
    with pytest.raises(DataError) as err:
        load_bsds_train(tmp_path, download=True)
    msg = str(err.value)
    assert "failed from every source; 2 of 5 photos still missing" in msg
    assert "Connection refused" in msg and "1003.jpg" in msg and "sha256" in msg
    assert "data.mnistm=released" in msg and "fetches only the rest" in msg
    assert not (tmp_path / "BSDS500" / "train").exists()  # nothing half-filled in place
    (github / "1003.jpg").write_bytes(photos["1003.jpg"])
    requests.clear()
    assert len(load_bsds_train(tmp_path, download=True)) == 5
    assert requests == ["/github/1003.jpg", "/github/1004.jpg"]
    assert _leftovers(tmp_path / "BSDS500") == ["train"]


def test_partial_bsds_copy_counts_the_rest_as_missing(tmp_path):
    folder = tmp_path / "BSDS500" / "train"
    folder.mkdir(parents=True)
    names = sorted(train_checksums())
    for name in names[:150]:
        (folder / name).write_bytes(b"")
    missing = missing_bsds(tmp_path)
    assert missing.names == names[150:] and missing.total == 200
    with pytest.raises(DataError, match=r"BSDS500 training photos missing in .* \(50 of 200\)"):
        load_bsds_train(tmp_path, download=False)


def test_shipped_checksums_match_the_real_photos(real_root):
    sums = train_checksums()
    assert len(sums) == 200
    folder = real_root / "BSDS500" / "train"
    assert {p.name: file_digest(p) for p in folder.glob("*.jpg")} == sums
    assert missing_bsds(real_root) is None


# ------------------------------------------------------------------------ missing data
def _cfg(root, name="mnist_mnistm", download=False, **extra):
    base = {"name": name, "root": str(root), "download": download, "mnistm": "build",
            "mnistm_dir": str(root), "cache_root": str(root), "build_seed": 0}
    return OmegaConf.create({**base, **extra})


def test_missing_data_message_lists_every_file_at_once(tmp_path):
    root = tmp_path / "empty"
    with pytest.raises(DataError) as err:
        load_pair(_cfg(root))
    msg = str(err.value)
    assert f"Data for data.name=mnist_mnistm is missing under data.root={root} " \
           "(data.download=false)" in msg
    raw = root / "MNIST" / "raw"
    assert f"MNIST files not found in {raw}/: 4 of 4 missing" in msg
    assert all(f"{n}.gz" in msg for n in MNIST_NAMES)
    assert f"BSDS500 training photos not found in {root / 'BSDS500' / 'train'}/: 200 of 200 " \
           "missing" in msg and "(needed by data.mnistm=build)" in msg
    assert "run again with data.download=true" in msg
    assert "<dir>/MNIST/raw/, <dir>/BSDS500/train/" in msg
    assert "`DA_DATA_ROOT=<dir> da-train data.download=false`" in msg
    assert not root.exists()  # checking created nothing


def test_failed_download_message_lists_every_file_and_every_reason(tmp_path, monkeypatch):
    calls = []

    def offline(url, dest, **_):
        calls.append(url)
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr("da_train.data.download.fetch_url", offline)
    with pytest.raises(DataError) as err:
        load_pair(_cfg(tmp_path, download=True))
    msg = str(err.value)
    assert "(data.download=true, but the download failed)" in msg
    assert "4 of 4 missing" in msg and "200 of 200 missing" in msg
    assert "Why the download failed:" in msg and msg.count("no route to host") == 4
    assert "Nothing was left" not in msg  # the short reasons, not each file's own advice
    assert not (tmp_path / "BSDS500" / ".train.partial").exists()
    assert "DA_DATA_ROOT=<dir> da-train data.download=false" in msg
    # MNIST: both mirrors of the first file, then stop; BSDS500: the archive, then GitHub
    assert len(calls) == 4 and calls[2].endswith(".tgz") and "BIDS/BSDS500" in calls[3]


def test_only_what_is_missing_is_listed(digits_root, tmp_path):
    (digits_root / "MNIST" / "raw" / "train-labels-idx1-ubyte").unlink()
    groups = missing_files(_cfg(digits_root))
    assert [(g.what.split()[0], g.names[:1], len(g.names)) for g in groups] == [
        ("MNIST", ["train-labels-idx1-ubyte.gz"], 1), ("BSDS500", ["100075.jpg"], 200)]
    assert [g.what for g in missing_files(_cfg(digits_root, "mnist01_23"))] == [
        "MNIST files"]
    released = missing_files(_cfg(digits_root, mnistm="released"))
    assert released[1].names == ["mnist_m_train_labels.txt", "mnist_m_train/",
                                 "mnist_m_test_labels.txt", "mnist_m_test/"]


def test_cached_mnistm_build_needs_no_photos(digits_root):
    cache = digits_root / "mnist_m_built"
    cache.mkdir()
    for split in ("train", "test"):
        (cache / f"{split}_mask_seed0.pt").write_bytes(b"")
    assert missing_files(_cfg(digits_root)) == []


def test_cli_offline_message_names_all_files(tmp_path):
    proc = da_train(["data.download=false"], tmp_path, {"DA_DATA_ROOT": str(tmp_path / "none")})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    for text in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "200 of 200",
                 "DA_DATA_ROOT=<dir> da-train data.download=false"):
        assert text in proc.stderr
