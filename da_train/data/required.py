"""Which files a digit pair needs, and one error that lists every missing one (with the
download done first when ``data.download`` allows it). Used by the pair builders
(:mod:`.digits`, :mod:`.pairs`); imports neither, so the data package has no import circle."""

from __future__ import annotations

from pathlib import Path

from .bsds import missing_bsds
from .core import DataError
from .download import Missing, fetch_missing, missing_message
from .mnist import missing_mnist
from .schemas import cache_root


def missing_files(cfg, domains: tuple[str, ...] | None = None) -> list[Missing]:
    """Every file of the MNIST family that the pair needs and that is not on disk, grouped by
    dataset (``domains``: the digit domains of the pair; default: from ``data.name``).

    Checked before anything is downloaded or built, so one message can name them all (not one
    per round of "fix it and run again").
    """
    if domains is None:
        domains = ("mnist", "mnistm") if cfg.name == "mnist_mnistm" else ("mnist",)
    build = "mnistm" in domains and cfg.get("mnistm", "build") == "build"
    groups = []
    if "mnist" in domains or build:
        groups.append(missing_mnist(cfg.root))
    if "mnistm" in domains and not build:
        groups.append(_missing_released_mnistm(cfg.get("mnistm_dir") or cfg.root))
    elif build and not _mnistm_cache_complete(cfg):
        groups.append(missing_bsds(cfg.root))
    return [g for g in groups if g is not None]


def require_files(cfg, domains: tuple[str, ...] | None = None) -> None:
    """Download what is missing (when ``data.download``), then raise ONE DataError listing every
    file still missing, with both ways forward (download with network, or the offline copy)."""
    missing = missing_files(cfg, domains)
    if not missing:
        return
    failures = []
    if cfg.download:
        failures = fetch_missing(missing)
        missing = missing_files(cfg, domains)
        if not missing:
            return
    caches = cache_root(cfg.get("cache_root")) if "mnistm" in (domains or ("mnistm",)) and \
        "cache_root" in cfg else None
    raise DataError(missing_message(cfg.name, cfg.root, missing, bool(cfg.download), failures,
                                    caches))


def _mnistm_cache_complete(cfg) -> bool:
    """Both built MNIST-M splits are cached: the BSDS500 photos are not needed (the cache's
    contents are checked against MNIST when loaded; a bad cache asks for the photos then)."""
    cache, seed = cache_root(cfg.get("cache_root")) / "mnist_m_built", cfg.get("build_seed", 0)
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
