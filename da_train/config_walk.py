"""Walks over the config schema: every dotted key a run can take, and the checks of
command-line keys against them ("Did you mean trainer.steps?").

The top-level schema (:class:`da_train.config.Config`) types ``method``, ``data`` and
``backbone`` as ``Any``: each choice has its own schema (a method's ``Config``, a data
family's in :mod:`da_train.data.schemas`, a backbone's in :mod:`da_train.models`). Before a
config is composed, a key is known when any of them has it (:func:`check_override_keys`);
after, a ``+`` key must belong to the chosen one (:func:`check_added_keys`).
"""

from __future__ import annotations

import dataclasses
import difflib

from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError, override_key

#: Config groups (key=choice), not keys.
GROUPS = ("method", "data", "backbone", "optim", "trainer", "experiment", "protocol")


def choice_schemas() -> dict[str, list[type]]:
    """The schemas a group typed ``Any`` can take: every method's, data family's, backbone's."""
    from .data.schemas import SCHEMAS as DATA_SCHEMAS
    from .methods import METHODS
    from .models import BACKBONE_SCHEMAS

    return {"method": [m.Config for m in METHODS.values()],
            "data": list(DATA_SCHEMAS.values()), "backbone": list(BACKBONE_SCHEMAS.values())}


def schema_keys(node, prefix: str = "") -> set[str]:
    """Dotted keys of a schema dataclass; a group typed Any gets the keys of all its schemas."""
    keys = set()
    choices = choice_schemas() if not prefix else {}
    for f in dataclasses.fields(node):
        key = f"{prefix}{f.name}"
        inner = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if key in choices:
            for schema in choices[key]:
                keys |= schema_keys(schema, f"{key}.")
        elif dataclasses.is_dataclass(inner):
            keys |= schema_keys(type(inner), f"{key}.")
        else:
            keys.add(key)
    return keys


def unknown_key_message(text: str, key: str, known) -> str:
    """One paragraph for a key no schema has, with the closest known key."""
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.5)
    hint = f"Did you mean {close[0]}? " if close else ""
    return (f"unknown config key in `{text}`: no schema has {key}, so the value would be "
            f"ignored. {hint}`da-train --cfg job` prints every key with its value "
            "(`da-train method=<name> --cfg job` for a method's own keys); `da-train --help` "
            "lists the groups.")


def check_override_keys(overrides: list[str]) -> None:
    """Reject command-line keys no schema knows, with or without ``+`` (Hydra would only
    reject those without, and then advise adding ``+``, which silently adds a stray key)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    from .config import Config

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException:
        return  # Hydra reports the syntax error itself
    known = schema_keys(Config)
    for override in parsed:
        key = override.key_or_group
        if override.is_delete() or key.startswith("hydra") or key in GROUPS \
                or key in known or any(key.startswith(k + ".") for k in known):
            continue
        raise ConfigError(unknown_key_message(override.input_line, key, known))


def check_added_keys(cfg: DictConfig, overrides: list[str]) -> None:
    """``+method.kernel=...`` with a method that has no kernel (or a data/backbone key the
    chosen family lacks): the chosen schema decides (check_override_keys only knew the keys
    of all methods, data families and backbones together)."""
    for text in overrides:
        key = override_key(text)
        group = key.split(".", 1)[0]
        if not text.startswith("+") or group not in ("method", "data", "backbone"):
            continue
        schema = OmegaConf.get_type(cfg[group])
        if not dataclasses.is_dataclass(schema):
            continue
        own = schema_keys(schema, f"{group}.")
        if key not in own:
            raise ConfigError(unknown_key_message(text, key, own))
