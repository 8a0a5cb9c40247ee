"""The ``da-train`` command: compose the Hydra config, validate it, load data, train.

Exit codes (see README "When things go wrong"):

- 0: finished (for a sweep: every job finished);
- 2: a problem the user can fix: a config Hydra rejects (unknown key, wrong type, unknown
  choice), an impossible value, missing or broken data files, a NaN loss; one paragraph on
  stderr, no stack trace unless ``HYDRA_FULL_ERROR=1``; in a sweep, 2 when any job failed
  (the other jobs still ran);
- 130 / 143: stopped by SIGINT / SIGTERM after saving a checkpoint;
- 1: a bug in da-train (the stack trace is kept).

Every job writes ``status.json`` (running / completed / failed / interrupted).
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .config import ConfigError, override_key, register_schema, validate
from .data import DataError, load_pair
from .methods import METHODS, build_method
from .models import build_backbone
from .runtime import (
    flatten,
    pick_device,
    read_checkpoint,
    seed_everything,
    write_json,
)
from .trainer import CHECKPOINT, NonFiniteLossError, RunInterrupted, Trainer

register_schema()

# Only errors a user can fix are shortened to one message; a bug keeps its stack trace.
USER_ERRORS = (ConfigError, DataError, NonFiniteLossError)

# What happened in this process: lets main() tell Hydra's own rejections (before any job
# started) from failures inside jobs, and report a sweep's failed jobs at the end.
_STATE: dict = {"jobs_started": 0, "failed": []}

#: Keys a resumed run may change (where it runs, not what it computes).
RESUME_MAY_CHANGE = ("trainer.device", "trainer.resume", "trainer.log_every",
                     "trainer.ckpt_every")


# ---------------------------------------------------------------------------- resume
def _resume_target(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The run folder to continue, or None. ``true`` means this run's own folder."""
    value = cfg.trainer.resume
    text = str(value).strip().lower()
    if value is None or value is False or text in ("false", "no", "0", "", "none", "null"):
        return None
    target = run_dir if value is True or text in ("true", "yes", "1") else Path(str(value))
    if target.is_file():
        target = target.parent
    if not (target / CHECKPOINT).is_file():
        hint = ("trainer.resume=true continues the run in the folder given by hydra.run.dir "
                "(add hydra.run.dir=<run folder>)" if target == run_dir else
                "pass the folder of the run to continue, e.g. "
                "trainer.resume=outputs/runs/<date>/<time>_<method>_<data>")
        raise ConfigError(f"trainer.resume={value}: there is no {CHECKPOINT} in {target}; {hint}. "
                          "A run writes its checkpoint every trainer.ckpt_every steps.")
    return target


def _resumed_config(cfg: DictConfig, target: Path, overrides: list[str]) -> DictConfig:
    """The interrupted run's own config; only device/logging keys given on the command line
    (``RESUME_MAY_CHANGE``) replace the saved values."""
    saved = read_checkpoint(target / CHECKPOINT)["config"]
    resumed = OmegaConf.create(saved)
    given = {override_key(o) for o in overrides}
    for key in RESUME_MAY_CHANGE:
        if key in given:
            OmegaConf.update(resumed, key, OmegaConf.select(cfg, key), force_add=True)
    old = flatten(saved)
    changed = [key for key, value in flatten(cfg).items()
               if key not in RESUME_MAY_CHANGE and old.get(key, value) != value]
    if changed:
        warnings.warn(f"resuming {target} with its saved config; ignoring the new values of "
                      f"{', '.join(sorted(changed))}", stacklevel=2)
    return resumed


def _saved_overrides(run_dir: Path, fallback: list[str]) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    return list(OmegaConf.load(path)) if path.is_file() else fallback


