"""Your own arrays: one ``.npz`` per domain with ``x_train``, ``y_train``, ``x_test``,
``y_test`` (optional ``class_names``), any per-sample shape: vectors (features, tabular),
``C x L`` signals (vibration, sensors) or ``C x H x W`` images.

Samples become float32 once, at load, normalised as ``data.normalize`` says; the network input
is then the stored tensor itself (``normalise`` passes floats through), so a batch is one gather.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from .core import DataError, DomainPair, Split

KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path) -> dict:
    """The four arrays (and class names) of one domain file, checked for shape and labels."""
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise DataError(f"Array file not found: {path}. Set data.source.path / "
                        "data.target.path to a .npz holding x_train, y_train, x_test, y_test.")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in KEYS if k not in f.files]
            if missing:
                raise DataError(f"{path} lacks {', '.join(missing)} (it has "
                                f"{', '.join(f.files) or 'no arrays'}); a domain file needs "
                                "x_train, y_train, x_test, y_test and optionally class_names.")
            out = {k: f[k] for k in KEYS}
            names = f["class_names"] if "class_names" in f.files else None
    except (OSError, ValueError) as err:
        raise DataError(f"Cannot read {path} as a .npz file: {err}.") from err
    for split in ("train", "test"):
        x, y = out[f"x_{split}"], out[f"y_{split}"]
        if y.ndim != 1 or len(x) != len(y) or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: y_{split} must be N integer labels for the N samples of "
                            f"x_{split} (got x {x.shape}, y {y.shape} {y.dtype}).")
        if len(y) and y.min() < 0:
            raise DataError(f"{path}: y_{split} holds negative labels; use 0..K-1.")
    if out["x_train"].shape[1:] != out["x_test"].shape[1:]:
        raise DataError(f"{path}: x_train samples are {out['x_train'].shape[1:]} but x_test "
                        f"samples are {out['x_test'].shape[1:]}.")
    out["class_names"] = None if names is None else tuple(str(n) for n in names)
    out["path"] = path
    return out


def _check_compatible(src: dict, tgt: dict) -> None:
    if src["x_train"].shape[1:] != tgt["x_train"].shape[1:]:
        raise DataError(f"Source samples ({src['path']}) have shape {src['x_train'].shape[1:]} "
                        f"but target samples ({tgt['path']}) have {tgt['x_train'].shape[1:]}; "
                        "both domains must share one per-sample shape.")
    a, b = src["class_names"], tgt["class_names"]
    if a is not None and b is not None and a != b:
        only_s, only_t = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise DataError(f"class_names differ between {src['path']} and {tgt['path']}: only in "
                        f"source {only_s or '-'}, only in target {only_t or '-'}, order "
                        f"{list(a)} vs {list(b)}. Use the same classes in the same order.")


def normalise_arrays(arrays: list[np.ndarray], mode: str, reference: np.ndarray):
    """float32 copies of ``arrays``: ``none``; ``feature`` (each value position standardised
    with ``reference``'s mean/std: source-train statistics, so no target statistics leak in);
    ``sample`` (each sample standardised over all its values)."""
    out = [a.astype(np.float32) for a in arrays]
    if mode == "feature":
        ref = reference.astype(np.float64)
        mean, std = ref.mean(0), ref.std(0)
        std[std < 1e-8] = 1.0
        out = [((a - mean) / std).astype(np.float32) for a in out]
    elif mode == "sample":
        for a in out:
            flat = a.reshape(len(a), -1)
            flat -= flat.mean(1, keepdims=True)
            flat /= np.maximum(flat.std(1, keepdims=True), 1e-8)
    elif mode != "none":
        raise ConfigError(f"Invalid config value data.normalize={mode!r}: for data=arrays it must "
                          "be none, feature or sample.")
    return out


def arrays_pair(cfg) -> DomainPair:
    """Source and target ``.npz`` files -> a pair of float tensors (normalised once)."""
    src, tgt = load_npz(cfg.source.path), load_npz(cfg.target.path)
    _check_compatible(src, tgt)
    xs = normalise_arrays([d[f"x_{s}"] for d in (src, tgt) for s in ("train", "test")],
                          cfg.normalize, src["x_train"])
    x = [torch.from_numpy(np.ascontiguousarray(a)) for a in xs]
    y = [torch.from_numpy(d[f"y_{s}"].astype(np.int64)) for d in (src, tgt)
         for s in ("train", "test")]
    num_classes = int(max(int(t.max()) for t in y if len(t)) + 1)
    names = src["class_names"] or tgt["class_names"]
    if names is not None and len(names) < num_classes:
        raise DataError(f"{len(names)} class_names but labels go up to {num_classes - 1}.")
    if names is not None:
        num_classes = len(names)
    return DomainPair(Split(x[0], y[0]), x[2], Split(x[1], y[1]), Split(x[3], y[3]),
                      num_classes, y[2], names, "none")
