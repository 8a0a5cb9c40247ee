"""The checkpoint (``checkpoint.pt``): everything a run needs to continue bit for bit.

This module owns the checkpoint's format, both ways: :func:`checkpoint_state` builds the
dict :func:`save_checkpoint` writes, :func:`load_checkpoint` puts it back into a trainer.
Both take the :class:`~da_train.trainer.Trainer` (they read and set its ``method``,
``optimizers``, ``schedulers``, ``step``, ``phase_index``, samplers, ``last_eval``, its
``evaluator``'s results and its wall time); the trainer decides when to save.

Format 2 holds tensors and plain containers only, so it loads with ``weights_only=True``:

- ``method``: the method's state dict (model, heads, buffers such as pseudo-labels);
- ``optimizers`` / ``schedulers``: the current phase's, by optimiser name
  (``Method.optimizers_for``: an update's name unless the method shares optimisers);
  ``phase_index``;
- ``step``; ``samplers``: ``{"source": ..., "target": ...}`` (a few integers each);
- ``rng``: the Python, NumPy, torch and CUDA random states
  (:func:`da_train.runtime.rng_state`);
- ``last_eval``, ``last_selection``, ``target_confusion``, ``eval_seconds``: the last
  evaluation (so a run resumed at its last step still writes complete results);
- ``wall_seconds``: wall time of the run so far; ``config``: the resolved config.

``last_selection``, ``target_confusion`` and ``wall_seconds`` are optional when loading
(older checkpoints lack them).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from .errors import ConfigError
from .runfiles import CHECKPOINT
from .runtime import atomic_torch_save, read_checkpoint, rng_state, set_rng_state

FORMAT = 2


def checkpoint_state(trainer) -> dict:
    """The checkpoint of ``trainer`` as it stands between two steps."""
    evaluator = trainer.evaluator
    return {
        "format": FORMAT,
        "method": trainer.method.state_dict(),
        "optimizers": {k: o.state_dict() for k, o in trainer.optimizers.items()},
        "schedulers": {k: s.state_dict() for k, s in trainer.schedulers.items()},
        "step": trainer.step,
        "phase_index": trainer.phase_index,
        "samplers": {"source": trainer.source_sampler.state_dict(),
                     "target": trainer.target_sampler.state_dict()},
        "rng": rng_state(),
        "last_eval": trainer.last_eval,
        "last_selection": evaluator.last_selection,
        "target_confusion": evaluator.target_confusion,
        "eval_seconds": evaluator.eval_seconds,
        "wall_seconds": trainer.wall_seconds(),
        "config": OmegaConf.to_container(trainer.cfg, resolve=True),
    }


def save_checkpoint(trainer) -> None:
    """Write ``checkpoint.pt`` into the run folder (atomically: a crash keeps the old one)."""
    atomic_torch_save(checkpoint_state(trainer), trainer.run_dir / CHECKPOINT)


def load_checkpoint(trainer, path: Path) -> None:
    """Restore everything a checkpoint holds into ``trainer``, so the run continues bit for
    bit: the optimisers of the saved phase are rebuilt (without the phase's start hook) and
    loaded; TensorBoard purges the events after the saved step."""
    state = read_checkpoint(path, map_location=trainer.device)
    trainer.method.load_state_dict(state["method"])
    trainer.step = state["step"]
    trainer.build_optimizers(state["phase_index"], fresh=False)
    if set(trainer.optimizers) != set(state["optimizers"]):
        raise ConfigError(
            f"{path} holds the optimisers {sorted(state['optimizers'])}, but this version of "
            f"da-train builds {sorted(trainer.optimizers)} for this method and phase: the "
            "checkpoint was written by another version (e.g. MCD, whose optimisers became one "
            "per network). Start the run afresh (a new run folder), or resume it with the "
            "da-train version that wrote it.")
    for key, opt in trainer.optimizers.items():
        opt.load_state_dict(state["optimizers"][key])
        trainer.schedulers[key].load_state_dict(state["schedulers"][key])
    trainer.source_sampler.load_state_dict(state["samplers"]["source"])
    trainer.target_sampler.load_state_dict(state["samplers"]["target"])
    set_rng_state(state["rng"])
    trainer.last_eval = state["last_eval"]
    evaluator = trainer.evaluator
    evaluator.last_selection = state.get("last_selection", {})
    evaluator.target_confusion = state.get("target_confusion")
    evaluator.eval_seconds = state["eval_seconds"]
    trainer.earlier_wall = state.get("wall_seconds", 0.0)
    trainer.purge_step = trainer.step + 1
