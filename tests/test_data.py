import gzip
import hashlib
import io
import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tar_gz, write_idx
from omegaconf import OmegaConf
from PIL import Image

from da_train.data import (
    BSDS_TRAIN_COUNT,
    BSDS_TRAIN_MEMBER,
    DataError,
    DomainPair,
    Split,
    blend_mnistm,
    build_mnistm,
    load_bsds_train,
    load_mnist,
    load_mnistm_folder,
    load_pair,
    mnist_to_rgb32,
    normalise,
    read_idx,
    select_digits,
)

needs_permissions = pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file permissions")


def test_read_idx_roundtrip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x", arr)
    assert np.array_equal(read_idx(tmp_path / "x"), arr)


def test_truncated_idx_names_file(tmp_path):
    write_idx(tmp_path / "x", np.zeros((10, 28, 28)))
    data = (tmp_path / "x").read_bytes()
    (tmp_path / "x").write_bytes(data[:-100])
    with pytest.raises(DataError, match=r"x is truncated or corrupt: .* expected 7856"):
        read_idx(tmp_path / "x")


def test_missing_mnist_lists_paths_and_fix(tmp_path):
    with pytest.raises(DataError) as err:
        load_mnist(tmp_path, "train", download=False)
    msg = str(err.value)
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte") in msg
    assert "data.download=true" in msg


def test_mnist_to_rgb32_pads_and_repeats():
    x = torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8)
    y = mnist_to_rgb32(x)
    assert y.shape == (2, 3, 32, 32) and y.dtype == torch.uint8
    assert torch.equal(y[:, 1, 2:30, 2:30], x) and y[:, :, :2].sum() == 0
    assert normalise(y).min() >= -1 and normalise(y).max() <= 1


def _write_mnistm(root, split, n):
    folder = root / "mnist_m" / f"mnist_m_{split}"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    lines = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            folder / f"{i:08d}.png")
        lines.append(f"{i:08d}.png {i % 10}")
    (root / "mnist_m" / f"mnist_m_{split}_labels.txt").write_text("\n".join(lines) + "\n")


def test_mnistm_folder_loader(tmp_path):
    _write_mnistm(tmp_path, "train", 12)
    split = load_mnistm_folder(tmp_path, "train")
    assert split.images.shape == (12, 3, 32, 32) and split.images.dtype == torch.uint8
    assert split.labels.tolist() == [i % 10 for i in range(12)]
    with Image.open(tmp_path / "mnist_m/mnist_m_train/00000003.png") as im:
        assert np.array_equal(split.images[3].permute(1, 2, 0).numpy(), np.asarray(im))


def test_missing_mnistm_label_file_is_named(tmp_path):
    _write_mnistm(tmp_path, "test", 2)
    (tmp_path / "mnist_m" / "mnist_m_test_labels.txt").unlink()
    with pytest.raises(DataError, match="mnist_m_test_labels.txt"):
        load_mnistm_folder(tmp_path, "test")


def test_malformed_label_line(tmp_path):
    _write_mnistm(tmp_path, "test", 2)
    (tmp_path / "mnist_m" / "mnist_m_test_labels.txt").write_text("00000000.png five\n")
    with pytest.raises(DataError, match="line 1"):
        load_mnistm_folder(tmp_path, "test")


def test_blend_formula_and_determinism():
    rng = np.random.default_rng(3)
    digits = rng.integers(0, 256, (20, 32, 32), dtype=np.uint8)
    photo = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)  # one crop position only
    out = blend_mnistm(digits, [photo], seed=5, recipe="absdiff")
    expected = np.abs(photo[None].astype(int) - digits[..., None].astype(int))
    assert np.array_equal(out, expected)
    photos = [rng.integers(0, 256, (50, 70, 3), dtype=np.uint8) for _ in range(4)]
    a, b = blend_mnistm(digits, photos, 7), blend_mnistm(digits, photos, 7)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != blend_mnistm(digits, photos, 8).tobytes()


def test_build_mnistm_is_cached_and_deterministic(tiny_root, tmp_path):
    mnist = load_mnist(tiny_root, "test", download=False)
    first = build_mnistm(tiny_root, "test", mnist, seed=0, cache_root=tmp_path / "c1")
    again = build_mnistm(tiny_root, "test", mnist, seed=0, cache_root=tmp_path / "c2")
    assert (tmp_path / "c1" / "mnist_m_built" / "test_mask_seed0.pt").exists()
    assert torch.equal(first.images, again.images)
    assert first.images.shape == (32, 3, 32, 32)
    assert torch.equal(first.labels, mnist.labels)


