"""The ground floor: the user-error types and the value-rule vocabulary.

Every other module of da-train may import this one; it imports nothing of the project, so no
import circle can pass through it. A user's mistake raises :class:`ConfigError` (a config value)
or :class:`DataError` (data files); the command line turns either into one paragraph on stderr
and exit code 2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class ConfigError(ValueError):
    """A config value is impossible; the message names the key, the value and the fix."""


class DataError(RuntimeError):
    """Missing or malformed data files; the message says which and how to fix it."""


def override_key(override: str) -> str:
    """The config key of a command-line override: ``+trainer.steps=5`` -> ``trainer.steps``."""
    return override.split("=", 1)[0].lstrip("+~")


# ---------------------------------------------------------------------------- rules
#: A value rule: (check, the allowed values in words). Checked once, by config.validate.
Rule = tuple[Callable[[Any], bool], str]

POSITIVE: Rule = (lambda v: v > 0, "a number > 0")
NONNEG: Rule = (lambda v: v >= 0, "a number >= 0")
PROBABILITY: Rule = (lambda v: 0 <= v <= 1, "a number in [0, 1]")
BETA: Rule = (lambda v: 0 <= v < 1, "a number in [0, 1)")
WHOLE_POSITIVE: Rule = (lambda v: v > 0, "a whole number > 0")
WHOLE_NONNEG: Rule = (lambda v: v >= 0, "a whole number >= 0")


def one_of(*choices: str) -> Rule:
    """The value must be one of ``choices``."""
    return (lambda v: v in choices, " or ".join(choices))
