"""Image folders / lists, the decoded-image cache and on-device augmentation (issue 14)."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import da_train
from omegaconf import OmegaConf
from PIL import Image

from da_train.config import ConfigError
from da_train.data import DataError, load_pair
from da_train.data import cache as cache_mod
from da_train.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    centre_crop,
    crop_grid,
    crop_params,
    eval_transform,
    normalise_images,
    random_resized_crop_flip,
    train_transform,
)
from da_train.data.folders import FolderPair, read_list, scan_folder
from da_train.data.schemas import FoldersConfig

CLASSES = ("cat", "dog", "owl")


def make_folder(root: Path, classes=CLASSES, per_class=4, size=(40, 30), seed=0) -> Path:
    """<root>/<class>/<i>.{png,jpg}: class c's images are flat grey 60 c + 30 (+ noise)."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.full((size[1], size[0], 3), 60 * c + 30, np.uint8)
            img[..., 0] = rng.integers(0, 256)
            ext = "png" if i % 2 else "jpg"
            Image.fromarray(img).save(root / name / f"{i}.{ext}")
    return root


def folders_cfg(tmp_path, **over):
    base = {"cache_root": str(tmp_path / "cache"), "cache_size": 24, "image_size": 20,
            "workers": 2}
    return OmegaConf.merge(OmegaConf.structured(FoldersConfig), base, over)


@pytest.fixture
def two_folders(tmp_path):
    return make_folder(tmp_path / "a"), make_folder(tmp_path / "b", seed=1, size=(30, 44))


def test_scan_folder_reads_imagefolder_layout(two_folders):
    listing = scan_folder(two_folders[0])
    assert listing.classes == CLASSES and len(listing.files) == 12
    assert listing.labels == [0] * 4 + [1] * 4 + [2] * 4


def test_read_list_relative_paths_and_bad_line(tmp_path, two_folders):
    lst = tmp_path / "src.txt"
    lst.write_text("a/cat/0.jpg 0\n\na/dog/1.png 1\n")
    listing = read_list(lst)
    assert listing.files == [tmp_path / "a/cat/0.jpg", tmp_path / "a/dog/1.png"]
    assert listing.labels == [0, 1]
    lst.write_text("a/cat/0.jpg zero\n")
    with pytest.raises(DataError, match="src.txt line 1"):
        read_list(lst)


def test_folder_pair_splits_sizes_and_pixels(tmp_path, two_folders):
    cfg = folders_cfg(tmp_path, source={"root": str(two_folders[0])},
                      target={"root": str(two_folders[1])}, test_fraction=0.25)
    pair = load_pair(cfg)
    assert isinstance(pair, FolderPair) and pair.num_classes == 3
    assert pair.names() == list(CLASSES)
    assert pair.sizes() == {"source_train": 9, "source_test": 3, "target_train": 9,
                            "target_test": 3}
    assert pair.source_train.images.shape == (9, 3, 24, 24)
    # the decoded pixels carry the class (green channel = 60 c + 30, JPEG within a few levels)
    green = pair.source_train.images[:, 1].float().mean((1, 2))
    assert torch.allclose(green, 60 * pair.source_train.labels.float() + 30, atol=3)
    assert pair.input_shape == (3, 20, 20)
    assert pair.target_train_labels is None


def test_lists_and_transductive_protocol(tmp_path, two_folders):
    for name, folder in (("s.txt", two_folders[0]), ("t.txt", two_folders[1])):
        listing = scan_folder(folder)
        (tmp_path / name).write_text("".join(f"{f} {y}\n" for f, y in
                                             zip(listing.files, listing.labels, strict=True)))
    cfg = folders_cfg(tmp_path, source={"list": str(tmp_path / "s.txt")},
                      target={"list": str(tmp_path / "t.txt")}, test="transductive")
    pair = load_pair(cfg, with_target_labels=True)
    assert pair.sizes()["target_test"] == pair.sizes()["target_train"] == 12
    assert torch.equal(pair.target_test.labels, pair.target_train_labels)
    assert pair.names() == ["0", "1", "2"] and pair.test_protocol == "transductive"


def test_separate_test_folders(tmp_path, two_folders):
    test_a = make_folder(tmp_path / "a_test", per_class=1)
    cfg = folders_cfg(tmp_path, test="separate",
                      source={"root": str(two_folders[0]), "test_root": str(test_a)},
                      target={"root": str(two_folders[1]), "test_root": str(test_a)})
    assert load_pair(cfg).sizes() == {"source_train": 12, "source_test": 3,
                                      "target_train": 12, "target_test": 3}
    cfg.target.test_root = None
    with pytest.raises(ConfigError, match="data.target.test_root"):
        load_pair(cfg)


