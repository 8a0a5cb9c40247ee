"""Figures of runs and sweeps: accuracy curves, confusion heat maps, feature scatters.

Used two ways: ``da-report SWEEP --plots DIR`` writes PNGs for a whole sweep
(:func:`write_figures`), and the trainer logs :func:`run_figures` to TensorBoard's Images tab
at the end of a run (``trainer.figures=true``). matplotlib (and scikit-learn for t-SNE) are the
optional ``[plots]`` extra, imported only when a figure is drawn; without matplotlib the
caller gets one :class:`PlotsUnavailable` message saying what to install.

Every figure is a free-standing ``matplotlib.figure.Figure`` (no pyplot state, Agg canvas), of
a fixed pixel size (``FIG_SIZES`` at ``DPI``), with a title, axis labels and a legend or
colour bar. Builders return ``(figure, data)``: the arrays that were plotted, so tests and
callers can check what a figure shows without reading pixels.

Run folder files read here: ``metrics.jsonl`` (``val/target_acc``, ``val/source_acc`` per
step), ``results.json`` (``target_confusion``, ``class_names``, ``method``, ``seed``) and
``embeddings.npz`` (written by :func:`save_embeddings`, format in its docstring).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from .runfiles import EMBEDDINGS, METRICS, RESULTS

INSTALL_HINT = 'pip install "da-train[plots]"'
DPI = 100
FIG_SIZES = {"curves": (12.0, 6.0), "confusion": (6.0, 5.0), "embeddings": (10.0, 9.0)}
CURVE_TAGS = {"target": "val/target_acc", "source": "val/source_acc"}
EMBED_MAX_POINTS = 1000
EMBED_DIMS = 50  # features are stored as their first 50 principal components (t-SNE's usual input)
EMBED_KEYS = ("source", "target", "source_labels", "target_labels")
DOMAIN_COLOURS = {"source": "tab:blue", "target": "tab:orange"}


class PlotsUnavailable(ImportError):
    """matplotlib is missing: the message says how to install it."""


def require_matplotlib():
    """(Figure, FigureCanvasAgg), or PlotsUnavailable saying how to install matplotlib.

    Callers check this first so that a missing extra fails before any work, not after.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise PlotsUnavailable(
            f"figures need matplotlib, which is not installed ({err}); install it with "
            f"{INSTALL_HINT}, or leave out --plots / set trainer.figures=false.") from err
    return Figure, FigureCanvasAgg


def _figure(kind: str):
    """A new pyplot-free Figure of the fixed size for ``kind`` (Agg canvas)."""
    Figure, FigureCanvasAgg = require_matplotlib()
    fig = Figure(figsize=FIG_SIZES[kind], dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path) -> Path:
    """Write ``fig`` as a PNG of exactly its figure size x DPI pixels."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    return path


# ------------------------------------------------------------------------ accuracy curves
def read_curves(run_dir) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"target"/"source": (steps, accuracy)} from a run's metrics.jsonl; {} if absent.

    A resumed run can log a step twice; the last value of a step wins. Unparseable lines
    (a run killed mid-write) are skipped.
    """
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return {}
    series: dict[str, dict[int, float]] = {name: {} for name in CURVE_TAGS}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        for name, tag in CURVE_TAGS.items():
            if isinstance(record, dict) and tag in record and "step" in record:
                series[name][int(record["step"])] = float(record[tag])
    return {name: (np.array(sorted(s)), np.array([s[k] for k in sorted(s)]))
            for name, s in series.items() if s}