def _mnistm_cfg(root):
    return OmegaConf.create({"name": "mnist_mnistm", "root": str(root), "download": False,
                             "mnistm": "build", "mnistm_dir": str(root),
                             "cache_root": str(root), "build_seed": 0})


def test_pair_hides_target_training_labels(tiny_root):
    pair = load_pair(_mnistm_cfg(tiny_root))
    assert isinstance(pair.target_train_images, torch.Tensor)
    assert not hasattr(pair, "target_train")
    assert [f for f in vars(pair) if "label" in f] == ["target_train_labels"]
    assert pair.target_train_labels is None
    assert pair.source_train.images.shape[1:] == pair.target_train_images.shape[1:]
    assert pair.input_shape == (3, 32, 32) and pair.num_classes == 10


def test_oracle_gets_target_training_labels(tiny_root):
    pair = load_pair(_mnistm_cfg(tiny_root), with_target_labels=True)
    mnist = load_mnist(tiny_root, "train", download=False)
    assert torch.equal(pair.target_train_labels, mnist.labels)
    moved = pair.to("cpu")
    assert torch.equal(moved.target_train_labels, pair.target_train_labels)
    assert moved.to("cpu").input_shape == (3, 32, 32)


def test_to_keeps_missing_target_labels_missing():
    split = Split(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    pair = DomainPair(split, split.images, split, split, 2).to("cpu")
    assert pair.target_train_labels is None and pair.input_shape == (2,)


def test_unknown_pair_lists_choices():
    with pytest.raises(DataError, match="mnist_mnistm, mnist01_23, digits"):
        load_pair(OmegaConf.create({"name": "office31"}))


# --------------------------------------------------------------------------- mnist01_23

def _pair01_23(root, **kw):
    cfg = OmegaConf.create({"name": "mnist01_23", "root": str(root), "download": False})
    return load_pair(cfg, **kw)


def test_select_digits_maps_in_given_order(digits_root):
    split = select_digits(load_mnist(digits_root, "train", download=False), (3, 2))
    assert split.images.shape == (8, 1, 28, 28)
    assert split.labels.tolist() == [1, 0, 1, 0, 1, 0, 1, 0]  # 2 -> 1, 3 -> 0


def test_mnist01_23_splits_and_labels(digits_root):
    pair = _pair01_23(digits_root)
    assert pair.num_classes == 2 and pair.input_shape == (1, 28, 28)
    assert pair.target_train_labels is None
    # image i has value i and label i % 10, so the value tells the original digit
    digit = {name: s.images[:, 0, 0, 0].long() % 10 for name, s in
             [("src", pair.source_train), ("src_test", pair.source_test),
              ("tgt_test", pair.target_test)]}
    digit["tgt"] = pair.target_train_images[:, 0, 0, 0].long() % 10
    assert digit["src"].tolist() == [0, 1] * 4 and digit["src_test"].tolist() == [0, 1] * 2
    assert digit["tgt"].tolist() == [2, 3] * 4 and digit["tgt_test"].tolist() == [2, 3] * 2
    assert torch.equal(pair.source_train.labels, digit["src"])
    assert torch.equal(pair.target_test.labels, digit["tgt_test"] - 2)
    for images in (pair.source_train.images, pair.target_train_images, pair.target_test.images):
        assert images.dtype == torch.uint8 and images.shape[1:] == (1, 28, 28)
    # test splits come from the MNIST test files (values < 20), train splits from train
    assert pair.source_test.images.max() < 20 and pair.target_train_images.max() >= 20


def test_mnist01_23_oracle_labels_are_mapped(digits_root):
    pair = _pair01_23(digits_root, with_target_labels=True)
    assert pair.target_train_labels.tolist() == [0, 1] * 4
    assert torch.equal(pair.target_train_labels,
                       pair.target_train_images[:, 0, 0, 0].long() % 10 - 2)


def test_real_mnist01_23_counts(real_root):
    pair = _pair01_23(real_root, with_target_labels=True)
    assert np.bincount(pair.source_train.labels.numpy()).tolist() == [5923, 6742]
    assert np.bincount(pair.target_train_labels.numpy()).tolist() == [5958, 6131]
    assert len(pair.target_train_images) == 12089
    assert np.bincount(pair.source_test.labels.numpy()).tolist() == [980, 1135]
    assert np.bincount(pair.target_test.labels.numpy()).tolist() == [1032, 1010]
    assert pair.input_shape == (1, 28, 28) and pair.target_test.images.shape == (2042, 1, 28, 28)


def test_real_mnist_and_mnistm_sample(real_root):
    test = load_mnist(real_root, "test", download=False)
    assert test.images.shape == (10000, 28, 28)
    assert np.bincount(test.labels.numpy()).tolist()[:3] == [980, 1135, 1032]
    sample = load_mnistm_folder(real_root / "MNIST-M-sample", "test")
    assert sample.images.shape == (1000, 3, 32, 32)
    assert np.bincount(sample.labels.numpy()).tolist()[:3] == [85, 126, 116]
    # MNIST-M image i is drawn from MNIST test image i: same labels
    assert torch.equal(sample.labels, test.labels[:1000])


# --------------------------------------------------------------------------- robustness

def test_bad_magic_names_file(tmp_path):
    (tmp_path / "x").write_bytes(b"<html>not found</html>")
    with pytest.raises(DataError, match=r"x is not an IDX uint8 file \(bad magic"):
        read_idx(tmp_path / "x")


def test_truncated_gz_names_file(tmp_path):
    write_idx(tmp_path / "x", np.zeros((10, 28, 28)))
    packed = gzip.compress((tmp_path / "x").read_bytes())
    (tmp_path / "x.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match=r"Cannot read IDX file .*x\.gz.*data\.download=true"):
        read_idx(tmp_path / "x.gz")


def test_wrong_array_in_mnist_file(digits_root):
    raw = digits_root / "MNIST" / "raw"
    write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros((20, 28, 28)))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte does not hold MNIST labels"):
        load_mnist(digits_root, "test", download=False)


def test_missing_mnist_names_only_missing_files(digits_root):
    raw = digits_root / "MNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as err:
        load_mnist(digits_root, "test", download=False)
    msg = str(err.value)
    assert str(raw / "t10k-labels-idx1-ubyte") in msg and "t10k-images" not in msg
    assert f"da-train data.root={digits_root} data.download=true" in msg


def _fake_download(monkeypatch, error, content=b"garbage"):
    """Replace the fetch function: write ``content`` (if any) where the file would go, then
    raise ``error`` (if any), as a failed request does."""
    calls = []

    def fake(url, dest, **_):
        calls.append(url)
        if content is not None:
            Path(dest).write_bytes(content)
        if error is not None:
            raise error

    monkeypatch.setattr("da_train.data.download.fetch_url", fake)
    return calls


def test_mnist_md5_mismatch_becomes_data_error(tmp_path, monkeypatch):
    calls = _fake_download(monkeypatch, None)
    with pytest.raises(DataError) as err:
        load_mnist(tmp_path, "train", download=True)
    msg, path = str(err.value), tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    assert f"downloaded {path} does not match its published md5" in msg
    assert "f68b3c2dcbeaaa9fbdd348bbdeb94873" in msg and f"Nothing was left at {path}" in msg
    assert not path.exists()
    assert "data.download=true" in msg
    assert len(calls) >= 2  # every mirror was tried


def test_mnist_network_failure_names_file(tmp_path, monkeypatch):
    _fake_download(monkeypatch, urllib.error.URLError("no route to host"), content=None)
    with pytest.raises(DataError, match=r"Downloading t10k-images-idx3-ubyte.gz into .* failed "
                                        r"from every mirror \(.*no route to host"):
        load_mnist(tmp_path, "test", download=True)


def test_mnist_download_fetches_only_missing_files(digits_root, monkeypatch):
    raw = digits_root / "MNIST" / "raw"
    (raw / "train-labels-idx1-ubyte").unlink()
    calls = _fake_download(monkeypatch, None)
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz"):
        load_mnist(digits_root, "train", download=True)
    assert all(url.endswith("train-labels-idx1-ubyte.gz") for url in calls)


def test_download_into_unusable_root(tmp_path, monkeypatch):
    calls = _fake_download(monkeypatch, AssertionError("must not be called"))
    (tmp_path / "file").write_text("a file, not a folder")  # fails even for root
    with pytest.raises(DataError, match=r"into .*file/MNIST/raw, but that folder is not "
                                        r"writable .*data\.root=<writable folder>"):
        load_mnist(tmp_path / "file", "train", download=True)
    assert calls == []


@needs_permissions
def test_download_into_read_only_root(tmp_path, monkeypatch):
    _fake_download(monkeypatch, AssertionError("must not be called"))
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(DataError, match=r"MNIST/raw, but that folder is not writable"):
            load_mnist(tmp_path, "train", download=True)
    finally:
        tmp_path.chmod(0o755)


def _cache_warning_build(tiny_root, cache_root):
    mnist = load_mnist(tiny_root, "test", download=False)
    with pytest.warns(UserWarning, match="Cannot write the MNIST-M cache") as record:
        built = [build_mnistm(tiny_root, s, mnist, 0, cache_root) for s in ("test", "train")]
    assert len([w for w in record if "MNIST-M cache" in str(w.message)]) == 1  # warned once
    assert built[0].images.shape == (32, 3, 32, 32)
    reference = build_mnistm(tiny_root, "test", mnist, 0, tiny_root / "ok")
    assert torch.equal(built[0].images, reference.images)


def test_unusable_mnistm_cache_warns_and_builds_in_memory(tiny_root):
    (tiny_root / "file").write_text("a file, not a folder")  # fails even for root
    _cache_warning_build(tiny_root, tiny_root / "file")


@needs_permissions
def test_read_only_mnistm_cache_warns_and_builds_in_memory(tiny_root, tmp_path):
    cache_root = tiny_root / "ro"
    cache_root.mkdir()
    cache_root.chmod(0o555)
    try:
        _cache_warning_build(tiny_root, cache_root)
    finally:
        cache_root.chmod(0o755)


def test_corrupt_mnistm_cache_is_rebuilt(tiny_root):
    mnist = load_mnist(tiny_root, "test", download=False)
    first = build_mnistm(tiny_root, "test", mnist, 0, tiny_root)
    cache = tiny_root / "mnist_m_built" / "test_mask_seed0.pt"
    cache.write_bytes(cache.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable MNIST-M cache"):
        again = build_mnistm(tiny_root, "test", mnist, 0, tiny_root)
    assert torch.equal(first.images, again.images)
    assert torch.load(cache)["images"].shape == (32, 3, 32, 32)  # rewritten


def _fake_bsds(monkeypatch, payload):
    def fake(url, dest, **_):
        Path(dest).write_bytes(payload)

    monkeypatch.setattr("da_train.data.download.fetch_url", fake)


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 40, 3), 128, dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def test_bsds_download_unpacks_only_training_photos(tmp_path, monkeypatch):
    photo = _jpeg()
    members = {f"{BSDS_TRAIN_MEMBER}{i}.jpg": photo for i in range(BSDS_TRAIN_COUNT)}
    members["BSR/BSDS500/data/images/test/x.jpg"] = photo
    sums = {f"{i}.jpg": hashlib.sha256(photo).hexdigest() for i in range(BSDS_TRAIN_COUNT)}
    monkeypatch.setattr("da_train.data.bsds.train_checksums", lambda: sums)
    _fake_bsds(monkeypatch, tar_gz(members))
    photos = load_bsds_train(tmp_path, download=True)
    assert len(photos) == BSDS_TRAIN_COUNT and photos[0].shape == (40, 40, 3)
    assert sorted(os.listdir(tmp_path / "BSDS500")) == ["train"]  # no leftovers


def test_bsds_download_rejects_unreadable_archive(tmp_path, monkeypatch):
    _fake_bsds(monkeypatch, b"<html>moved</html>")
    with pytest.raises(DataError, match="is not a readable tar.gz"):
        load_bsds_train(tmp_path, download=True)
    assert not list((tmp_path / "BSDS500").glob("train/*.jpg"))


def test_bsds_download_rejects_wrong_archive(tmp_path, monkeypatch):
    _fake_bsds(monkeypatch, tar_gz({"BSR/other/1.jpg": _jpeg()}))
    with pytest.raises(DataError, match=r"holds 0 JPEGs under BSR/BSDS500/data/images/train/, "
                                        r"expected 200"):
        load_bsds_train(tmp_path, download=True)


def test_global_normalisation_maps_uint8_to_minus_one_one():
    images = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 1, 1, 3)
    assert normalise(images).flatten().tolist() == pytest.approx([-1.0, 1.0, -0.6])
    toy = torch.randn(4, 2)
    assert normalise(toy, "instance") is toy  # float (toy) inputs pass through


def test_instance_normalisation_standardises_each_image_channel():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 3, 8, 8), generator=g, dtype=torch.uint8)
    images[1, 2] = 7  # a flat channel
    x = normalise(images, "instance")
    mean, std = x.mean(dim=(2, 3)), x.std(dim=(2, 3))
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-5)
    assert torch.allclose(std[0], torch.ones(3), atol=1e-3)
    assert torch.equal(x[1, 2], torch.zeros(8, 8))  # flat -> 0, not NaN
    # invariant to each image's brightness and contrast (the colour cast of MNIST-M)
    brighter = (images.float() * 0.5 + 60).round().to(torch.uint8)
    assert torch.allclose(normalise(brighter, "instance")[0], x[0], atol=0.02)