def test_class_mismatch_lists_the_differences(tmp_path):
    a = make_folder(tmp_path / "a", classes=("cat", "dog", "owl"), per_class=1)
    b = make_folder(tmp_path / "b", classes=("cat", "dog", "fox", "yak"), per_class=1)
    cfg = folders_cfg(tmp_path, source={"root": str(a)}, target={"root": str(b)})
    with pytest.raises(DataError) as err:
        load_pair(cfg)
    msg = str(err.value)
    assert "only in the source" in msg and "owl" in msg and "fox, yak" in msg


def test_second_load_decodes_nothing_and_touch_rebuilds(tmp_path, two_folders, monkeypatch):
    calls = []
    real = cache_mod.decode_image
    monkeypatch.setattr(cache_mod, "decode_image", lambda p, s: calls.append(p) or real(p, s))
    cfg = folders_cfg(tmp_path, source={"root": str(two_folders[0])},
                      target={"root": str(two_folders[1])})
    first = load_pair(cfg)
    assert len(calls) == 24
    calls.clear()
    second = load_pair(cfg)
    assert calls == []
    assert torch.equal(first.source_train.images, second.source_train.images)
    touched = two_folders[1] / "owl" / "1.png"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    load_pair(cfg)
    assert len(calls) == 12  # only the target domain's cache is rebuilt
    # ... and the rebuilt cache replaced the stale one of the same folder: two caches, not three
    assert len(list((tmp_path / "cache" / "image_cache").glob("*.u8"))) == 2


def test_every_missing_file_of_a_list_is_named(tmp_path, two_folders):
    lines = [f"{two_folders[0]}/cat/0.jpg 0", "gone/a.png 1", "gone/b.png 2", "gone/c.png 0"]
    (tmp_path / "src.txt").write_text("\n".join(lines) + "\n")
    cfg = folders_cfg(tmp_path, source={"list": str(tmp_path / "src.txt")},
                      target={"root": str(two_folders[1])}, test="transductive")
    with pytest.raises(DataError, match=r"^3 image file\(s\) listed but not found") as err:
        load_pair(cfg)
    assert all(f"gone/{n}.png" in str(err.value) for n in "abc")


def test_empty_class_folder_message_says_how_to_fix_it(tmp_path):
    root = make_folder(tmp_path / "a", classes=("cat", "dog"), per_class=1)
    (root / "owl").mkdir()
    with pytest.raises(DataError, match=r"owl.*put images into the empty class folders or "
                                        r"delete them"):
        scan_folder(root)


def test_corrupt_image_is_named_or_skipped(tmp_path, two_folders, caplog):
    bad = two_folders[0] / "dog" / "2.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    cfg = folders_cfg(tmp_path, source={"root": str(two_folders[0])},
                      target={"root": str(two_folders[1])}, test="transductive")
    with pytest.raises(DataError, match=r"dog/2.jpg.*data.on_error=skip"):
        load_pair(cfg)
    cfg.on_error = "skip"
    with caplog.at_level("WARNING", logger="da_train.data.cache"):
        pair = load_pair(cfg)
    # logged (so in cli.log), not a bare Python warning, and recorded for results.json
    assert re.search(r"Skipped 1 unreadable image.*dog/2.jpg", caplog.text)
    assert pair.records["skipped_images"] == [str(bad)]
    assert pair.sizes()["source_train"] == 11
    assert pair.source_train.labels.tolist() == [0] * 4 + [1] * 3 + [2] * 4
    green = pair.source_train.images[:, 1].float().mean((1, 2))
    assert torch.allclose(green, 60 * pair.source_train.labels.float() + 30, atol=3)
    caplog.clear()
    with caplog.at_level("WARNING", logger="da_train.data.cache"):
        again = load_pair(cfg)  # from the cache: still logged and recorded
    assert "dog/2.jpg" in caplog.text and again.records["skipped_images"] == [str(bad)]


def test_cache_files_are_keyed_and_complete(tmp_path, two_folders):
    cfg = folders_cfg(tmp_path, source={"root": str(two_folders[0])},
                      target={"root": str(two_folders[1])})
    load_pair(cfg)
    metas = sorted((tmp_path / "cache" / "image_cache").glob("*.json"))
    assert len(metas) == 2
    for meta in metas:
        assert meta.with_suffix(".u8").stat().st_size == 12 * 3 * 24 * 24
        assert json.loads(meta.read_text())["skipped"] == []


def test_host_images_gather_like_a_tensor(tmp_path, two_folders):
    from da_train.data.folders import HostImages

    cfg = folders_cfg(tmp_path, source={"root": str(two_folders[0])},
                      target={"root": str(two_folders[1])})
    pair = load_pair(cfg)
    host = HostImages(pair.target_train_images, "cpu")
    idx = torch.tensor([3, 0, 3])
    assert torch.equal(host.index_select(0, idx), pair.target_train_images[idx])
    assert torch.equal(host[1:4], pair.target_train_images[1:4])
    assert len(host) == 10 and host.shape[1:] == (3, 24, 24)


