import numpy as np
import pytest
import torch
from conftest import write_idx
from omegaconf import OmegaConf
from PIL import Image

from da_train.data import (
    DataError,
    blend_mnistm,
    build_mnistm,
    load_mnist,
    load_mnistm_folder,
    load_pair,
    mnist_to_rgb32,
    normalise,
    read_idx,
)


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
    out = blend_mnistm(digits, [photo], seed=5)
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
    assert (tmp_path / "c1" / "mnist_m_built" / "test_seed0.pt").exists()
    assert torch.equal(first.images, again.images)
    assert first.images.shape == (32, 3, 32, 32)
    assert torch.equal(first.labels, mnist.labels)


def test_pair_hides_target_training_labels(tiny_root):
    cfg = OmegaConf.create({"name": "mnist_mnistm", "root": str(tiny_root), "download": False,
                            "mnistm": "build", "mnistm_dir": str(tiny_root),
                            "cache_root": str(tiny_root), "build_seed": 0})
    pair = load_pair(cfg)
    assert isinstance(pair.target_train_images, torch.Tensor)
    assert not hasattr(pair, "target_train")
    assert [f for f in vars(pair) if "label" in f] == []
    assert pair.source_train.images.shape[1:] == pair.target_train_images.shape[1:]


def test_real_mnist_and_mnistm_sample(real_root):
    test = load_mnist(real_root, "test", download=False)
    assert test.images.shape == (10000, 28, 28)
    assert np.bincount(test.labels.numpy()).tolist()[:3] == [980, 1135, 1032]
    sample = load_mnistm_folder(real_root / "MNIST-M-sample", "test")
    assert sample.images.shape == (1000, 3, 32, 32)
    assert np.bincount(sample.labels.numpy()).tolist()[:3] == [85, 126, 116]
    # MNIST-M image i is drawn from MNIST test image i: same labels
    assert torch.equal(sample.labels, test.labels[:1000])
