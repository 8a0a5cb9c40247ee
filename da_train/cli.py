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

import importlib
import logging
import os
import shlex
import shutil
import signal
import sys
import textwrap
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
from .config import register_schema, validate
from .config_walk import check_added_keys, check_override_keys
from .data import DataError, load_pair
from .data.pairs import PAIRS, data_records
from .errors import ConfigError, override_key
from .methods import CHOICES, build_method, core_of
from .models import BACKBONES, build_backbone
from .runfiles import CHECKPOINT, HYDRA_DIR, HYDRA_OVERRIDES, RESOLVED_CONFIG, STATUS
from .runtime import (
    flatten,
    pick_device,
    read_checkpoint,
    seed_everything,
    write_json,
)
from .trainer import NonFiniteLossError, RunInterrupted, Trainer


def help_choices(group: str) -> str:
    """The choices of a config group for ``--help`` (resolver ``da_choices``), from the
    registries (methods, data pairs, backbones) or, for other groups, the conf folder; wrapped
    with the 12-space indent of the help's group lists."""
    registries = {"method": list(CHOICES), "data": list(PAIRS), "backbone": list(BACKBONES)}
    names = registries.get(group) or sorted(
        p.stem for p in (Path(__file__).parent / "conf" / group).glob("*.yaml"))
    return textwrap.fill(", ".join(names), width=92, initial_indent=" " * 12,
                         subsequent_indent=" " * 12, break_on_hyphens=False).lstrip()


register_schema()
sweeps.register()
OmegaConf.register_new_resolver("da_choices", help_choices, replace=True)
log = logging.getLogger("da_train.cli")

# Only errors a user can fix are shortened to one message; a bug keeps its stack trace.
USER_ERRORS = (ConfigError, DataError, NonFiniteLossError)

# What happened in this process: lets main() tell Hydra's own rejections (before any job
# started) from failures inside jobs, and report a sweep's failed jobs at the end.
_STATE: dict = {"jobs_started": 0, "failed": []}

#: Environment variable: the process id of the da-train command (sweep jobs compare theirs).
MAIN_PID_ENV = "DA_TRAIN_MAIN_PID"

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
    path = run_dir / HYDRA_OVERRIDES
    return list(OmegaConf.load(path)) if path.is_file() else fallback