# ---------------------------------------------------------------------------- augmentation
def test_augment_shapes_and_seed_determinism():
    images = torch.randint(0, 256, (6, 3, 24, 24), dtype=torch.uint8)
    torch.manual_seed(3)
    a = train_transform(images, 16, "imagenet")
    torch.manual_seed(3)
    b = train_transform(images, 16, "imagenet")
    assert a.shape == (6, 3, 16, 16) and a.dtype == torch.float32 and torch.equal(a, b)
    assert not torch.equal(a, train_transform(images, 16, "imagenet"))
    assert eval_transform(images, 16, "global").shape == (6, 3, 16, 16)
    floats = images.float()
    eval_transform(floats, 16, "imagenet")
    assert torch.equal(floats, images.float())  # the in-place normalisation left it alone


def test_crop_and_flip_are_applied():
    """A full-image box with flip -1 mirrors the image; a small box zooms into its region."""
    ramp = torch.arange(8).repeat(8, 1).to(torch.uint8).expand(1, 3, 8, 8) * 30
    full_flip = torch.tensor([[1.0, 1.0, 0.5, 0.5, -1.0]])
    out = random_resized_crop_flip(ramp, 8, params=full_flip)
    assert torch.allclose(out, ramp.flip(-1).float(), atol=1e-3)
    left_half = torch.tensor([[0.5, 1.0, 0.25, 0.5, 1.0]])
    zoom = random_resized_crop_flip(ramp, 8, params=left_half)
    assert zoom.max() < 4 * 30 and zoom[0, 0, 0, -1] > zoom[0, 0, 0, 0]  # left half, zoomed
    p = crop_params(1000, "cpu")
    area = p[:, 0] * p[:, 1]
    assert area.min() >= 0.08 - 1e-6 and area.max() <= 1 + 1e-6
    assert ((p[:, 4] < 0).float().mean() - 0.5).abs() < 0.1
    assert (p[:, 2] - p[:, 0] / 2 >= -1e-6).all() and (p[:, 2] + p[:, 0] / 2 <= 1 + 1e-6).all()


def test_broadcast_grid_is_affine_grid_and_normalising_first_changes_nothing():
    """crop_grid builds what affine_grid builds for the box/flip theta, and normalising
    before the bilinear resize equals normalising after it (weights sum to 1)."""
    import torch.nn.functional as F

    p = crop_params(16, "cpu", generator=torch.Generator().manual_seed(0))
    theta = torch.zeros(16, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = p[:, 0] * p[:, 4], p[:, 1]
    theta[:, 0, 2], theta[:, 1, 2] = 2 * p[:, 2] - 1, 2 * p[:, 3] - 1
    want = F.affine_grid(theta, [16, 3, 12, 12], align_corners=False)
    assert torch.allclose(crop_grid(p, 12), want, atol=1e-6)
    images = torch.randint(0, 256, (16, 3, 20, 20), dtype=torch.uint8)
    for mode in ("imagenet", "global"):
        late = normalise_images(random_resized_crop_flip(images, 12, params=p), mode)
        early = random_resized_crop_flip(normalise_images(images, mode), 12, params=p)
        assert torch.allclose(early, late, atol=1e-5)


def test_centre_crop_and_imagenet_normalisation():
    images = torch.zeros(1, 3, 10, 10, dtype=torch.uint8)
    images[..., 3:7, 3:7] = 255
    assert centre_crop(images, 4).min() == 255
    x = eval_transform(torch.full((1, 3, 4, 4), 255, dtype=torch.uint8), 4, "imagenet")
    want = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert torch.allclose(x[0, :, 0, 0], torch.tensor(want), atol=1e-5)


# ---------------------------------------------------------------------------- CLI
def test_cli_folder_pair_with_resnet18(tmp_path, two_folders):
    run = tmp_path / "run"
    proc = da_train(["data=folders", f"data.source.root={two_folders[0]}",
                     f"data.target.root={two_folders[1]}", f"data.cache_root={tmp_path}",
                     "data.cache_size=36", "data.image_size=32", "backbone=resnet18",
                     "backbone.pretrained=false", "method=dann", "trainer.steps=2",
                     "trainer.batch_size=4", "trainer.eval_every=2", "trainer.embed_samples=0",
                     f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "results.json").read_text())["data"] == "folders"


def test_cli_digit_backbone_on_photos_is_a_config_error(tmp_path, two_folders):
    proc = da_train(["data=folders", f"data.source.root={two_folders[0]}",
                     f"data.target.root={two_folders[1]}", f"data.cache_root={tmp_path}",
                     "backbone=lenet", "trainer.steps=2"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "digit network" in proc.stderr and "resnet18" in proc.stderr
