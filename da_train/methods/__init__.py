"""The method registry, discovered.

- Every module here (except ``base``) that defines one :class:`Method` subclass is the method
  named after the module (``dann.py`` -> ``method=dann``): a genuinely new training rule.
- Every ``conf/method/<name>.yaml`` with a ``core:`` key is a *preset*: a configuration of a
  core method, usually with built-in regularisers (``method=vada`` is ``core: dann`` with the
  entropy and VAT terms). A preset has the core's schema, its own name in results, and no
  module.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from ..errors import ConfigError
from .base import Batch, Method, MethodConfig, Phase, StepOutput, TargetView

METHOD_CONF = Path(__file__).resolve().parents[1] / "conf" / "method"


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


def _discover_presets(methods: dict[str, type[Method]]) -> dict[str, str]:
    """{preset name: core method} from the ``core:`` line of each preset YAML."""
    presets = {}
    for path in sorted(METHOD_CONF.glob("*.yaml")):
        core = next((line.split(":", 1)[1].strip() for line in path.read_text().splitlines()
                     if line.startswith("core:")), None)
        if core is None or path.stem in methods:
            continue
        if core not in methods:
            raise ImportError(f"conf/method/{path.name}: core {core!r} is not a method module "
                              f"(choices: {', '.join(methods)}).")
        presets[path.stem] = core
    return presets


#: Method modules by name.
METHODS: dict[str, type[Method]] = _discover()
#: Presets by name -> the method module they configure.
PRESETS: dict[str, str] = _discover_presets(METHODS)
#: Every ``method=`` choice -> the method module that trains it.
CHOICES: dict[str, str] = {**{name: name for name in METHODS}, **PRESETS}

#: Keys of the former method modules that became presets in 0.2, old -> new (relative to
#: ``method.``): accepted for one release with a deprecation message (config.migrate).
PRESET_RENAMED: dict[str, dict[str, str]] = {
    "dann_ent": {"ent_weight": "reg.entropy.weight"},
    "dann_pl": {"ent_weight": "reg.entropy.weight", "pl_weight": "reg.pl.weight",
                "threshold": "reg.pl.threshold", "pl_start": "reg.pl.start"},
    "vada": {"ent_weight": "reg.entropy.weight", "vat_target": "reg.vat.weight",
             "vat_source": "reg.vat.source_weight", "eps": "reg.vat.eps", "xi": "reg.vat.xi"},
    "mcc": {"weight": "reg.mcc.weight", "temperature": "reg.mcc.temperature"},
    "bnm": {"weight": "reg.bnm.weight"},
}


def core_of(name: str) -> type[Method]:
    """The Method class that trains ``method=name``."""
    if name not in CHOICES:
        raise ConfigError(f"Unknown method {name!r}; choices: {', '.join(sorted(CHOICES))}.")
    return METHODS[CHOICES[name]]


def renamed_keys(name: str) -> dict[str, str]:
    """Old -> new keys (relative to ``method.``) that ``method=name`` still accepts."""
    if name not in CHOICES:
        return {}
    return {**core_of(name).Config.renamed, **PRESET_RENAMED.get(name, {})}


def build_method(cfg, backbone, num_classes: int) -> Method:
    """The method ``cfg.name`` (a module or a preset) around ``backbone``, for
    ``num_classes`` classes."""
    return core_of(cfg.name)(cfg, backbone, num_classes)


__all__ = ["CHOICES", "METHODS", "PRESETS", "Batch", "Method", "MethodConfig", "Phase",
           "StepOutput", "TargetView", "build_method", "core_of", "renamed_keys"]
