"""Figures: the data behind them (bands per method, rates, projections) and the PNG files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from da_train import plots  # noqa: E402
from da_train.report import main  # noqa: E402

STEPS = (0, 100, 200, 300)


def make_run(folder: Path, method: str, seed: int, target, source, *, data="mnist_usps",
             extra=(), confusion=None, embeddings=False) -> Path:
    """A completed run folder with metrics.jsonl curves (and optionally more)."""
    folder.mkdir(parents=True)
    overrides = [f"method={method}", f"data={data}", f"seed={seed}", *extra]
    lines = [json.dumps({"step": s, "train/loss": 1.0}) for s in STEPS]
    lines += [json.dumps({"step": s, "val/target_acc": t, "val/source_acc": a})
              for s, t, a in zip(STEPS, target, source, strict=True)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n{broken")
    res = {"status": "completed", "method": method, "data": data, "seed": seed,
           "target_acc": target[-1], "source_acc": source[-1], "overrides": overrides,
           "oracle": False, "class_names": ["zero", "one", "two"]}
    if confusion is not None:
        res["target_confusion"] = confusion
    (folder / "results.json").write_text(json.dumps(res))
    (folder / "status.json").write_text(json.dumps({"status": "completed"}))
    if embeddings:
        write_embeddings(folder / "embeddings.npz", n=80)
    return folder


def write_embeddings(path, n=80, d=6):
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 3

    def feats(shift):
        return torch.randn(n, d, generator=gen) + labels[:, None] * 3.0 + shift

    return plots.save_embeddings(
        path, first_source=feats(0), first_target=feats(8), first_source_labels=labels,
        first_target_labels=labels, last_source=feats(0), last_target=feats(0.5),
        last_source_labels=labels, last_target_labels=labels)


@pytest.fixture
def sweep(tmp_path) -> Path:
    """dann and ddc, two seeds each; one dann run has a confusion matrix and embeddings."""
    out = tmp_path / "sweep"
    make_run(out / "0", "dann", 0, [0.2, 0.5, 0.7, 0.8], [0.5, 0.9, 0.95, 0.97],
             confusion=[[8, 1, 1], [0, 9, 1], [2, 2, 6]], embeddings=True)
    make_run(out / "1", "dann", 1, [0.3, 0.6, 0.8, 0.9], [0.6, 0.9, 0.96, 0.98])
    make_run(out / "2", "ddc", 0, [0.1, 0.2, 0.3, 0.4], [0.5, 0.8, 0.9, 0.9])
    make_run(out / "3", "ddc", 1, [0.1, 0.4, 0.5, 0.6], [0.5, 0.8, 0.9, 0.9])
    return out


def test_read_curves_skips_broken_lines(sweep):
    curves = plots.read_curves(sweep / "0")
    assert curves["target"][0].tolist() == list(STEPS)
    assert curves["source"][1].tolist() == [0.5, 0.9, 0.95, 0.97]
    assert plots.read_curves(sweep / "missing") == {}


def test_two_seed_curves_have_one_band_per_method(sweep):
    groups = {"dann": [sweep / "0", sweep / "1"], "ddc": [sweep / "2", sweep / "3"]}
    fig, data = plots.curves_figure(groups)
    dann = data["target"]["dann"]
    assert dann["seeds"] == 2 and dann["steps"].tolist() == list(STEPS)
    np.testing.assert_allclose(dann["mean"], [0.25, 0.55, 0.75, 0.85])
    np.testing.assert_allclose(dann["std"], np.full(4, np.std([0.2, 0.3], ddof=1)))
    target_ax, source_ax = fig.axes[:2]
    # One filled band (PolyCollection) and one mean line per method on each panel.
    assert len(target_ax.collections) == 2 and len(target_ax.lines) == 2
    assert len(source_ax.collections) == 2
    [legend] = fig.legends  # one legend for both panels
    assert [t.get_text() for t in legend.get_texts()] == ["dann (n=2)", "ddc (n=2)"]
    assert target_ax.get_xlabel() == "training step" and target_ax.get_ylabel() == "accuracy"
    # A single seed is a line without a band.
    fig, data = plots.curves_figure({"dann": [sweep / "0"]})
    assert len(fig.axes[0].collections) == 0 and data["target"]["dann"]["std"].sum() == 0


def test_confusion_rates_and_labels():
    fig, rates = plots.confusion_figure([[8, 2], [0, 0]], ["cat", "dog"], "t")
    np.testing.assert_allclose(rates, [[0.8, 0.2], [0.0, 0.0]])   # empty row: no NaN
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog"]
    assert ax.get_xlabel() == "predicted class" and ax.get_title() == "t"


def test_save_embeddings_format_and_cap(tmp_path):
    n = 1500
    path = plots.save_embeddings(
        tmp_path / "e.npz", first_source=torch.randn(n, 2, 2), first_target=np.zeros((n, 4)),
        first_source_labels=torch.arange(n), first_target_labels=np.arange(n),
        last_source=torch.randn(10, 4), last_target=torch.randn(10, 4),
        last_source_labels=torch.arange(10), last_target_labels=torch.arange(10))
    data = plots.load_embeddings(path)
    assert data["first_source"].shape == (1000, 4) and data["first_source"].dtype == np.float32
    assert data["first_source_labels"].tolist() == list(range(1000))
    assert data["last_target"].shape == (10, 4)
    wide = plots.save_embeddings(
        tmp_path / "w.npz", first_source=torch.randn(30, 80), first_target=torch.randn(20, 80),
        first_source_labels=torch.arange(30), first_target_labels=torch.arange(20),
        last_source=torch.randn(30, 80), last_target=torch.randn(20, 80),
        last_source_labels=torch.arange(30), last_target_labels=torch.arange(20), dims=5)
    data = plots.load_embeddings(wide)
    assert data["first_source"].shape == (30, 5) and data["last_target"].shape == (20, 5)
    joint = np.concatenate([data["first_source"], data["first_target"]])
    np.testing.assert_allclose(joint.mean(axis=0), 0, atol=1e-4)  # centred jointly
    variances = joint.var(axis=0)
    assert (np.diff(variances) <= 1e-5).all()  # principal axes, largest variance first
    np.savez(tmp_path / "bad.npz", first_source=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="last_target_labels"):
        plots.load_embeddings(tmp_path / "bad.npz")


@pytest.mark.parametrize("method,used", [("pca", "PCA"), ("tsne", "t-SNE")])
def test_embeddings_figure_before_and_after(tmp_path, method, used):
    data = plots.load_embeddings(write_embeddings(tmp_path / "e.npz", n=60))
    fig, points = plots.embeddings_figure(data, method)
    assert points["first"]["method"] == used and points["last"]["source"].shape == (60, 2)
    if method == "pca":
        # Before: the domains are 8 apart along the first component; after, nearly on top.
        gap = [abs(points[w]["source"][:, 0].mean() - points[w]["target"][:, 0].mean())
               for w in ("first", "last")]
        assert gap[0] > 5 * gap[1]
    assert len(fig.axes) == 4 and all(ax.get_legend() is not None for ax in fig.axes)
    assert "before adaptation" in fig.axes[0].get_title()


def test_write_figures_pngs_of_the_right_size(sweep, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main([str(sweep), "--plots", str(out)]) == 0
    assert "wrote 3 figure(s)" in capsys.readouterr().err
    # ddc recorded neither a confusion matrix nor embeddings: only the shared curves.
    assert sorted(p.name for p in out.iterdir()) == [
        "confusion_mnist_usps_dann.png", "curves_mnist_usps.png", "features_mnist_usps_dann.png"]
    kinds = {"curves": "curves", "confusion": "confusion", "features": "embeddings"}
    for path in out.iterdir():
        assert plots.png_size(path) == plots.expected_size(kinds[path.name.split("_")[0]])
    with pytest.raises(ValueError):
        plots.png_size(sweep / "0" / "results.json")


def test_run_figures_go_to_tensorboard(sweep, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    figures = plots.run_figures(sweep / "0", embed_method="pca")
    assert sorted(figures) == ["figures/accuracy", "figures/features",
                               "figures/target_confusion"]
    assert plots.run_figures(sweep / "2").keys() == {"figures/accuracy"}
    with SummaryWriter(tmp_path / "tb") as writer:
        for tag, fig in figures.items():
            writer.add_figure(tag, fig, global_step=300)
    image = plots.figure_to_array(plots.run_figures(sweep / "0", embed_method="pca")[
        "figures/target_confusion"])
    assert image.shape == (*plots.expected_size("confusion")[::-1], 3)
    assert image.dtype == np.uint8 and image.std() > 10
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 10_000