def _discard_if_empty(run_dir: Path) -> None:
    """Remove the fresh folder Hydra made for a run that continues elsewhere (nothing lost)."""
    entries = [p for p in run_dir.iterdir() if p.name != ".hydra" and p.suffix != ".log"] \
        if run_dir.is_dir() else None
    if entries == []:
        for path in sorted(run_dir.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        run_dir.rmdir()


# ---------------------------------------------------------------------------- one run
def run(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict:
    """Train (or continue) one run described by ``cfg`` into ``run_dir``; returns results."""
    validate(cfg)
    target = _resume_target(cfg, run_dir)
    if target is not None:
        cfg = _resumed_config(cfg, target, overrides)
        validate(cfg)
        if target != run_dir:
            _discard_if_empty(run_dir)
        run_dir, overrides = target, _saved_overrides(target, overrides)
    device = pick_device(cfg.trainer.device)
    seed_everything(cfg.seed)
    if cfg.method.name not in METHODS:
        raise ConfigError(f"Unknown method {cfg.method.name!r}; choices: {', '.join(METHODS)}.")
    data = load_pair(cfg.data, with_target_labels=METHODS[cfg.method.name].needs_target_labels)
    backbone = build_backbone(cfg.backbone, data.num_classes, data.input_shape)
    method = build_method(cfg.method, backbone)
    trainer = Trainer(cfg, method, data, run_dir, device, overrides)
    if target is not None:
        trainer.load_checkpoint(target / CHECKPOINT)
        print(f"da-train: resuming {target} at step {trainer.step}", file=sys.stderr)
    return trainer.fit()


def _record_failure(run_dir: Path, err: BaseException) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "status.json", {"status": "failed", "error": str(err),
                                         "error_type": type(err).__name__})
    _STATE["failed"].append((run_dir, err))


@hydra.main(version_base="1.3", config_path="pkg://da_train.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    _STATE["jobs_started"] += 1
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    full_error = _STATE.get("full_error", False)
    try:
        results = run(cfg, run_dir, list(hc.overrides.task))
    except RunInterrupted as err:
        print(f"da-train: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except USER_ERRORS as err:
        _record_failure(run_dir, err)
        if full_error:
            raise
        print(f"da-train: error: {err}", file=sys.stderr)
        if not multirun:
            sys.exit(2)
        return
    except Exception as err:
        _record_failure(run_dir, err)
        if not multirun:
            raise
        traceback.print_exc()  # a bug: keep the trace, but let the other jobs run
        return
    print(f"da-train: target_acc={results['target_acc']:.4f} "
          f"source_acc={results['source_acc']:.4f} -> {results['run_dir']}")


def _explain_rejection(err: Exception) -> str:
    """One paragraph for an error Hydra raised before any job ran."""
    if isinstance(err, OSError) and err.filename is not None:
        return (f"cannot create or write the output folder {err.filename}: {err.strerror}. "
                "Choose a writable location with hydra.run.dir=<folder> (hydra.sweep.dir=<folder> "
                "for -m), or run from a writable working directory.")
    text = str(err).strip()
    if err.__cause__ is not None and str(err.__cause__) not in text:
        text += "\n" + str(err.__cause__).strip()
    return (f"{text}\n`da-train --help` lists the config groups and their options; "
            "`da-train --cfg job` prints the composed config.")


def main() -> None:
    # Hydra re-raises errors (instead of printing its own report) when HYDRA_FULL_ERROR=1;
    # we set it so that every error comes here and gets da-train's one-paragraph message,
    # and honour the user's own HYDRA_FULL_ERROR=1 by re-raising with the full trace.
    _STATE["full_error"] = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _hydra_main()
    except KeyboardInterrupt:
        print("da-train: interrupted before training started; nothing to save.", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        if _STATE["full_error"] or _STATE["jobs_started"]:
            raise  # a bug inside a job: keep the stack trace (exit 1)
        print(f"da-train: error: {_explain_rejection(err)}", file=sys.stderr)
        sys.exit(2)
    if _STATE["failed"]:
        print(f"da-train: {len(_STATE['failed'])} of {_STATE['jobs_started']} jobs failed:",
              file=sys.stderr)
        for run_dir, err in _STATE["failed"]:
            print(f"  {run_dir}: {type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
