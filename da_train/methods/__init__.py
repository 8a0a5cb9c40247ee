"""The method registry, discovered: every module here (except ``base``) that defines one
:class:`Method` subclass is the method named after the module (``dann.py`` -> ``method=dann``).
"""

from __future__ import annotations

import importlib
import pkgutil

from ..config import ConfigError
from .base import Batch, Method, Phase, StepOutput


def _discover() -> dict[str, type[Method]]:
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        classes = [obj for obj in vars(module).values()
                   if isinstance(obj, type) and issubclass(obj, Method)
                   and obj.__module__ == module.__name__]
        if len(classes) != 1:
            raise ImportError(f"da_train/methods/{info.name}.py must define exactly one Method "
                              f"subclass (found {len(classes)}): the module is the method.")
        found[info.name] = classes[0]
    return found


METHODS: dict[str, type[Method]] = _discover()


def build_method(cfg, backbone) -> Method:
    """The method ``cfg.name`` around ``backbone``."""
    if cfg.name not in METHODS:
        raise ConfigError(f"Unknown method {cfg.name!r}; choices: {', '.join(METHODS)}.")
    return METHODS[cfg.name](cfg, backbone)


__all__ = ["METHODS", "Batch", "Method", "Phase", "StepOutput", "build_method"]
