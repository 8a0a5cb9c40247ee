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

import dataclasses
import difflib
import importlib
import logging
import os
import shutil
import sys
import traceback
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from . import sweeps
from .config import Config, ConfigError, override_key, register_schema, validate
from .data import DataError, load_pair
from .data.schemas import SCHEMAS as DATA_SCHEMAS
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
sweeps.register()
log = logging.getLogger("da_train.cli")

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


# ---------------------------------------------------------------------------- known keys
#: Config groups (key=choice), not keys.
GROUPS = ("method", "data", "backbone", "optim", "trainer", "experiment")


def _choice_schemas() -> dict[str, list[type]]:
    """The schemas a group typed ``Any`` can take: every method's, data family's, backbone's."""
    from .models import BACKBONE_SCHEMAS

    return {"method": [m.Config for m in METHODS.values()],
            "data": list(DATA_SCHEMAS.values()), "backbone": list(BACKBONE_SCHEMAS.values())}


def _schema_keys(node, prefix: str = "") -> set[str]:
    """Dotted keys of a schema dataclass; a group typed Any gets the keys of all its schemas."""
    keys = set()
    choices = _choice_schemas() if not prefix else {}
    for f in dataclasses.fields(node):
        key = f"{prefix}{f.name}"
        inner = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if key in choices:
            for schema in choices[key]:
                keys |= _schema_keys(schema, f"{key}.")
        elif dataclasses.is_dataclass(inner):
            keys |= _schema_keys(type(inner), f"{key}.")
        else:
            keys.add(key)
    return keys


def _unknown_key_message(text: str, key: str, known) -> str:
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
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException:
        return  # Hydra reports the syntax error itself
    known = _schema_keys(Config)
    for override in parsed:
        key = override.key_or_group
        if override.is_delete() or key.startswith("hydra") or key in GROUPS \
                or key in known or any(key.startswith(k + ".") for k in known):
            continue
        raise ConfigError(_unknown_key_message(override.input_line, key, known))


def _check_added_keys(cfg: DictConfig, overrides: list[str]) -> None:
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
        own = _schema_keys(schema, f"{group}.")
        if key not in own:
            raise ConfigError(_unknown_key_message(text, key, own))


# ---------------------------------------------------------------------------- one run
def run(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict:
    """Train (or continue) one run described by ``cfg`` into ``run_dir``; returns results."""
    validate(cfg)
    _check_added_keys(cfg, overrides)
    target = _resume_target(cfg, run_dir)
    if target is None and sweeps.job_state(run_dir) == "resumable":
        target = run_dir  # this folder's job was interrupted or killed: continue it
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


def _remove_empty_parents(run_dir: Path) -> None:
    """Remove the folders above a discarded run (outputs/runs/<date>/ ...) that are now empty,
    up to but never including the working directory; a folder outside it is left alone."""
    cwd = Path.cwd().resolve()
    parent = run_dir.resolve().parent
    while parent != cwd and cwd in parent.parents and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def _record_failure(run_dir: Path, err: BaseException, discard: bool = False) -> None:
    """Write status.json = failed; with ``discard`` (a single run, not a sweep job), a folder
    in which nothing started (only Hydra's .hydra/ and log) is removed instead when the
    error is the user's config or missing data: the message on stderr says it all, and
    da-report has no failed run to list after the user fixed it. A sweep keeps the record,
    so its summary and da-report name the failed job."""
    fresh = run_dir.is_dir() and all(p.name == ".hydra" or p.suffix == ".log"
                                     for p in run_dir.iterdir())
    if discard and isinstance(err, (ConfigError, DataError)) and fresh:
        shutil.rmtree(run_dir)
        _remove_empty_parents(run_dir)
        return
    if (run_dir / "status.json").is_file() and isinstance(err, ConfigError) \
            and sweeps.job_state(run_dir) == "completed":
        return  # a finished run given a bad config: leave its record alone
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "status.json", {"status": "failed", "error": str(err),
                                         "error_type": type(err).__name__})
    _STATE["failed"].append((run_dir, err))


