"""The pair registry: ``data.name`` -> a function that builds the :class:`DomainPair`."""

from __future__ import annotations

import dataclasses

from .arrays import arrays_pair
from .core import DataError, DomainPair, Split
from .digits import DIGIT_NAMES, digits_pair
from .folders import folders_pair
from .mnist import load_mnist, mnist_to_rgb32, select_digits
from .mnistm import build_mnistm, load_mnistm_folder


def load_pair(data_cfg, with_target_labels: bool = False) -> DomainPair:
    """Build the DomainPair named by ``data.name``.

    Target training labels stay attached only when asked for (the ``target_only`` oracle), so
    a domain-adaptation method cannot read them even by mistake.
    """
    builder = PAIRS.get(data_cfg.name)
    if builder is None:
        raise DataError(f"Unknown data pair {data_cfg.name!r}; choices: {', '.join(PAIRS)}.")
    pair = builder(data_cfg)
    if not with_target_labels:
        pair = dataclasses.replace(pair, target_train_labels=None)
    return pair


def _mnist_mnistm(cfg) -> DomainPair:
    mnist = {s: load_mnist(cfg.root, s, cfg.download) for s in ("train", "test")}
    if cfg.mnistm == "build":
        mnistm = {s: build_mnistm(cfg.root, s, mnist[s], cfg.build_seed, cfg.cache_root,
                                  cfg.download)
                  for s in mnist}
    else:
        mnistm = {s: load_mnistm_folder(cfg.mnistm_dir, s) for s in ("train", "test")}
    source = {s: Split(mnist_to_rgb32(mnist[s].images), mnist[s].labels) for s in mnist}
    return DomainPair(source["train"], mnistm["train"].images, source["test"], mnistm["test"],
                      10, mnistm["train"].labels, DIGIT_NAMES, cfg.get("normalize", "global"))


def _mnist01_23(cfg) -> DomainPair:
    """MNIST 0/1 -> MNIST 2/3 (2 -> 0, 3 -> 1): single-channel 28x28, 2 classes."""
    mnist = {s: load_mnist(cfg.root, s, cfg.download) for s in ("train", "test")}
    source = {s: select_digits(mnist[s], (0, 1)) for s in mnist}
    target = {s: select_digits(mnist[s], (2, 3)) for s in mnist}
    return DomainPair(source["train"], target["train"].images, source["test"], target["test"],
                      2, target["train"].labels, ("0<-2", "1<-3"), cfg.get("normalize", "global"))


# data.name -> builder. Adding a dataset: a module with a builder, a conf/data file (with its
# schema in schemas.py) and one line here.
PAIRS = {"mnist_mnistm": _mnist_mnistm, "mnist01_23": _mnist01_23,
         "digits": digits_pair, "mnist_usps": digits_pair, "usps_mnist": digits_pair,
         "svhn_mnist": digits_pair, "folders": folders_pair, "arrays": arrays_pair}
