"""A new user's first hour, part 2 (issue 31): no silently wrong number, caches out of the data
folder, records that say which data a run read."""

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import da_train, small
from omegaconf import OmegaConf
from PIL import Image
from toy import compose_config

from da_train.data import load_pair
from da_train.data.augment import eval_crop
from da_train.data.folders import cache_size
from da_train.data.schemas import FoldersConfig, cache_root, default_cache_root
from da_train.errors import ConfigError


def digit_folder(root: Path, per_class: int = 24, side: int = 28, seed: int = 0) -> Path:
    """<root>/<class>/<i>.png: 28x28 grey "digits" (3 classes: a bar, a column, a ring),
    drawn with jitter and noise, like MNIST saved as PNG files."""
    rng = np.random.default_rng(seed)
    for c in range(3):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 40, (side, side)).astype(np.uint8)
            dy, dx = rng.integers(-2, 3, 2)
            m = side // 2
            if c == 0:
                img[m - 2 + dy:m + 2 + dy, 6:side - 6] = 230
            elif c == 1:
                img[6:side - 6, m - 2 + dx:m + 2 + dx] = 230
            else:
                img[7 + dy:side - 7 + dy, 7 + dx:side - 7 + dx] = 230
                img[11 + dy:side - 11 + dy, 11 + dx:side - 11 + dx] = 20
            Image.fromarray(img).save(root / str(c) / f"{i}.png")
    return root


def folder_args(tmp_path, *extra):
    src = digit_folder(tmp_path / "src")
    tgt = digit_folder(tmp_path / "tgt", seed=1)
    return ["data=folders", f"data.source.root={src}", f"data.target.root={tgt}",
            "backbone=dann_digits", "data.image_size=32", "data.normalize=global",
            "data.test=transductive", "method=source_only", "trainer.batch_size=16",
            "trainer.embed_samples=0", "trainer.log_every=10", *extra]


# ---------------------------------------------------------------------------- point 1
def test_small_images_evaluate_the_view_they_trained_on(tmp_path):
    """MNIST-like 28x28 PNGs with data.image_size=32: the cache follows the image size and
    keeps the images at their own size; evaluation sees the images as training did, so the
    final source accuracy is at least training's last logged one (it was chance before)."""
    out = tmp_path / "run"
    bad = tmp_path / "src" / "1" / "broken.png"
    args = folder_args(tmp_path, "trainer.steps=120", "trainer.eval_every=60",
                       "data.on_error=skip", f"hydra.run.dir={out}")
    bad.write_bytes(b"\x89PNG not an image")
    proc = da_train(args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    last = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()
            if "train/source_acc" in x][-1]
    assert results["source_acc"] >= last["train/source_acc"] > 0.6, (results, last)
    # the skipped file is listed in results.json and in the run's cli.log
    assert results["skipped_images"] == [str(bad)]
    assert str(bad) in (out / "cli.log").read_text()
    # the resolved folders it read and the cache it used (DA_CACHE_DIR, set by conftest)
    roots = results["data_roots"]
    assert roots["data.source.root"] == str((tmp_path / "src").resolve())
    assert roots["data.cache_root"] == str(default_cache_root())
    # cached at the images' own 28x28, not blown up to data.cache_size (37 for 32)
    caches = list((default_cache_root() / "image_cache").glob("*.u8"))
    assert sorted(p.stat().st_size for p in caches) == [72 * 3 * 28 * 28, 72 * 3 * 28 * 28]


def test_a_cache_size_that_shrinks_what_evaluation_sees_is_refused(tmp_path):
    proc = da_train([*folder_args(tmp_path, "data.cache_size=256", "trainer.steps=2"),
                     f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "data.image_size=32 with data.cache_size=256" in proc.stderr
    assert "Leave data.cache_size unset" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_cache_size_follows_image_size_and_eval_crops_the_same_share():
    cfg = OmegaConf.structured(FoldersConfig)
    assert cfg.cache_size is None and cache_size(cfg) == 256  # 224 of 256, as before
    cfg.image_size = 32
    assert cache_size(cfg) == 37
    assert eval_crop(256, 224, 256) == 224           # the usual crop, no resize
    assert eval_crop(28, 32, 37) == 24               # same share of a smaller cached image
    assert eval_crop(37, 32, 37) == 32


def test_digit_families_refuse_imagenet_normalisation_with_their_own_values():
    from da_train.config import validate

    with pytest.raises(ConfigError, match=r"data.normalize='imagenet'.*global or instance"):
        validate(compose_config(["data=mnist_usps", "data.normalize=imagenet"]))
    with pytest.raises(ConfigError, match=r"data=folders.*imagenet or global"):
        validate(compose_config(["data=folders", "data.normalize=instance"]))
    validate(compose_config(["data=folders", "data.normalize=global"]))


# ---------------------------------------------------------------------------- point 3
def test_default_cache_root_is_outside_the_data_folder(tiny_root, monkeypatch, tmp_path):
    monkeypatch.setenv("DA_DATA_ROOT", str(tiny_root))
    cfg = compose_config(["data=mnist_mnistm", "data.download=false"])
    assert cfg.data.cache_root is None
    caches = cache_root(cfg.data.cache_root)
    assert tiny_root not in caches.parents and caches == default_cache_root()
    pair = load_pair(cfg.data)
    assert pair.records["data_roots"]["data.root"] == str(tiny_root.resolve())
    assert (caches / "mnist_m_built" / "train_mask_seed0.pt").is_file()
    assert not (tiny_root / "mnist_m_built").exists()  # nothing written into the data folder
    # without DA_CACHE_DIR: $XDG_CACHE_HOME/da-train, else ~/.cache/da-train
    monkeypatch.delenv("DA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == (tmp_path / "xdg" / "da-train").resolve()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_root() == (tmp_path / "home" / ".cache" / "da-train").resolve()


def test_offline_error_names_the_cache_folder(tmp_path):
    proc = da_train(["data=mnist_mnistm", f"data.root={tmp_path / 'empty'}",
                     "data.download=false"], tmp_path)
    assert proc.returncode == 2
    assert "Nothing is written into <dir>" in proc.stderr and "data.cache_root" in proc.stderr


# ---------------------------------------------------------------------------- point 6
def test_results_and_resolved_config_record_the_data_root(tiny_root, tmp_path):
    out = tmp_path / "run"
    proc = da_train([*small(tiny_root, steps=4, method="source_only"), "data=mnist01_23",
                     "trainer.embed_samples=0", f"hydra.run.dir={out}"], tmp_path,
                    env_extra={"DA_DATA_ROOT": "/not/used"})
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["data_roots"] == {"data.root": str(tiny_root.resolve())}
    resolved = OmegaConf.load(out / ".hydra" / "config_resolved.yaml")
    assert resolved.data.root == str(tiny_root.resolve()) and resolved.seed == 0