@hydra.main(version_base="1.3", config_path="pkg://da_train.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    """One job. Returns the objective (for hydra/sweeper=optuna), None when the job failed."""
    _STATE["jobs_started"] += 1
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    threads = sweeps.torch_threads(int(cfg.trainer.threads), hc.get("launcher"))
    torch.set_num_threads(threads)
    log.info("torch threads: %d (trainer.threads=%s)", threads, cfg.trainer.threads)
    try:
        with sweeps.PreemptionRequeue() as preemption:
            try:
                results = run(cfg, run_dir, list(hc.overrides.task))
            except RunInterrupted as err:
                preemption.requeue(err.signum)  # exits when submitit requeues the job
                raise
        return _record_objective(cfg, results)
    except RunInterrupted as err:
        print(f"da-train: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except USER_ERRORS as err:
        _record_failure(run_dir, err, discard=not multirun)
        if _STATE.get("full_error", False):
            raise
        print(f"da-train: error: {err}", file=sys.stderr)
        if not multirun:
            sys.exit(2)
    except Exception as err:
        _record_failure(run_dir, err)
        if not multirun:
            raise
        traceback.print_exc()  # a bug: keep the trace, but let the other jobs run
    return None


def _record_objective(cfg: DictConfig, results: dict) -> float:
    """Print the run's accuracies; return its objective (what hydra/sweeper=optuna maximises;
    the trainer wrote it to results.json, marking a target-label objective as oracle)."""
    print(f"da-train: target_acc={results['target_acc']:.4f} "
          f"source_acc={results['source_acc']:.4f} -> {results['run_dir']}")
    return results["objective"]["maximised"]


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


def _version_text() -> str:
    try:
        ours = version("da-train")
    except PackageNotFoundError:
        ours = "unknown (not installed)"
    return f"da-train {ours} (torch {torch.__version__}, hydra {hydra.__version__})"


def _missing_plugin(overrides: list[str]) -> str | None:
    """The one-paragraph message for a launcher/sweeper whose optional extra is missing."""
    for choice, (extra, package) in sweeps.PLUGINS.items():
        if choice not in overrides:
            continue
        module = "hydra_plugins." + package.replace("-", "_")
        try:
            importlib.import_module(module)
        except ImportError:
            return (f"{choice} needs the Hydra plugin {package}, which is not installed. "
                    f'Install it with `pip install "da-train[{extra}]"` (or `pip install '
                    f"{package}`), then run the same command again.")
    return None


def _user_overrides(argv: list[str]) -> list[str] | None:
    from hydra._internal.utils import get_args_parser
    try:
        return list(get_args_parser().parse_args(argv).overrides)
    except SystemExit:
        return None  # a bad flag: Hydra's own parser reports it


def _precheck(argv: list[str]) -> None:
    """Checks that need no composed config, done before Hydra creates any folder."""
    if "--version" in argv:
        print(_version_text())
        sys.exit(0)
    overrides = _user_overrides(argv)
    if overrides is None:
        return
    sweeps.note_constants(overrides)
    message = _missing_plugin(overrides)
    try:
        check_override_keys(overrides)
    except ConfigError as err:
        message = message or str(err)
    if message:
        print(f"da-train: error: {message}", file=sys.stderr)
        sys.exit(2)


def _print_failures() -> None:
    failed = sweeps.SUMMARY["failed"] if sweeps.SUMMARY["ran"] else _STATE["failed"]
    jobs = sweeps.SUMMARY["jobs"] if sweeps.SUMMARY["ran"] else _STATE["jobs_started"]
    if not failed:
        return
    print(f"da-train: {len(failed)} of {jobs} jobs failed:", file=sys.stderr)
    for run_dir, err in failed:
        text = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
        print(f"  {run_dir}: {text}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    # Hydra re-raises errors (instead of printing its own report) when HYDRA_FULL_ERROR=1;
    # we set it so that every error comes here and gets da-train's one-paragraph message,
    # and honour the user's own HYDRA_FULL_ERROR=1 by re-raising with the full trace.
    _precheck(sys.argv[1:])
    _STATE["full_error"] = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _hydra_main()
    except KeyboardInterrupt:
        print("da-train: interrupted before training started; nothing to save.", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        if _STATE["full_error"] or _STATE["jobs_started"] or sweeps.SUMMARY["jobs"]:
            raise  # a bug inside a job: keep the stack trace (exit 1)
        print(f"da-train: error: {_explain_rejection(err)}", file=sys.stderr)
        sys.exit(2)
    _print_failures()


if __name__ == "__main__":
    main()
