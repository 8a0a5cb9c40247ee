"""Digit domains (USPS, SVHN) and the digit pairs (issue 14)."""

import bz2
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import da_train as run_da_train
from cli_helpers import small
from conftest import write_usps
from omegaconf import OmegaConf

from da_train.data import DataError, load_pair
from da_train.data import digits as digits_mod
from da_train.data.core import Split
from da_train.data.digits import (
    common_input,
    limit_split,
    load_svhn,
    load_usps,
    read_usps,
    to_common,
)
from da_train.data.schemas import DigitsConfig


def write_svhn(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """torchvision's layout: X is 32 x 32 x 3 x N, y is N x 1 with digit 0 stored as 10."""
    import scipy.io

    path.parent.mkdir(parents=True, exist_ok=True)
    y = np.where(labels == 0, 10, labels).reshape(-1, 1)
    scipy.io.savemat(path, {"X": images.transpose(2, 3, 1, 0), "y": y})


@pytest.fixture
def usps_root(digits_root):
    """digits_root's MNIST plus USPS: 30 train / 12 test 16x16 images, image i = value 8 i."""
    for name, n in (("usps.bz2", 30), ("usps.t.bz2", 12)):
        pixels = np.broadcast_to((np.arange(n) * 8)[:, None, None], (n, 16, 16))
        write_usps(digits_root / "USPS" / name, pixels, np.arange(n) % 10)
    return digits_root


@pytest.fixture
def svhn_root(digits_root):
    rng = np.random.default_rng(0)
    for name, n in (("train_32x32.mat", 24), ("test_32x32.mat", 10)):
        write_svhn(digits_root / "SVHN" / name, rng.integers(0, 256, (n, 3, 32, 32), np.uint8),
                   np.arange(n) % 10)
    return digits_root


def digits_cfg(root, **over):
    cfg = OmegaConf.structured(DigitsConfig)
    base = {"root": str(root), "download": False, "cache_root": str(root),
            "source": {"name": "mnist"}, "target": {"name": "usps"}}
    return OmegaConf.merge(cfg, base, over)


def test_usps_loader_pixels_and_labels(usps_root):
    train = load_usps(usps_root, "train", False)
    assert train.images.shape == (30, 1, 16, 16) and train.images.dtype == torch.uint8
    # torchvision's uint8((v + 1) / 2 * 255) truncates: a 6-digit v may land 1 below
    got = train.images[:, 0, 0, 0].long()
    assert (torch.arange(30) * 8 - got).abs().max() <= 1
    assert train.labels.tolist() == [i % 10 for i in range(30)]
    assert len(load_usps(usps_root, "test", False).labels) == 12


def test_usps_garbage_file_is_named(tmp_path):
    bad = tmp_path / "usps.bz2"
    with bz2.open(bad, "wt") as f:
        f.write("3 1:0.5 2:0.5\n")
    with pytest.raises(DataError, match="usps.bz2 is not a USPS file"):
        read_usps(bad)
    bad.write_bytes(b"not bzip2")
    with pytest.raises(DataError, match="Cannot read USPS file"):
        read_usps(bad)


def test_svhn_loader_maps_label_10_to_0_and_keeps_pixels(svhn_root):
    import scipy.io

    train = load_svhn(svhn_root, "train", False)
    raw = scipy.io.loadmat(svhn_root / "SVHN" / "train_32x32.mat")
    assert train.images.shape == (24, 3, 32, 32)
    assert torch.equal(train.images[5], torch.from_numpy(raw["X"][..., 5].transpose(2, 0, 1)))
    assert train.labels.tolist() == [i % 10 for i in range(24)]
    assert (raw["y"] == 10).sum() == 3 and train.labels.min() == 0


def test_missing_usps_names_file_and_fix(digits_root):
    with pytest.raises(DataError) as err:
        load_usps(digits_root, "test", False)
    msg = str(err.value)
    assert str(digits_root / "USPS" / "usps.t.bz2") in msg and "data.download=true" in msg


def test_download_fetches_only_the_missing_file(usps_root, monkeypatch):
    (usps_root / "USPS" / "usps.t.bz2").unlink()
    fetched = []

    def fake_download(url, root, filename, md5):
        fetched.append((url, filename, md5))
        write_usps(Path(root) / filename, np.zeros((4, 16, 16), np.uint8), np.arange(4))

    monkeypatch.setattr("torchvision.datasets.utils.download_url", fake_download)
    assert len(load_usps(usps_root, "train", True).labels) == 30  # present: no download
    assert len(load_usps(usps_root, "test", True).labels) == 4
    assert [f[1] for f in fetched] == ["usps.t.bz2"]
    assert fetched[0][2] == "8ea070ee2aca1ac39742fdd1ef5ed118"  # torchvision's md5


def test_failed_download_is_one_message(digits_root, monkeypatch):
    def offline(url, root, filename, md5):
        raise OSError("Network is unreachable")

    monkeypatch.setattr("torchvision.datasets.utils.download_url", offline)
    with pytest.raises(DataError, match="train_32x32.mat.*Network is unreachable"):
        load_svhn(digits_root, "train", True)


def test_to_common_resizes_pads_and_converts_channels():
    usps = torch.full((2, 1, 16, 16), 200, dtype=torch.uint8)
    assert to_common(usps, 28, 1).shape == (2, 1, 28, 28)
    assert to_common(usps, 28, 1).unique().tolist() == [200]
    mnist = torch.full((2, 1, 28, 28), 9, dtype=torch.uint8)
    rgb = to_common(mnist, 32, 3)
    assert rgb.shape == (2, 3, 32, 32) and rgb[:, :, 0].max() == 0 and rgb[0, 2, 16, 16] == 9
    svhn = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    svhn[:, 1] = 100
    assert to_common(svhn, 28, 1)[0, 0, 14, 14] == round(0.587 * 100)


def test_common_input_defaults():
    assert common_input("mnist", "usps", 0, 0) == (28, 1)
    assert common_input("svhn", "mnist", 0, 0) == (32, 3)
    assert common_input("usps", "mnist", 32, 3) == (32, 3)


def test_limit_is_seeded_and_ordered():
    s = Split(torch.arange(100).view(100, 1, 1, 1).to(torch.uint8), torch.arange(100))
    a, b, c = limit_split(s, 10, 0), limit_split(s, 10, 0), limit_split(s, 10, 1)
    assert torch.equal(a.labels, b.labels) and not torch.equal(a.labels, c.labels)
    assert len(a.labels) == 10 and torch.equal(a.labels, a.labels.sort().values)
    assert torch.equal(a.images.view(-1).long(), a.labels)
    assert limit_split(s, 0, 0) is s


def test_mnist_usps_pair_with_limits(usps_root):
    pair = load_pair(digits_cfg(usps_root, size=28, channels=1,
                                source={"limit": 25}, target={"limit": 20}))
    assert pair.sizes() == {"source_train": 25, "source_test": 20, "target_train": 20,
                            "target_test": 12}
    assert pair.input_shape == (1, 28, 28) and pair.num_classes == 10
    assert pair.target_train_labels is None and pair.names()[0] == "0"


def test_any_two_digit_domains(svhn_root, usps_root):
    pair = load_pair(digits_cfg(usps_root, source={"name": "svhn"}, target={"name": "usps"}))
    assert pair.input_shape == (3, 32, 32) and pair.target_train_images.shape == (30, 3, 32, 32)


def test_unknown_digit_domain_lists_choices(usps_root):
    with pytest.raises(DataError, match="'kmnist'.*mnist, mnistm, usps, svhn"):
        load_pair(digits_cfg(usps_root, target={"name": "kmnist"}))


def test_real_usps_counts(real_root):
    assert len(load_usps(real_root, "train", False).labels) == 7291
    assert len(load_usps(real_root, "test", False).labels) == 2007


def test_real_mnist_usps_preset_protocol(real_root):
    from hydra import compose, initialize_config_module

    from da_train.config import register_schema

    register_schema()
    with initialize_config_module("da_train.conf", version_base="1.3"):
        cfg = compose("config", overrides=["data=mnist_usps", f"data.root={real_root}",
                                           "data.download=false"])
    pair = load_pair(cfg.data)
    assert pair.sizes() == {"source_train": 2000, "source_test": 10000, "target_train": 1800,
                            "target_test": 2007}
    assert pair.input_shape == (1, 28, 28)


@pytest.mark.parametrize("preset", ["mnist_usps", "usps_mnist"])
def test_cli_digit_presets_run(usps_root, tmp_path, preset):
    proc = run_da_train([f"data={preset}", *small(usps_root, steps=4),
                         "data.source.limit=0", "data.target.limit=0",
                         f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["data"] == preset


def test_cli_digits_any_pair_and_unknown_key(svhn_root, usps_root, tmp_path):
    proc = run_da_train(["data=digits", "data.source.name=svhn", "data.target.name=usps",
                         *small(usps_root, steps=2), f"hydra.run.dir={tmp_path / 'run'}"],
                        cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    bad = run_da_train(["data=mnist_usps", "data.on_error=skip"], cwd=tmp_path)
    assert bad.returncode == 2 and "on_error" in bad.stderr


def _fit(data, method, real_root, tmp_path, steps, backbone="dann_digits"):
    """One digit-pair run (the preset's ADDA protocol) with the Trainer API; its results."""
    from toy import compose_config

    from da_train.methods import build_method
    from da_train.models import build_backbone
    from da_train.runtime import seed_everything
    from da_train.trainer import Trainer

    cfg = compose_config([
            f"data={data}", f"method={method}", f"backbone={backbone}", f"data.root={real_root}",
            "data.download=false", f"trainer.steps={steps}", f"trainer.eval_every={steps}",
            "trainer.batch_size=64", "trainer.embed_samples=0", "trainer.eval_samples=1000",
            "trainer.device=cpu", "trainer.ckpt_every=100000"])
    seed_everything(0)
    pair = load_pair(cfg.data, seed=cfg.seed)
    method_obj = build_method(cfg.method, build_backbone(cfg.backbone, 10, pair.input_shape), 10)
    return Trainer(cfg, method_obj, pair, tmp_path / method, torch.device("cpu"), []).fit()


def test_real_usps_to_mnist_dann_beats_source_only(real_root, tmp_path):
    """Adaptation on real data that can fail: same seed, steps and network for both.

    USPS -> MNIST rather than MNIST -> USPS: under ADDA's protocol the published gap of DANN
    over source-only is +0.16 there (0.730 vs 0.571) but only +0.02 on MNIST -> USPS (0.771 vs
    0.752), too small for a short test. Measured here (seed 0, 1,000 MNIST test images): LeNet,
    250 steps: source-only 0.44, DANN 0.60 (400 steps: 0.42 / 0.60); dann_digits, 1,000
    steps: 0.435 / 0.639. LeNet at 250 steps keeps the test short.
    """
    torch.set_num_threads(1)
    acc = {m: float(_fit("usps_mnist", m, real_root, tmp_path, 250, "lenet")["target_acc"])
           for m in ("source_only", "dann")}
    assert acc["dann"] >= acc["source_only"] + 0.08, acc


def test_usps_module_registry_is_one_line_per_domain():
    assert set(digits_mod.DIGIT_DOMAINS) == {"mnist", "mnistm", "usps", "svhn"}
