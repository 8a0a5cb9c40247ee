"""Method registry: ``method.name`` -> class. Add a method by adding a module and a line here,
a schema in ``da_train/config.py`` and a YAML file in ``conf/method/``."""

from ..config import ConfigError
from .adda import ADDA
from .base import Batch, Method, Phase, StepOutput
from .dann import DANN
from .dann_ent import DannEntropy
from .dann_pl import DannPseudoLabel
from .ddc import DDC
from .self_training import SelfTraining
from .source_only import SourceOnly
from .target_only import TargetOnly

METHODS: dict[str, type[Method]] = {
    "source_only": SourceOnly,
    "target_only": TargetOnly,
    "dann": DANN,
    "dann_ent": DannEntropy,
    "dann_pl": DannPseudoLabel,
    "ddc": DDC,
    "adda": ADDA,
    "self_training": SelfTraining,
}


def build_method(cfg, backbone) -> Method:
    if cfg.name not in METHODS:
        raise ConfigError(f"Unknown method {cfg.name!r}; choices: {', '.join(METHODS)}.")
    return METHODS[cfg.name](cfg, backbone)


__all__ = ["METHODS", "Batch", "Method", "Phase", "StepOutput", "build_method"]
