"""Which overrides make a run a *variant*: the key that puts runs in the same table row.

Runs of one method and data that differ only by seed and bookkeeping (paths, device, threads,
resume, ``hydra.*``) are one configuration; the remaining overrides, sorted, are its
``variant``.
"""

from __future__ import annotations

from ..errors import override_key

# Override keys that do not change what is trained: grouping ignores them.
BOOKKEEPING_KEYS = {
    "seed", "method", "data", "data.root", "data.cache_root", "data.mnistm_dir",
    "data.download", "trainer.device", "trainer.resume",
    # how many CPU threads ran it: like the device, it moves only float rounding
    "trainer.threads",
}


def is_hydra_override(override: str) -> bool:
    """hydra.* overrides set output folders and launchers, not the experiment."""
    key = override_key(override)
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


def is_bookkeeping(override: str) -> bool:
    """Seed, method/data choice, paths, device and hydra.* keys do not define a variant."""
    return override_key(override) in BOOKKEEPING_KEYS or is_hydra_override(override)


def variant_of(overrides: list[str]) -> str:
    """The overrides that make this run differ from others of the same method and data."""
    return " ".join(sorted(o for o in overrides if not is_bookkeeping(o)))
