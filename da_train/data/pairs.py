"""The pair registry: ``data.name`` -> a function that builds the :class:`DomainPair`, and
:func:`load_pair`, which also holds out the source validation split and records where the
data came from (results.json ``data_roots``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .arrays import arrays_pair
from .core import DataError, DomainPair
from .digits import DIGIT_NAMES, digit_pair
from .folders import folders_pair
from .mnist import load_mnist, select_digits
from .required import missing_files, require_files
from .schemas import cache_root
from .source_val import hold_out_source_val


def load_pair(data_cfg, with_target_labels: bool = False, seed: int | None = None) -> DomainPair:
    """Build the DomainPair named by ``data.name``.

    Target training labels stay attached only when asked for (the ``target_only`` oracle), so
    a domain-adaptation method cannot read them even by mistake. With ``seed`` (the run's
    ``cfg.seed``), the ``data.source_val`` fraction of the source training set is already
    held out as ``pair.source_val`` (:func:`.source_val.hold_out_source_val`, the same
    tensors as holding it out afterwards; holding out again changes nothing).
    """
    builder = PAIRS.get(data_cfg.name)
    if builder is None:
        raise DataError(f"Unknown data pair {data_cfg.name!r}; choices: {', '.join(PAIRS)}.")
    pair = builder(data_cfg)
    if not with_target_labels:
        pair = dataclasses.replace(pair, target_train_labels=None)
    pair = dataclasses.replace(pair, records={**data_records(data_cfg), **pair.records})
    if seed is not None:
        pair = hold_out_source_val(pair, data_cfg.get("source_val", 0.0), seed)
    return pair


def data_records(cfg) -> dict:
    """``{"data_roots": {key: absolute path}}``: the data and cache folders a run read (the
    resolved ``data.root``, ``data.cache_root``, ``data.mnistm_dir``, the folders / lists /
    arrays of your own data), for results.json and da-report's command column."""
    roots = {}
    for key in ("root", "mnistm_dir"):
        if cfg.get(key) is not None:
            roots[f"data.{key}"] = str(Path(str(cfg[key])).expanduser().resolve())
    if "cache_root" in cfg:
        roots["data.cache_root"] = str(cache_root(cfg.cache_root))
    for domain in ("source", "target"):
        node = cfg.get(domain)
        if node is None or not hasattr(node, "items"):
            continue
        for key in ("root", "list", "list_root", "test_root", "test_list", "path"):
            if node.get(key) is not None:
                roots[f"data.{domain}.{key}"] = str(Path(str(node[key])).expanduser().resolve())
    return {"data_roots": roots}


def _mnist01_23(cfg) -> DomainPair:
    """MNIST 0/1 -> MNIST 2/3 (2 -> 0, 3 -> 1): single-channel 28x28, 2 classes."""
    require_files(cfg)
    mnist = {s: load_mnist(cfg.root, s, cfg.download) for s in ("train", "test")}
    source = {s: select_digits(mnist[s], (0, 1)) for s in mnist}
    target = {s: select_digits(mnist[s], (2, 3)) for s in mnist}
    return DomainPair(source["train"], target["train"].images, source["test"], target["test"],
                      2, target["train"].labels, ("0<-2", "1<-3"), cfg.get("normalize", "global"))


# data.name -> builder. Adding a dataset: a module with a builder, a conf/data file (with its
# schema in schemas.py) and one line here. Every digit pair (mnist_mnistm included) has the
# one builder digit_pair.
PAIRS = {"mnist_mnistm": digit_pair, "mnist01_23": _mnist01_23,
         "digits": digit_pair, "mnist_usps": digit_pair, "usps_mnist": digit_pair,
         "svhn_mnist": digit_pair, "folders": folders_pair, "arrays": arrays_pair}

__all__ = ["DIGIT_NAMES", "PAIRS", "data_records", "load_pair", "missing_files",
           "require_files"]
