""".npz array domains: loading, checks, normalisation, a cnn1d signal pair end to end."""

import json

import numpy as np
import pytest
import torch
from cli_helpers import da_train
from omegaconf import OmegaConf

from da_train.data import DataError, load_pair
from da_train.data.arrays import normalise_arrays
from da_train.data.schemas import ArraysConfig


def write_signals(path, n_train=40, n_test=12, shift=0.0, seed=0, names=True):
    """Two-channel signals of length 64: class k is a sine of frequency k + 1 (+ shift)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, 64)

    def make(n):
        y = np.arange(n) % 3
        x = np.sin(2 * np.pi * (y[:, None] + 1) * t)[:, None, :].repeat(2, 1)
        return (x + shift + 0.1 * rng.standard_normal(x.shape)).astype(np.float32), y

    (xtr, ytr), (xte, yte) = make(n_train), make(n_test)
    extra = {"class_names": np.array(["low", "mid", "high"])} if names else {}
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, **extra)
    return path


def arrays_cfg(src, tgt, normalize="feature"):
    return OmegaConf.merge(OmegaConf.structured(ArraysConfig),
                           {"source": {"path": str(src)}, "target": {"path": str(tgt)},
                            "normalize": normalize})


def test_signal_pair_shapes_names_and_feature_normalisation(tmp_path):
    src = write_signals(tmp_path / "s.npz")
    tgt = write_signals(tmp_path / "t.npz", shift=2.0, seed=1)
    pair = load_pair(arrays_cfg(src, tgt))
    assert pair.input_shape == (2, 64) and pair.num_classes == 3
    assert pair.names() == ["low", "mid", "high"]
    assert pair.sizes() == {"source_train": 40, "source_test": 12, "target_train": 40,
                            "target_test": 12}
    x = pair.source_train.images
    assert x.dtype == torch.float32
    assert torch.allclose(x.mean(0), torch.zeros(2, 64), atol=1e-5)  # source-train statistics
    assert torch.allclose(x.std(0, unbiased=False), torch.ones(2, 64), atol=1e-4)
    # the target keeps its shift relative to the source (no target statistics used)
    assert pair.target_train_images.mean() > 1.0
    assert torch.equal(pair.train_view(x[:4]), x[:4])


def test_sample_and_no_normalisation():
    a = np.arange(12, dtype=np.float32).reshape(3, 4) * np.array([[1], [2], [3]])
    (s,) = normalise_arrays([a], "sample", a)
    assert np.allclose(s.mean(1), 0, atol=1e-6) and np.allclose(s.std(1), 1, atol=1e-5)
    (u,) = normalise_arrays([a.astype(np.uint8)], "none", a)
    assert u.dtype == np.float32 and np.array_equal(u, a)


def test_missing_keys_and_shape_mismatch_are_named(tmp_path):
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((2, 3)), y_train=np.zeros(2, int))
    good = write_signals(tmp_path / "g.npz")
    with pytest.raises(DataError, match="bad.npz lacks x_test, y_test"):
        load_pair(arrays_cfg(tmp_path / "bad.npz", good))
    np.savez(tmp_path / "v.npz", x_train=np.zeros((4, 5)), y_train=np.zeros(4, int),
             x_test=np.zeros((2, 5)), y_test=np.zeros(2, int))
    with pytest.raises(DataError, match=r"shape \(2, 64\).*\(5,\)"):
        load_pair(arrays_cfg(good, tmp_path / "v.npz"))
    with pytest.raises(DataError, match="Array file not found"):
        load_pair(arrays_cfg(good, tmp_path / "nope.npz"))


def test_class_names_mismatch_lists_differences(tmp_path):
    src = write_signals(tmp_path / "s.npz")
    tgt = tmp_path / "t.npz"
    d = dict(np.load(src))
    d["class_names"] = np.array(["low", "mid", "top"])
    np.savez(tgt, **d)
    with pytest.raises(DataError, match=r"only in source \['high'\], only in target \['top'\]"):
        load_pair(arrays_cfg(src, tgt))


def test_vectors_with_uint8_and_no_class_names(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        np.savez(tmp_path / f"{name}.npz", x_train=rng.integers(0, 255, (10, 6), np.uint8),
                 y_train=np.arange(10) % 4, x_test=rng.integers(0, 255, (5, 6), np.uint8),
                 y_test=np.arange(5) % 4)
    pair = load_pair(arrays_cfg(tmp_path / "a.npz", tmp_path / "b.npz", "none"))
    assert pair.input_shape == (6,) and pair.num_classes == 4 and pair.names()[3] == "3"
    assert pair.source_train.images.dtype == torch.float32


def test_cli_signal_pair_with_cnn1d(tmp_path):
    src = write_signals(tmp_path / "load0.npz")
    tgt = write_signals(tmp_path / "load3.npz", shift=0.5, seed=1)
    run = tmp_path / "run"
    proc = da_train(["data=arrays", f"data.source.path={src}", f"data.target.path={tgt}",
                     "backbone=cnn1d", "method=dann", "trainer.steps=4", "trainer.batch_size=8",
                     "trainer.eval_every=2", "trainer.embed_samples=0",
                     f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "results.json").read_text())["data"] == "arrays"
    bad = da_train(["data=arrays", f"data.source.path={src}", f"data.target.path={tgt}",
                    "backbone=lenet", "trainer.steps=2"], cwd=tmp_path)
    assert bad.returncode == 2 and "needs image inputs" in bad.stderr
