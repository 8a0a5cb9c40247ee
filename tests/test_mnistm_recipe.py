"""The MNIST-M build recipes ('mask': the released set's, 'absdiff': the former build) and
scripts/check_mnistm.py, on hand-made data and, with DA_DATA_ROOT, on the released sample."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from da_train.config import ConfigError
from da_train.data.bsds import load_bsds_train
from da_train.data.mnist import load_mnist
from da_train.data.mnistm import blend_mnistm, build_mnistm

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_mnistm.py"


def _check_script():
    spec = importlib.util.spec_from_file_location("check_mnistm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hand_made():
    """A 4x4 digit with ink levels 0 (off), 1, 128 and 255, and a 4x4 photo (one crop)."""
    digit = np.array([[0, 0, 1, 0], [0, 128, 255, 0], [0, 255, 0, 0], [0, 0, 0, 0]],
                     dtype=np.uint8)
    photo = np.arange(48, dtype=np.uint8).reshape(4, 4, 3) * 5 + 3
    return digit, photo


def test_mask_recipe_inverts_the_photo_under_any_ink():
    digit, photo = _hand_made()
    out = blend_mnistm(digit[None], [photo], seed=0, recipe="mask")[0]
    on = digit > 0
    assert np.array_equal(out[on], 255 - photo[on])  # even the faint pixel of value 1
    assert np.array_equal(out[~on], photo[~on])
    assert out[0, 2].tolist() == (255 - photo[0, 2]).tolist()
    assert out[0, 0].tolist() == photo[0, 0].tolist() == [3, 8, 13]


def test_absdiff_recipe_is_still_reachable():
    digit, photo = _hand_made()
    out = blend_mnistm(digit[None], [photo], seed=0, recipe="absdiff")[0]
    expected = np.abs(photo.astype(int) - digit[..., None].astype(int))
    assert np.array_equal(out, expected)
    assert out[1, 1].tolist() == [50, 45, 40]  # |(78, 83, 88) - 128|, not inverted


def _former_build(digits, photos, seed):
    """The per-image loop of earlier versions (absdiff), written out as the reference."""
    rng = np.random.default_rng(seed)
    n, size = len(digits), digits.shape[1]
    which = rng.integers(0, len(photos), size=n)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        photo = photos[which[i]]
        y = rng.integers(0, photo.shape[0] - size + 1)
        x = rng.integers(0, photo.shape[1] - size + 1)
        crop = photo[y: y + size, x: x + size].astype(np.int16)
        out[i] = np.abs(crop - digits[i, :, :, None].astype(np.int16)).astype(np.uint8)
    return out


def _random_inputs(n=300):
    rng = np.random.default_rng(4)
    digits = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
    digits[digits < 160] = 0  # ink-free pixels, as in MNIST
    shapes = [(20, 30), (30, 20), (8, 8), (20, 30), (9, 31)]  # landscape, portrait, odd sizes
    photos = [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in shapes]
    return digits, photos


def test_absdiff_is_bit_identical_to_the_former_build():
    digits, photos = _random_inputs()
    assert np.array_equal(blend_mnistm(digits, photos, 11, "absdiff"),
                          _former_build(digits, photos, 11))


def test_recipes_share_crops_and_are_deterministic_for_a_seed():
    digits, photos = _random_inputs()
    mask = blend_mnistm(digits, photos, 5)  # the default recipe is 'mask'
    assert np.array_equal(mask, blend_mnistm(digits, photos, 5, "mask"))
    assert not np.array_equal(mask, blend_mnistm(digits, photos, 6))
    crops = blend_mnistm(np.zeros_like(digits), photos, 5, "absdiff")  # |crop - 0|
    assert np.array_equal(mask, np.where(digits[..., None] > 0, 255 - crops, crops))
    absdiff = blend_mnistm(digits, photos, 5, "absdiff")  # the same crops behind both
    assert np.array_equal(absdiff, np.abs(crops.astype(int) - digits[..., None]))


def test_unknown_recipe_is_a_config_error(tiny_root):
    mnist = load_mnist(tiny_root, "test", download=False)
    with pytest.raises(ConfigError, match=r"data.mnistm_recipe='grey'.*'mask'.*'absdiff'"):
        build_mnistm(tiny_root, "test", mnist, 0, recipe="grey")
    with pytest.raises(ValueError, match="unknown MNIST-M recipe"):
        blend_mnistm(np.zeros((1, 4, 4), np.uint8), [np.zeros((4, 4, 3), np.uint8)], 0, "x")


def test_build_caches_per_recipe(tiny_root, tmp_path):
    mnist = load_mnist(tiny_root, "test", download=False)
    mask = build_mnistm(tiny_root, "test", mnist, 0, tmp_path)
    absdiff = build_mnistm(tiny_root, "test", mnist, 0, tmp_path, recipe="absdiff")
    folder = tmp_path / "mnist_m_built"
    assert sorted(p.name for p in folder.iterdir()) == ["test_absdiff_seed0.pt",
                                                        "test_mask_seed0.pt"]
    assert not torch.equal(mask.images, absdiff.images)
    assert torch.equal(build_mnistm(tiny_root, "test", mnist, 0, tmp_path).images, mask.images)
    fresh = build_mnistm(tiny_root, "test", mnist, 0, tmp_path / "other")
    assert torch.equal(fresh.images, mask.images)  # deterministic, not only cached


def _write_released(root: Path, tiny_root: Path, n: int, recipe: str, wrong_label=False):
    """A released-style folder whose image i is the recipe applied to tiny MNIST digit i on a
    known crop of a tiny BSDS photo; returns those crops as (photo, y, x)."""
    photos = load_bsds_train(tiny_root)
    rng = np.random.default_rng(9)
    crops = []
    for split in ("train", "test"):
        mnist = load_mnist(tiny_root, split, download=False)
        digits = torch.nn.functional.pad(mnist.images[:n], (2, 2, 2, 2)).numpy()
        folder = root / "mnist_m" / f"mnist_m_{split}"
        folder.mkdir(parents=True)
        lines = []
        for i in range(n):
            k, y, x = int(rng.integers(3)), int(rng.integers(17)), int(rng.integers(33))
            crops.append((split, k, y, x))
            crop = photos[k][y: y + 32, x: x + 32]
            image = blend_mnistm(digits[i: i + 1], [crop], 0, recipe)[0]
            Image.fromarray(image).save(folder / f"{i:08d}.png")
            label = int(mnist.labels[i]) + (1 if wrong_label and i == 3 else 0)
            lines.append(f"{i:08d}.png {label % 10}")
        (root / "mnist_m" / f"mnist_m_{split}_labels.txt").write_text("\n".join(lines) + "\n")
    return crops


def test_check_script_finds_the_crops_of_a_mask_built_set(tiny_root, tmp_path, capsys):
    crops = _write_released(tmp_path / "released", tiny_root, 20, "mask")
    out_json = tmp_path / "report.json"
    rc = _check_script().main(["--data-root", str(tiny_root), "--released",
                               str(tmp_path / "released"), "--epochs", "1", "--locate", "4",
                               "--json", str(out_json)])
    assert rc == 0
    report = json.loads(out_json.read_text())
    assert report["images_per_split"] == {"train": 20, "test": 20}
    located = report["locate"]  # the first 4 of each split
    assert located["found"] == located["pixel_exact"] == 8 and located["mean_abs_error"] == 0
    names = sorted(p.name for p in (tiny_root / "BSDS500" / "train").glob("*.jpg"))
    assert [(split, names[k], y, x) for split, k, y, x in crops[:4] + crops[20:24]] == [
        (c["split"], c["photo"], c["y"], c["x"]) for c in located["crops"]]
    assert 0 <= report["cnn_accuracy"] <= 1 and 0 <= report["features_accuracy"] <= 1
    assert "held-out accuracy" in capsys.readouterr().out


def test_check_script_locate_shows_absdiff_is_not_the_released_recipe(tiny_root, tmp_path):
    _write_released(tmp_path / "released", tiny_root, 8, "mask")
    out_json = tmp_path / "report.json"
    rc = _check_script().main(["--data-root", str(tiny_root), "--released",
                               str(tmp_path / "released"), "--recipe", "absdiff",
                               "--epochs", "1", "--locate", "3", "--json", str(out_json)])
    report = json.loads(out_json.read_text())
    assert rc == 0 and report["locate"]["found"] == 6  # the crops do not depend on the recipe
    assert report["locate"]["pixel_exact"] == 0 and report["locate"]["mean_abs_error"] > 10


def test_check_script_rejects_a_sample_from_other_mnist_images(tiny_root, tmp_path, capsys):
    _write_released(tmp_path / "released", tiny_root, 6, "mask", wrong_label=True)
    rc = _check_script().main(["--data-root", str(tiny_root), "--released",
                               str(tmp_path / "released")])
    assert rc == 2
    assert "differ from the MNIST train labels" in capsys.readouterr().err


def test_check_script_on_the_released_sample(real_root, tmp_path):
    out_json = tmp_path / "report.json"
    rc = _check_script().main(["--data-root", str(real_root), "--limit", "150", "--epochs",
                               "1", "--locate", "2", "--json", str(out_json)])
    report = json.loads(out_json.read_text())
    assert rc == 0 and report["images_per_split"] == {"train": 150, "test": 150}
    assert report["locate"]["pixel_exact"] == 4  # the released images, rebuilt exactly
    assert report["locate"]["crops"][0] == {"split": "train", "index": 0, "photo": "41004.jpg",
                                            "y": 21, "x": 256, "mean_abs_error": 0.0}
