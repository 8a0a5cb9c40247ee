"""Config schemas of the data families, one dataclass each (``data_schema/<name>``).

Each ``conf/data/<x>.yaml`` starts ``defaults: [/data_schema/<schema>@_here_, _self_]``, so a key
that the chosen dataset would ignore (``data.mnistm`` on a folder pair) is rejected by Hydra,
with its name. Value ranges that types cannot express are each family's own ``rules``
(``{key: (check, allowed)}``, keys relative to ``data.``, as a method's), checked once, for
the chosen family only: ``data.normalize=imagenet`` is refused on a digit pair with the digit
pairs' own list of values, not accepted because a folder pair would take it.

Caches (the built MNIST-M, the decoded-image cache of folder pairs) live under
``data.cache_root``; ``null`` (the default) is the per-user cache directory of
:func:`default_cache_root`, never the data folder (which may be shared or read-only).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from omegaconf import MISSING, OmegaConf

from ..errors import WHOLE_NONNEG, ConfigError, Rule, one_of

#: Environment variable naming the cache directory (else $XDG_CACHE_HOME/da-train, else
#: ~/.cache/da-train).
CACHE_ENV = "DA_CACHE_DIR"


def default_cache_root() -> Path:
    """Where caches go when ``data.cache_root`` is null: ``$DA_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/da-train``, else ``~/.cache/da-train`` (absolute)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or Path("~/.cache").expanduser()
    return (Path(base).expanduser() / "da-train").resolve()


def cache_root(value) -> Path:
    """``data.cache_root`` as an absolute path (null or empty: :func:`default_cache_root`)."""
    if value is None or str(value).strip() in ("", "null", "None"):
        return default_cache_root()
    return Path(str(value)).expanduser().resolve()


_SOURCE_VAL: Rule = (lambda v: 0 <= v < 1,
                     "a fraction of the source training set in [0, 1) (0: none held out)")
_LIMIT: Rule = (WHOLE_NONNEG[0], "a whole number >= 0 (0: the whole training split)")


@dataclass
class PairConfig:
    """What every data family has: its name and the held-out source validation split."""

    name: str = MISSING
    # share of the source training set held out for validators (data/source_val.py); 0: none
    source_val: float = 0.0
    rules: ClassVar[dict[str, Rule]] = {"source_val": _SOURCE_VAL}
    #: in messages: which pairs the family's rules apply to
    family: ClassVar[str] = "this data family"


@dataclass
class Mnist0123Config(PairConfig):
    """``mnist01_23``: MNIST files only."""

    root: str = "data"
    download: bool = True
    normalize: str = "global"
    rules: ClassVar[dict[str, Rule]] = {**PairConfig.rules,
                                        "normalize": one_of("global", "instance")}
    family: ClassVar[str] = "the digit pairs"


@dataclass
class MnistmKeys:
    """How an MNIST-M domain is made; only the families that can hold MNIST-M have these."""

    mnistm: str = "build"
    mnistm_recipe: str = "mask"
    mnistm_dir: str = "data"
    # the built MNIST-M is cached in <cache_root>/mnist_m_built/ (null: default_cache_root)
    cache_root: Optional[str] = None
    build_seed: int = 0
    rules: ClassVar[dict[str, Rule]] = {"mnistm": one_of("released", "build"),
                                        "mnistm_recipe": one_of("mask", "absdiff")}


@dataclass
class MnistMnistmConfig(MnistmKeys, Mnist0123Config):
    """``mnist_mnistm``: MNIST -> MNIST-M (the digit pair builder with fixed domains)."""

    rules: ClassVar[dict[str, Rule]] = {**Mnist0123Config.rules, **MnistmKeys.rules}


@dataclass
class DigitDomainConfig:
    name: str = MISSING
    # Train-split sample size drawn with data.limit_seed (0: the whole split); ADDA's
    # MNIST <-> USPS protocol uses 2,000 MNIST and 1,800 USPS images.
    limit: int = 0


@dataclass
class DigitPairConfig(Mnist0123Config):
    """Two digit domains without MNIST-M (``mnist_usps``, ``usps_mnist``, ``svhn_mnist``)."""

    name: str = "digits"
    source: DigitDomainConfig = field(default_factory=DigitDomainConfig)
    target: DigitDomainConfig = field(default_factory=DigitDomainConfig)
    limit_seed: int = 0
    # Common input: 0 = automatic (28 x 28 grey for two grey domains, else 32 x 32 RGB).
    size: int = 0
    channels: int = 0
    # How a 16x16 USPS digit (it fills its frame) reaches the common size: resize (bilinear
    # to size x size, ADDA's) or pad (resized to the MNIST digit box, 20/28 of the frame, then
    # zero-padded: a USPS digit then has MNIST's margins and scale). docs/results-notes.md.
    usps_frame: str = "resize"
    rules: ClassVar[dict[str, Rule]] = {
        **Mnist0123Config.rules, "source.limit": _LIMIT, "target.limit": _LIMIT,
        "usps_frame": one_of("resize", "pad"),
        "size": (lambda v: v == 0 or v >= 8, "0 (automatic) or a size >= 8 pixels"),
        "channels": (lambda v: v in (0, 1, 3), "0 (automatic), 1 or 3")}