def mean_std_curve(curves: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Mean and sample std over seeds at the steps every seed evaluated (ddof=1; 0 for one)."""
    common = curves[0][0]
    for steps, _ in curves[1:]:
        common = np.intersect1d(common, steps)
    values = np.stack([vals[np.isin(steps, common)] for steps, vals in curves])
    std = values.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(len(common))
    return {"steps": common, "mean": values.mean(axis=0), "std": std, "seeds": len(curves)}


def curves_figure(groups: dict[str, list], title: str = "Accuracy over training"):
    """Target (left) and source (right) test accuracy over steps, one line per group.

    ``groups`` maps a legend label (a method, or method + variant) to the run folders of its
    seeds. Each group with two or more seeds gets a mean +- std band. Returns (figure,
    {"target": {label: curve}, "source": {...}}) with each curve as in :func:`mean_std_curve`.
    """
    fig = _figure("curves")
    axes = fig.subplots(1, 2, sharey=True)
    data: dict[str, dict] = {name: {} for name in CURVE_TAGS}
    for colour, (label, folders) in enumerate(groups.items()):
        runs = [read_curves(f) for f in folders]
        for ax, name in zip(axes, CURVE_TAGS, strict=True):
            curves = [r[name] for r in runs if name in r]
            if not curves:
                continue
            curve = data[name][label] = mean_std_curve(curves)
            line = f"C{colour % 10}"
            ax.plot(curve["steps"], curve["mean"], color=line,
                    label=f"{label} (n={curve['seeds']})")
            if curve["seeds"] > 1:
                ax.fill_between(curve["steps"], curve["mean"] - curve["std"],
                                curve["mean"] + curve["std"], color=line, alpha=0.2)
    for ax, name in zip(axes, CURVE_TAGS, strict=True):
        ax.set_title(f"{name} test accuracy (mean ± std over seeds)")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:  # one legend for both panels, below them, so it never hides a curve
        fig.legend(handles, labels, loc="outside lower center", fontsize="small",
                   ncol=min(2, len(handles)))
    axes[0].set_ylabel("accuracy")
    fig.suptitle(title)
    return fig, data


# ------------------------------------------------------------------------ confusion
def confusion_figure(confusion, class_names=None, title: str = "Target confusion matrix"):
    """Heat map of a confusion matrix (rows: true class, columns: predicted), coloured by
    the row-normalised rate so that small classes are as visible as large ones; counts are
    written in the cells when there are at most 12 classes. Returns (figure, rates)."""
    counts = np.asarray(confusion, dtype=float)
    k = counts.shape[0]
    names = list(class_names) if class_names and len(class_names) == k else [
        str(i) for i in range(k)]
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    fig = _figure("confusion")
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="viridis", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of the true class")
    ax.set_xticks(range(k), names, rotation=90 if k > 12 else 0)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if k <= 12:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7,
                        color="black" if rates[i, j] > 0.5 else "white")
    return fig, rates


# ------------------------------------------------------------------------ embeddings
def save_embeddings(path, *, first_source, first_target, first_source_labels,
                    first_target_labels, last_source, last_target, last_source_labels,
                    last_target_labels, max_points: int = EMBED_MAX_POINTS,
                    dims: int = EMBED_DIMS) -> Path:
    """Write the features the before/after scatter needs: ``embeddings.npz`` in a run folder.

    Format (numpy ``.npz``, compressed): ``first_source``, ``first_target`` (float32, N x D
    features of source and target *test* images at the first evaluation), their labels
    ``first_source_labels``, ``first_target_labels`` (int64, N), and the same four ``last_*``
    keys at the final evaluation. At most ``max_points`` (1,000) rows per domain are kept: the
    first ones, so that first and last show the same images. Features wider than ``dims`` (50)
    are stored as their first ``dims`` principal components, fitted on source and target
    together at each time: t-SNE and UMAP are usually run on such a projection anyway, and it
    keeps the file small (1,200-dimensional digit features: 6.5 MB -> 0.4 MB), so a short
    run's folder stays light. Tensors or arrays are accepted. Target labels here only colour a
    figure; no validator reads this file.
    """
    arrays = {"first_source": first_source, "first_target": first_target,
              "first_source_labels": first_source_labels,
              "first_target_labels": first_target_labels, "last_source": last_source,
              "last_target": last_target, "last_source_labels": last_source_labels,
              "last_target_labels": last_target_labels}
    out = {}
    for key, value in arrays.items():
        array = _numpy(value)[:max_points]
        out[key] = (array.astype(np.int64) if key.endswith("_labels")
                    else array.reshape(len(array), -1).astype(np.float32))
    for when in ("first", "last"):
        source, target = out[f"{when}_source"], out[f"{when}_target"]
        if source.shape[1] > dims:
            reduced = _principal_components(np.concatenate([source, target]), dims)
            out[f"{when}_source"], out[f"{when}_target"] = np.split(reduced, [len(source)])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        np.savez_compressed(handle, **out)
    return path


def _principal_components(features: np.ndarray, dims: int) -> np.ndarray:
    """The rows of ``features`` projected on their first ``dims`` principal axes (float32)."""
    centred = features - features.mean(axis=0, keepdims=True)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    return (u[:, :dims] * s[:dims]).astype(np.float32)


def _numpy(value) -> np.ndarray:
    """A torch tensor (any device) or array-like as a numpy array."""
    if hasattr(value, "detach"):
        value = value.detach().float().cpu() if value.is_floating_point() else value.cpu()
        return value.numpy()
    return np.asarray(value)


def load_embeddings(path) -> dict[str, np.ndarray]:
    """The eight arrays of an embeddings.npz; ValueError naming any missing key."""
    with np.load(path) as npz:
        data = {k: npz[k] for k in npz.files}
    missing = [f"{when}_{key}" for when in ("first", "last") for key in EMBED_KEYS
               if f"{when}_{key}" not in data]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)} (see plots.save_embeddings)")
    return data


def project_2d(features: np.ndarray, method: str = "tsne", seed: int = 0):
    """(N x 2 points, the method used): t-SNE when scikit-learn is there, else PCA."""
    x = features.reshape(len(features), -1).astype(np.float64)
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError:
            method = "pca"
        else:
            perplexity = float(max(2.0, min(30.0, (len(x) - 1) / 3.0)))
            return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
                x), "t-SNE"
    return _principal_components(x, 2), "PCA"


def embeddings_figure(data: dict, method: str = "tsne", title: str = "Features"):
    """2 x 2 scatter: before (first evaluation) and after (last) adaptation, coloured by
    domain (left) and by class with source as dots and target as crosses (right).

    Source and target are projected together, once per moment, so their overlap is
    comparable. Returns (figure, {"first": {...}, "last": {...}}) with the 2-D points
    ``source``/``target`` and the projection used.
    """
    fig = _figure("embeddings")
    axes = fig.subplots(2, 2)
    out = {}
    for row, when in enumerate(("first", "last")):
        src, tgt = data[f"{when}_source"], data[f"{when}_target"]
        points, used = project_2d(np.concatenate([src, tgt]), method)
        out[when] = {"source": points[: len(src)], "target": points[len(src):],
                     "method": used}
        _domain_panel(axes[row, 0], out[when])
        _class_panel(axes[row, 1], out[when], data[f"{when}_source_labels"],
                     data[f"{when}_target_labels"])
        moment = "before adaptation (first evaluation)" if when == "first" else \
            "after adaptation (last evaluation)"
        for col, colouring in enumerate(("by domain", "by class")):
            ax = axes[row, col]
            ax.set_title(f"{moment}, {colouring}", fontsize="medium")
            ax.set_xlabel(f"{used} 1")
            ax.set_ylabel(f"{used} 2")
    fig.suptitle(title)
    return fig, out


def _domain_panel(ax, points: dict) -> None:
    for domain in ("source", "target"):
        xy = points[domain]
        ax.scatter(xy[:, 0], xy[:, 1], s=4, alpha=0.5, c=DOMAIN_COLOURS[domain],
                   label=f"{domain} (n={len(xy)})")
    ax.legend(loc="best", fontsize="small", markerscale=3)


def _class_panel(ax, points: dict, source_labels, target_labels) -> None:
    from matplotlib import colormaps
    from matplotlib.lines import Line2D

    classes = np.union1d(source_labels, target_labels)
    palette = np.array(colormaps["tab10" if classes.max() < 10 else "tab20"].colors)

    def colour(labels):
        return palette[np.asarray(labels) % len(palette)]

    ax.scatter(*points["source"].T, c=colour(source_labels), marker="o", s=6, alpha=0.6)
    ax.scatter(*points["target"].T, c=colour(target_labels), marker="x", s=6, alpha=0.6)
    # Legend: one entry per class (colour) and one per domain (marker).
    handles = [Line2D([], [], ls="", marker="s", color=colour([c])[0], label=str(c))
               for c in classes[:20]]
    handles += [Line2D([], [], ls="", marker=m, color="grey", label=d)
                for m, d in (("o", "source"), ("x", "target"))]
    ax.legend(handles=handles, loc="best", fontsize="x-small", ncol=2)


# ------------------------------------------------------------------------ entry points
def _results(run_dir) -> dict:
    try:
        data = json.loads((Path(run_dir) / RESULTS).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_figures(run_dir, confusion=None, class_names=None, embed_method: str = "tsne"):
    """{tag: Figure} for one run, for ``writer.add_figure(tag, fig)`` at the end of a run.

    ``confusion``/``class_names`` default to the run's results.json; a figure whose input is
    missing (no curves yet, no embeddings.npz) is left out.
    """
    require_matplotlib()
    run_dir = Path(run_dir)
    results = _results(run_dir)
    confusion = confusion if confusion is not None else results.get("target_confusion")
    class_names = class_names or results.get("class_names")
    figures = {}
    if read_curves(run_dir):
        figures["figures/accuracy"] = curves_figure({results.get("method", "run"): [run_dir]},
                                                    "Accuracy over training")[0]
    if confusion is not None:
        figures["figures/target_confusion"] = confusion_figure(_numpy(confusion),
                                                               class_names)[0]
    if (run_dir / EMBEDDINGS).is_file():
        figures["figures/features"] = embeddings_figure(
            load_embeddings(run_dir / EMBEDDINGS), embed_method,
            "Source and target test features")[0]
    return figures


def figure_to_array(fig) -> np.ndarray:
    """The figure rendered as an H x W x 3 uint8 array (``writer.add_image(..., dataformats=
    "HWC")``, or any image logger that takes arrays rather than Figures)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def short_labels(keys) -> tuple[dict[tuple[str, str], str], str]:
    """Labels that tell ``(method, variant)`` configurations apart without repeating what
    they all share: the method plus the overrides not common to every key (e.g.
    ``dann [method.lam=0.3]`` in a lambda sweep), and the common overrides, once, for a
    caption. Why: a sweep's variants repeat the same preset and step count in every row and
    legend entry, which buries the one key that differs. Used for legends and titles here and
    for the ``picked`` column of ``da-report --selection``."""
    keys = list(keys)
    tokens = {key: set(key[1].split()) for key in keys}
    common = set.intersection(*tokens.values()) if keys else set()
    labels = {}
    for key in keys:
        rest = " ".join(sorted(tokens[key] - common))
        labels[key] = key[0] + (f" [{rest}]" if rest else "")
    return labels, " ".join(sorted(common))


def _slug(text: str) -> str:
    """A file-name-safe version of a label."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")[:120] or "run"


def write_figures(completed: list[dict], out_dir, embed_method: str = "tsne") -> list[Path]:
    """The PNGs of ``da-report --plots DIR`` for completed runs (da_train.report's run dicts).

    Per data pair: ``curves_<data>.png`` (one line and band per method/variant). Per
    configuration, for its first seed: ``confusion_<data>_<config>.png`` and, when the run
    saved embeddings.npz, ``features_<data>_<config>.png``.
    """
    require_matplotlib()
    out_dir = Path(out_dir)
    by_data: dict[str, dict[tuple[str, str], list[dict]]] = {}
    for run in completed:
        key = (run["method"], run["variant"])
        by_data.setdefault(run["data"], {}).setdefault(key, []).append(run)
    written = []
    for data, by_key in sorted(by_data.items()):
        labels, shared = short_labels(by_key)   # legends name what differs, titles the rest
        configs = {labels[key]: runs for key, runs in by_key.items()}
        where = data + (f" ({shared})" if shared else "")
        folders = {label: [r["folder"] for r in runs] for label, runs in configs.items()}
        if any(read_curves(f) for fs in folders.values() for f in fs):
            fig, _ = curves_figure(folders, f"{where}: test accuracy over training")
            written.append(save_png(fig, out_dir / f"curves_{_slug(data)}.png"))
        for label, runs in configs.items():
            written += _run_pngs(runs[0], data, label, where, out_dir, embed_method)
    return written


def _run_pngs(run: dict, data: str, label: str, context: str, out_dir: Path,
              embed_method: str):
    """Confusion and feature figures of one run, if it recorded their inputs."""
    results, name, written = _results(run["folder"]), _slug(f"{data}_{label}"), []
    where = f"{label}, seed {run['seed']}\n{context}"
    if results.get("target_confusion"):
        fig, _ = confusion_figure(results["target_confusion"], results.get("class_names"),
                                  f"Target confusion: {where}")
        written.append(save_png(fig, out_dir / f"confusion_{name}.png"))
    npz = Path(run["folder"]) / EMBEDDINGS
    if npz.is_file():
        fig, _ = embeddings_figure(load_embeddings(npz), embed_method, f"Features: {where}")
        written.append(save_png(fig, out_dir / f"features_{name}.png"))
    return written


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; ValueError if it is not a PNG."""
    head = Path(path).read_bytes()[:24]
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG file")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def expected_size(kind: str) -> tuple[int, int]:
    """The pixel size of a saved figure of ``kind``."""
    w, h = FIG_SIZES[kind]
    return int(math.floor(w * DPI + 0.5)), int(math.floor(h * DPI + 0.5))
