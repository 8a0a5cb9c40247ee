"""Config schemas of the data families, one dataclass each (``data_schema/<name>``).

Each ``conf/data/<x>.yaml`` starts ``defaults: [/data_schema/<schema>@_here_, _self_]``, so a key
that the chosen dataset would ignore (``data.mnistm`` on a folder pair) is rejected by Hydra,
with its name. :data:`DATA_RULES` holds the value ranges that types cannot express, in the
``(key, check, allowed)`` form of ``config.RULES``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING


@dataclass
class PairConfig:
    """What every data family has: its name and the held-out source validation split."""

    name: str = MISSING
    # share of the source training set held out for validators (data/source_val.py); 0: none
    source_val: float = 0.0


@dataclass
class Mnist0123Config(PairConfig):
    """``mnist01_23``: MNIST files only."""

    root: str = "data"
    download: bool = True
    normalize: str = "global"


@dataclass
class MnistMnistmConfig(Mnist0123Config):
    """``mnist_mnistm`` (and, through :class:`DigitsConfig`, any digit pair): MNIST-M keys."""

    mnistm: str = "build"
    mnistm_recipe: str = "mask"
    mnistm_dir: str = "data"
    cache_root: str = "data"
    build_seed: int = 0


@dataclass
class DigitDomainConfig:
    name: str = MISSING
    # Train-split sample size drawn with data.limit_seed (0: the whole split); ADDA's
    # MNIST <-> USPS protocol uses 2,000 MNIST and 1,800 USPS images.
    limit: int = 0


@dataclass
class DigitsConfig(MnistMnistmConfig):
    """Any two of mnist, mnistm, usps, svhn (``data.source.name`` -> ``data.target.name``)."""

    name: str = "digits"
    source: DigitDomainConfig = field(default_factory=DigitDomainConfig)
    target: DigitDomainConfig = field(default_factory=DigitDomainConfig)
    limit_seed: int = 0
    # Common input: 0 = automatic (28 x 28 grey for two grey domains, else 32 x 32 RGB).
    size: int = 0
    channels: int = 0


@dataclass
class FolderDomainConfig:
    # Exactly one of root (ImageFolder layout <root>/<class>/<image>) and list (lines
    # "<path> <label>"; relative paths are read from list_root, else the list's folder).
    root: Optional[str] = None
    list: Optional[str] = None
    list_root: Optional[str] = None
    # With data.test=separate: the test images, as a folder or a list.
    test_root: Optional[str] = None
    test_list: Optional[str] = None


@dataclass
class FoldersConfig(PairConfig):
    """Your own images: two folders or image lists over the same classes."""

    name: str = "folders"
    source: FolderDomainConfig = field(default_factory=FolderDomainConfig)
    target: FolderDomainConfig = field(default_factory=FolderDomainConfig)
    # Test splits: fraction (a seeded data.test_fraction of each domain is held out),
    # separate (test_root / test_list per domain), transductive (the target training images
    # are the target test set and the source training images the source test set, Office-31).
    test: str = "fraction"
    test_fraction: float = 0.2
    split_seed: int = 0
    # Decoded once into <cache_root>/image_cache/ at cache_size x cache_size (shorter side
    # resized, centre crop); the network sees image_size crops.
    cache_root: str = "data"
    cache_size: int = 256
    image_size: int = 224
    workers: int = 0
    on_error: str = "raise"
    # imagenet: ImageNet mean/std (what pretrained torchvision backbones expect); global:
    # x / 127.5 - 1.
    normalize: str = "imagenet"


@dataclass
class ArrayDomainConfig:
    # A .npz with x_train, y_train, x_test, y_test (optional class_names).
    path: str = MISSING


@dataclass
class ArraysConfig(PairConfig):
    """Your own arrays: vectors, C x L signals or C x H x W images in .npz files."""

    name: str = "arrays"
    source: ArrayDomainConfig = field(default_factory=ArrayDomainConfig)
    target: ArrayDomainConfig = field(default_factory=ArrayDomainConfig)
    # none; feature: standardise each feature with source-train mean/std; sample: standardise
    # each sample over all its values.
    normalize: str = "feature"


SCHEMAS: dict[str, type] = {
    "mnist01_23": Mnist0123Config, "mnist_mnistm": MnistMnistmConfig, "digits": DigitsConfig,
    "folders": FoldersConfig, "arrays": ArraysConfig,
}


WHOLE_NONNEG = (lambda v: v >= 0, "a whole number >= 0")

DATA_RULES = {  # key -> (check, allowed), as config.RULES
    "data.source_val": (lambda v: 0 <= v < 1,
                        "a fraction of the source training set in [0, 1) (0: none held out)"),
    "data.mnistm": (lambda v: v in ("released", "build"), "released or build"),
    "data.mnistm_recipe": (lambda v: v in ("mask", "absdiff"), "mask or absdiff"),
    "data.source.limit": (WHOLE_NONNEG[0], "a whole number >= 0 (0: the whole training split)"),
    "data.target.limit": (WHOLE_NONNEG[0], "a whole number >= 0 (0: the whole training split)"),
    "data.size": (lambda v: v == 0 or v >= 8, "0 (automatic) or a size >= 8 pixels"),
    "data.channels": (lambda v: v in (0, 1, 3), "0 (automatic), 1 or 3"),
    "data.test": (lambda v: v in ("fraction", "separate", "transductive"),
                  "fraction, separate or transductive"),
    "data.test_fraction": (lambda v: 0 < v < 1, "a fraction in (0, 1)"),
    "data.cache_size": (lambda v: v >= 8, "a size >= 8 pixels"),
    "data.image_size": (lambda v: v >= 8, "a size >= 8 pixels"),
    "data.workers": (WHOLE_NONNEG[0], "a whole number >= 0 (0: one per CPU core)"),
    "data.on_error": (lambda v: v in ("raise", "skip"),
                      "raise (stop, naming the unreadable image) or skip (leave it out with a "
                      "warning)"),
    "data.normalize": (lambda v: v in ("global", "instance", "imagenet", "none", "feature",
                                       "sample"),
                       "global or instance (digits), imagenet or global (folders), none, "
                       "feature or sample (arrays)"),
}
