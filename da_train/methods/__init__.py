"""Method registry: ``method.name`` -> class. Add a method by adding a module and a line here
(and a YAML file in conf/method/)."""

from ..config import ConfigError
from .base import Method, StepOutput
from .dann import DANN
from .source_only import SourceOnly

METHODS: dict[str, type[Method]] = {"source_only": SourceOnly, "dann": DANN}


def build_method(cfg, backbone) -> Method:
    if cfg.name not in METHODS:
        raise ConfigError(f"Unknown method {cfg.name!r}; choices: {', '.join(METHODS)}.")
    return METHODS[cfg.name](cfg, backbone)


__all__ = ["METHODS", "Method", "StepOutput", "build_method"]