def _discard_if_empty(run_dir: Path) -> None:
    """Remove the fresh folder Hydra made for a run that continues elsewhere (nothing lost)."""
    entries = [p for p in run_dir.iterdir() if p.name != HYDRA_DIR and p.suffix != ".log"] \
        if run_dir.is_dir() else None
    if entries == []:
        for path in sorted(run_dir.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        run_dir.rmdir()


# ---------------------------------------------------------------------------- one run
def run(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict:
    """Train (or continue) one run described by ``cfg`` into ``run_dir``; returns results."""
    validate(cfg)
    check_added_keys(cfg, overrides)
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
    if cfg.method.name not in CHOICES:
        raise ConfigError(f"Unknown method {cfg.method.name!r}; choices: {', '.join(CHOICES)}.")
    _write_resolved_config(cfg, run_dir)
    # the pair arrives with its source validation split held out (seeded by cfg.seed)
    data = load_pair(cfg.data, with_target_labels=core_of(cfg.method.name).needs_target_labels,
                     seed=cfg.seed)
    backbone = build_backbone(cfg.backbone, data.num_classes, data.input_shape)
    method = build_method(cfg.method, backbone, data.num_classes)
    trainer = Trainer(cfg, method, data, run_dir, device, overrides)
    if target is not None:
        trainer.load_checkpoint(target / CHECKPOINT)
        print(f"da-train: resuming {target} at step {trainer.step}", file=sys.stderr)
    return trainer.fit()


def _write_resolved_config(cfg: DictConfig, run_dir: Path) -> None:
    """``<run>/.hydra/config_resolved.yaml``: the config with interpolations resolved and the
    data and cache folders as absolute paths (what results.json ``data_roots`` records)."""
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for key, value in data_records(cfg.data)["data_roots"].items():
        OmegaConf.update(resolved, key, value, force_add=True)
    path = run_dir / RESOLVED_CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(resolved))


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
    fresh = run_dir.is_dir() and all(p.name == HYDRA_DIR or p.suffix == ".log"
                                     for p in run_dir.iterdir())
    if discard and isinstance(err, (ConfigError, DataError)) and fresh:
        shutil.rmtree(run_dir)
        _remove_empty_parents(run_dir)
        return
    if (run_dir / STATUS).is_file() and isinstance(err, ConfigError) \
            and sweeps.job_state(run_dir) == "completed":
        return  # a finished run given a bad config: leave its record alone
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / STATUS, {"status": "failed", "error": str(err),
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
        if multirun:
            sweep_dir = sweeps.SUMMARY.get("sweep_dir") or hc.sweep.dir
            print(f"da-train: {sweeps.interrupt_advice(sweep_dir, err.run_dir)}", file=sys.stderr)
            if os.environ.get(MAIN_PID_ENV, str(os.getpid())) != str(os.getpid()):
                # a job in its own process (submitit, joblib): end it normally; status.json
                # says "interrupted" and the sweep's own process reports it and exits 128+signal
                return None
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


def _print_failures(exit_code: int | None = 2) -> None:
    """List the sweep's failed jobs; exit with ``exit_code`` when there were any."""
    failed = sweeps.SUMMARY["failed"] if sweeps.SUMMARY["ran"] else _STATE["failed"]
    jobs = sweeps.SUMMARY["jobs"] if sweeps.SUMMARY["ran"] else _STATE["jobs_started"]
    if not failed:
        return
    print(f"da-train: {len(failed)} of {jobs} jobs failed:", file=sys.stderr)
    for run_dir, err in failed:
        text = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
        print(f"  {run_dir}: {text}", file=sys.stderr)
    if exit_code is not None:
        sys.exit(exit_code)


def _report_interrupted(sweep_dir) -> int:
    """Name each interrupted job of a sweep and how to continue; the exit code 128 + signal
    (143 for SIGTERM, 130 for SIGINT), as for an interrupted single run."""
    code = 143
    for folder, status in sweeps.SUMMARY["interrupted"]:
        name = status.get("signal") or "SIGTERM"
        code = 128 + getattr(signal.Signals, name, signal.SIGTERM).value
        print(f"da-train: job {folder} was stopped by {name} at step {status.get('step', '?')} "
              "after saving a checkpoint.", file=sys.stderr)
    first = sweeps.SUMMARY["interrupted"][0][0] if sweeps.SUMMARY["interrupted"] else "<job>"
    print(f"da-train: {sweeps.interrupt_advice(sweep_dir, first)}", file=sys.stderr)
    return code


def main() -> None:
    # Hydra re-raises errors (instead of printing its own report) when HYDRA_FULL_ERROR=1;
    # we set it so that every error comes here and gets da-train's one-paragraph message,
    # and honour the user's own HYDRA_FULL_ERROR=1 by re-raising with the full trace.
    _precheck(sys.argv[1:])
    _STATE["full_error"] = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    # inherited by the launchers' workers: the sweep's command line (to print how to continue
    # it) and which process started it
    os.environ[sweeps.COMMAND_ENV] = shlex.join(sys.argv[1:])
    os.environ[MAIN_PID_ENV] = str(os.getpid())
    try:
        _hydra_main()
    except KeyboardInterrupt:
        print("da-train: interrupted before training started; nothing to save.", file=sys.stderr)
        sys.exit(130)
    except sweeps.SweepInterrupted as err:
        _print_failures(exit_code=None)
        sys.exit(_report_interrupted(err.sweep_dir))
    except Exception as err:
        if _STATE["full_error"] or _STATE["jobs_started"] or sweeps.SUMMARY["jobs"]:
            raise  # a bug inside a job: keep the stack trace (exit 1)
        print(f"da-train: error: {_explain_rejection(err)}", file=sys.stderr)
        sys.exit(2)
    _print_failures()


if __name__ == "__main__":
    main()