@dataclass
class DigitsConfig(MnistmKeys, DigitPairConfig):
    """``digits``: any two of mnist, mnistm, usps, svhn (``data.source.name`` ->
    ``data.target.name``), with the MNIST-M keys for an ``mnistm`` domain."""

    rules: ClassVar[dict[str, Rule]] = {**DigitPairConfig.rules, **MnistmKeys.rules}


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
    # Decoded once into <cache_root>/image_cache/ (null: default_cache_root) at cache_size x
    # cache_size (shorter side resized, centre crop; smaller images at their own size); the
    # network sees image_size crops. cache_size null: follows image_size (see folders.py).
    cache_root: Optional[str] = None
    cache_size: Optional[int] = None
    image_size: int = 224
    workers: int = 0
    on_error: str = "raise"
    # imagenet: ImageNet mean/std (what pretrained torchvision backbones expect); global:
    # x / 127.5 - 1.
    normalize: str = "imagenet"
    rules: ClassVar[dict[str, Rule]] = {
        **PairConfig.rules,
        "test": one_of("fraction", "separate", "transductive"),
        "test_fraction": (lambda v: 0 < v < 1, "a fraction in (0, 1)"),
        "cache_size": (lambda v: v >= 8, "a size >= 8 pixels, or null (follows image_size)"),
        "image_size": (lambda v: v >= 8, "a size >= 8 pixels"),
        "workers": (WHOLE_NONNEG[0], "a whole number >= 0 (0: one per CPU core)"),
        "on_error": (lambda v: v in ("raise", "skip"),
                     "raise (stop, naming the unreadable image) or skip (leave it out, listed "
                     "in cli.log and results.json)"),
        "normalize": one_of("imagenet", "global")}
    family: ClassVar[str] = "data=folders"


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
    rules: ClassVar[dict[str, Rule]] = {**PairConfig.rules,
                                        "normalize": one_of("feature", "sample", "none")}
    family: ClassVar[str] = "data=arrays"


#: Schema name (``data_schema/<name>``) -> dataclass.
SCHEMAS: dict[str, type] = {
    "mnist01_23": Mnist0123Config, "mnist_mnistm": MnistMnistmConfig,
    "digit_pair": DigitPairConfig, "digits": DigitsConfig,
    "folders": FoldersConfig, "arrays": ArraysConfig,
}

#: ``data.name`` -> its family's schema (for a data node composed without one).
PAIR_SCHEMAS: dict[str, type] = {
    "mnist01_23": Mnist0123Config, "mnist_mnistm": MnistMnistmConfig,
    "mnist_usps": DigitPairConfig, "usps_mnist": DigitPairConfig,
    "svhn_mnist": DigitPairConfig, "digits": DigitsConfig,
    "folders": FoldersConfig, "arrays": ArraysConfig,
}


def schema_of(data) -> type | None:
    """The schema dataclass of a ``data`` config node: its structured type, else by name."""
    kind = OmegaConf.get_type(data) if OmegaConf.is_config(data) else None
    if isinstance(kind, type) and issubclass(kind, PairConfig):
        return kind
    name = data.get("name") if hasattr(data, "get") else None
    return PAIR_SCHEMAS.get(name)


def check_family_values(data: Any) -> bool:
    """Check ``data``'s values against its own family's rules; raise one ConfigError naming
    the key, the value, the family and its allowed values. True when all pass."""
    schema = schema_of(data)
    if schema is None:
        return True
    for key, (ok, allowed) in schema.rules.items():
        value = OmegaConf.select(data, key) if OmegaConf.is_config(data) else None
        if value is not None and not ok(value):
            raise ConfigError(
                f"Invalid config value data.{key}={value!r}: for data={data.get('name')} "
                f"({schema.family}) it must be {allowed}. Fix it on the command line, e.g. "
                f"`da-train data={data.get('name')} data.{key}=<value>`.")
    return True


# Checked by config.validate, in the ``(key, check, allowed)`` form of ``config.RULES``: the
# one rule hands the whole data node to the chosen family's rules (check_family_values
# raises its own message, naming the family), so each value is checked once, per family.
DATA_RULES = {"data": (check_family_values, "valid for its data family")}
