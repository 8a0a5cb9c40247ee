"""The pair registry: ``data.name`` -> a function that builds the :class:`DomainPair`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .arrays import arrays_pair
from .bsds import missing_bsds
from .core import DataError, DomainPair, Split
from .digits import DIGIT_NAMES, digits_pair
from .download import Missing, fetch_missing, missing_message
from .folders import folders_pair
from .mnist import load_mnist, missing_mnist, mnist_to_rgb32, select_digits
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


def missing_files(cfg) -> list[Missing]:
    """Every file the pair ``data.name`` needs that is not on disk, grouped by dataset.

    Checked before anything is downloaded or built, so one message can name them all (not one
    per round of "fix it and run again").
    """
    groups = [missing_mnist(cfg.root)]
    if cfg.name == "mnist_mnistm":
        if cfg.mnistm != "build":
            groups.append(_missing_released_mnistm(cfg.mnistm_dir))
        elif not _mnistm_cache_complete(cfg):
            groups.append(missing_bsds(cfg.root))
    return [g for g in groups if g is not None]


def require_files(cfg) -> None:
    """Download what is missing (when ``data.download``), then raise ONE DataError listing every
    file still missing, with both ways forward (download with network, or the offline copy)."""
    missing = missing_files(cfg)
    if not missing:
        return
    failures = []
    if cfg.download:
        failures = fetch_missing(missing)
        missing = missing_files(cfg)
        if not missing:
            return
    raise DataError(missing_message(cfg.name, cfg.root, missing, bool(cfg.download), failures))


def _mnistm_cache_complete(cfg) -> bool:
    """Both built MNIST-M splits are cached: the BSDS500 photos are not needed (the cache's
    contents are checked against MNIST when loaded; a bad cache asks for the photos then)."""
    cache, seed = Path(cfg.get("cache_root") or cfg.root) / "mnist_m_built", cfg.build_seed
    recipe = cfg.get("mnistm_recipe", "mask")
    return all((cache / f"{s}_{recipe}_seed{seed}.pt").is_file() for s in ("train", "test"))


def _missing_released_mnistm(mnistm_dir) -> Missing | None:
    """data.mnistm=released: the archive's label files and image folders (no download)."""
    base = Path(mnistm_dir) / "mnist_m"
    needed = [f"mnist_m_{s}{tail}" for s in ("train", "test") for tail in ("_labels.txt", "")]
    missing = [n if n.endswith(".txt") else n + "/" for n in needed if not (base / n).exists()]
    if not missing:
        return None
    return Missing("Released MNIST-M files (data.mnistm=released)", base, missing, len(needed),
                   "unpack the released MNIST-M archive so that data.mnistm_dir holds mnist_m/, "
                   "or build it from MNIST and BSDS500 with data.mnistm=build.")


def _mnist_mnistm(cfg) -> DomainPair:
    require_files(cfg)
    mnist = {s: load_mnist(cfg.root, s, cfg.download) for s in ("train", "test")}
    if cfg.mnistm == "build":
        mnistm = {s: build_mnistm(cfg.root, s, mnist[s], cfg.build_seed, cfg.cache_root,
                                  cfg.download, recipe=cfg.get("mnistm_recipe", "mask"))
                  for s in mnist}
    else:
        mnistm = {s: load_mnistm_folder(cfg.mnistm_dir, s) for s in ("train", "test")}
    source = {s: Split(mnist_to_rgb32(mnist[s].images), mnist[s].labels) for s in mnist}
    return DomainPair(source["train"], mnistm["train"].images, source["test"], mnistm["test"],
                      10, mnistm["train"].labels, DIGIT_NAMES, cfg.get("normalize", "global"))


def _mnist01_23(cfg) -> DomainPair:
    """MNIST 0/1 -> MNIST 2/3 (2 -> 0, 3 -> 1): single-channel 28x28, 2 classes."""
    require_files(cfg)
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
