"""Sweeps that scale out: resumable sweeps, readable job folders, fair threads, preemption.

Hydra runs a sweep as sweeper -> launcher -> one job per parameter combination. da-train
keeps Hydra's launchers (basic, joblib, submitit) and adds:

- ``ResumableSweeper`` (the default ``hydra/sweeper``): Hydra's basic sweeper that names each
  job folder after the keys that vary in the sweep, and, before launching, looks at the
  job folders of an earlier run of the same sweep (same ``hydra.sweep.dir``): completed jobs
  are not launched at all (Hydra would rewrite ``.hydra/*.yaml`` and the job log before the
  task function runs, so skipping has to be decided here), interrupted ones are launched and
  resume from their checkpoint (cli.py sees their ``status.json``), failed ones are rerun in
  a clean folder. It also collects the failed jobs of every launcher, whose workers may be
  other processes or machines, from their ``status.json``.
- ``torch_threads``: how many torch threads a job gets so that parallel jobs share the cores.
- ``PreemptionRequeue``: inside a submitit job, the preemption / time-limit signal becomes the
  trainer's own stop request (checkpoint, then ``RunInterrupted``), after which submitit's
  handler requeues the job; the requeued job resumes from the checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import types
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from omegaconf import OmegaConf

from .runfiles import CHECKPOINT, CLI_LOG, MULTIRUN, STATUS
from .runtime import SignalCatcher

#: ``_target_`` of the resumable sweeper. Hydra only instantiates plugins whose class lives
#: under ``hydra_plugins.``; ``register`` files our class under this name.
SWEEPER_TARGET = "hydra_plugins.da_train_sweeper.ResumableSweeper"

#: Optional extras: config group choice -> (the extra to install, the plugin's package).
PLUGINS = {
    "hydra/launcher=joblib": ("parallel", "hydra-joblib-launcher"),
    "hydra/launcher=submitit_local": ("slurm", "hydra-submitit-launcher"),
    "hydra/launcher=submitit_slurm": ("slurm", "hydra-submitit-launcher"),
    "hydra/launcher=slurm": ("slurm", "hydra-submitit-launcher"),
    "hydra/sweeper=optuna": ("hpo", "hydra-optuna-sweeper"),
}

#: What the last sweep in this process did (read by cli.main for the exit code and summary).
SUMMARY: dict = {"ran": False, "jobs": 0, "failed": [], "interrupted": []}


# ---------------------------------------------------------------------------- job folders
def job_state(run_dir: Path) -> str:
    """new / completed / failed / resumable (interrupted, or killed after a checkpoint) /
    stale (started, killed before its first checkpoint)."""
    status = read_status(run_dir)
    if status is None:
        return "new"
    state = status.get("status")
    if state in ("completed", "failed"):
        return state
    return "resumable" if (run_dir / CHECKPOINT).is_file() else "stale"


def read_status(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / STATUS).read_text())
    except (OSError, ValueError):
        return None


def job_folder_name(job: list[str], swept: list[str], num: int) -> str:
    """``method=dann,seed=1``: the swept keys and their values, in command-line order.

    Constants (data.root, data.download=false, ...) are left out so that the part that
    differs between jobs comes first and is not cut off in listings and TensorBoard.
    """
    values = dict(item.split("=", 1) for item in job)
    parts = [f"{key.lstrip('+~')}={values[key]}" for key in swept if key in values]
    name = ",".join(parts) if parts else f"job{num}"
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)[:200]


#: Keys given one fixed value on the command line (set by cli.main, inherited by workers).
CONSTANTS_ENV = "DA_TRAIN_SWEEP_CONSTANTS"


def varying_overrides(task) -> str:
    """Resolver ``da_varying``: a job's overrides without the command line's constants, for
    sweepers other than ours (Optuna: the sampled parameters)."""
    constants = set(filter(None, os.environ.get(CONSTANTS_ENV, "").split(",")))
    parts = [str(o) for o in task if str(o).split("=", 1)[0].lstrip("+~") not in constants]
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", ",".join(parts))[:200] or "job"


def note_constants(overrides: list[str]) -> None:
    """Remember which command-line keys are constants (not swept) for ``da_varying``."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # Hydra reports syntax errors itself
        return
    os.environ[CONSTANTS_ENV] = ",".join(o.get_key_element().lstrip("+~") for o in parsed
                                         if not o.is_sweep_override())


# ---------------------------------------------------------------------------- sweeper
class ResumableSweeperMixin:
    """Hydra's basic sweeper, plus readable folder names and skip / resume / rerun
    (mixed into Hydra's BasicSweeper by ``register``)."""

    def sweep(self, arguments: list[str]):
        assert self.config is not None and self.launcher is not None
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / MULTIRUN)
        params = [*self._parse_config(), *arguments]
        parsed = OverridesParser.create(
            config_loader=self.hydra_context.config_loader).parse_overrides(params)
        swept = [o.get_key_element() for o in parsed if o.is_sweep_override()]
        self.overrides = self.split_arguments(parsed, self.max_batch_size)
        SUMMARY.update(ran=True, jobs=0, failed=[], interrupted=[], sweep_dir=str(sweep_dir))
        plan: dict = {"skipped": [], "resumed": [], "reran": []}
        returns, num = [], 0
        while not self.is_done():
            batch = []
            for job in self.get_job_batch():
                name = job_folder_name(job, swept, num)
                num += 1
                if self._plan(sweep_dir / name, plan):
                    batch.append([*job, f"hydra.sweep.subdir='{name}'"])
            if not batch:
                continue
            self.validate_batch_is_legal(batch)
            # launchers copy the environment into their workers: tell each job how many
            # jobs share the machine (used by torch_threads)
            os.environ[PARALLEL_ENV] = str(side_by_side(self.config.hydra.launcher, len(batch)))
            _print_where_output_goes(self.config.hydra.launcher, sweep_dir)
            folders = [sweep_dir / _subdir(job) for job in batch]
            try:
                results = self.launcher.launch(batch, initial_job_idx=num - len(batch))
            except Exception:
                # submitit reports a job that exited on a signal as "has not produced any
                # output": when the job says it was interrupted, that is what to report
                SUMMARY["interrupted"] += _interrupted(folders)
                if SUMMARY["interrupted"]:
                    raise SweepInterrupted(sweep_dir) from None
                raise
            SUMMARY["jobs"] += len(results)
            SUMMARY["failed"] += [f for f in map(_failure, results) if f is not None]
            SUMMARY["interrupted"] += _interrupted(folders)
            returns.append(results)
        _print_plan(sweep_dir, plan)
        if SUMMARY["interrupted"]:
            raise SweepInterrupted(sweep_dir)
        return returns

    @staticmethod
    def _plan(run_dir: Path, plan: dict) -> bool:
        """Whether to launch the job in ``run_dir``; records why in ``plan``."""
        state = job_state(run_dir)
        if state == "completed":
            plan["skipped"].append(run_dir.name)
            return False
        if state == "resumable":
            plan["resumed"].append(run_dir.name)
        elif state in ("failed", "stale"):
            plan["reran"].append(run_dir.name)
            shutil.rmtree(run_dir)  # a clean start: no stale metrics or TensorBoard events
        return True


def _failure(ret) -> tuple[Path, str] | None:
    """(job folder, 'ErrorType: message') for a job that failed, else None."""
    run_dir = Path(ret.hydra_cfg.hydra.runtime.output_dir) if ret.hydra_cfg else Path("?")
    if ret.status.name == "FAILED":
        err = ret._return_value
        return run_dir, f"{type(err).__name__}: {err}"
    status = read_status(run_dir) or {}
    if status.get("status") == "failed":
        return run_dir, f"{status.get('error_type', 'Error')}: {status.get('error', '')}"
    return None


def _subdir(job: list[str]) -> str:
    """The job folder name that ``sweep`` appended as ``hydra.sweep.subdir='<name>'``."""
    value = [o for o in job if o.startswith("hydra.sweep.subdir=")][-1].split("=", 1)[1]
    return value.strip("'")


def _interrupted(folders: list[Path]) -> list[tuple[Path, dict]]:
    """(folder, status.json) of the jobs that stopped on a signal after a checkpoint."""
    out = []
    for folder in folders:
        status = read_status(folder) or {}
        if status.get("status") == "interrupted":
            out.append((folder, status))
    return out


class SweepInterrupted(Exception):
    """A job of the sweep stopped on SIGINT/SIGTERM (in its own process: submitit, joblib);
    cli.main prints how to continue and exits 128 + signal."""

    def __init__(self, sweep_dir: Path):
        self.sweep_dir = sweep_dir
        super().__init__(f"a job of the sweep {sweep_dir} was interrupted")


#: The command line that started this sweep (set by cli.main; inherited by workers).
COMMAND_ENV = "DA_TRAIN_COMMAND"


def continue_command(sweep_dir: Path | str) -> str:
    """The command that continues the whole sweep: the same ``da-train -m ...`` with its
    folder fixed (``hydra.sweep.dir``), so completed jobs are skipped and interrupted ones
    resume. Without a fixed folder a rerun would start a new, dated sweep from scratch."""
    import shlex

    args = shlex.split(os.environ.get(COMMAND_ENV, "")) or ["-m"]
    args = [a for a in args if not a.startswith(("hydra.sweep.dir=", "+hydra.sweep.dir="))]
    if "-m" not in args and "--multirun" not in args:
        args.insert(0, "-m")
    return shlex.join(["da-train", *args, f"hydra.sweep.dir={Path(sweep_dir).absolute()}"])


def interrupt_advice(sweep_dir: Path | str, run_dir: Path | str) -> str:
    """What to run after a job of a sweep was interrupted: the whole sweep, or the one job."""
    return (f"This job is part of the sweep {sweep_dir}. To continue the whole sweep "
            "(completed jobs are skipped, interrupted ones resume from their checkpoints, the "
            f"rest run), run `{continue_command(sweep_dir)}`; "
            f"`da-train trainer.resume={run_dir}` continues this job only.")


def _print_where_output_goes(launcher, sweep_dir: Path) -> None:
    """submitit runs each job in its own process, whose console is a file: say where."""
    target = str(launcher.get("_target_", "")) if launcher is not None else ""
    if "submitit" not in target.lower():
        return
    folder = str(launcher.get("submitit_folder", f"{sweep_dir}/.submitit/%j"))
    print(f"da-train: submitit runs each job in its own process, which prints nothing here: "
          f"each job's output goes to {folder.replace('%j', '<job id>')}/<job id>_0_log.out "
          f"and .err, and its progress lines to {sweep_dir}/<job folder>/{CLI_LOG} "
          f"(`tail -f {sweep_dir}/*/{CLI_LOG}`).", file=sys.stderr)


def _print_plan(sweep_dir: Path, plan: dict) -> None:
    lines = [f"{verb} {len(names)}: {', '.join(names)}"
             for verb, names in (("skipped (completed)", plan["skipped"]),
                                 ("resumed (interrupted)", plan["resumed"]),
                                 ("reran (failed or killed before a checkpoint)", plan["reran"]))
             if names]
    if lines:
        print(f"da-train: sweep {sweep_dir} run again: " + "; ".join(lines), file=sys.stderr)


def register() -> None:
    """Make ``hydra/sweeper=resumable`` instantiable. Hydra requires plugins under
    ``hydra_plugins.`` (we file the class there by hand rather than ship a second top-level
    package), and its plugin scan re-executes its core plugin modules, so the base class
    is taken after the scan."""
    plugins = Plugins.instance()
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    module_name = SWEEPER_TARGET.rsplit(".", 1)[0]
    module = sys.modules.setdefault(module_name, types.ModuleType(module_name))
    sweeper = type("ResumableSweeper", (ResumableSweeperMixin, BasicSweeper),
                   {"__module__": module_name, "__doc__": ResumableSweeperMixin.__doc__})
    module.ResumableSweeper = sweeper
    OmegaConf.register_new_resolver("da_varying", varying_overrides, replace=True)
    plugins.register(sweeper)
    _rename_plugin_config("hydra/sweeper", "optuna", "optuna_plugin")


def _rename_plugin_config(group: str, name: str, new_name: str) -> None:
    """File a plugin's structured config under another name, so that our yaml of the same
    name (conf/hydra/sweeper/optuna.yaml: da-train's defaults) can extend it. Hydra refuses a
    yaml that shadows a structured config with a defaults list ("automatic schema
    matching"). Does nothing when the plugin is not installed."""
    from hydra.core.config_store import ConfigStore
    store = ConfigStore.instance()
    folder = store.repo
    for part in group.split("/"):
        folder = folder.get(part, {})
    node = folder.pop(f"{name}.yaml", None) if isinstance(folder, dict) else None
    if node is not None:
        store.store(group=group, name=new_name, node=node.node, provider=node.provider)


# ---------------------------------------------------------------------------- threads
def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


#: Environment variable through which the sweeper tells jobs how many run side by side.
PARALLEL_ENV = "DA_TRAIN_PARALLEL_JOBS"


def side_by_side(launcher, n_jobs: int) -> int:
    """How many of ``n_jobs`` jobs run at the same time on one machine with this launcher."""
    target = str(launcher.get("_target_", "")).lower() if launcher is not None else ""
    if "joblib" in target:
        n = int(launcher.get("n_jobs") or 1)
        return min(n_jobs, available_cores() + 1 + n if n < 0 else n)  # joblib: -1 = all
    if "locallauncher" in target:  # submitit_local starts every job at once
        return n_jobs
    return 1  # the basic launcher runs one job after the other; Slurm gives each its CPUs


def parallel_jobs(launcher) -> int:
    """Jobs sharing this machine: what the sweeper said, else the launcher's config."""
    told = os.environ.get(PARALLEL_ENV, "")
    return int(told) if told.isdigit() and int(told) > 0 else \
        side_by_side(launcher, available_cores())


def torch_threads(requested: int, launcher) -> int:
    """``trainer.threads`` when set; on Slurm the CPUs the job was given; else the cores
    divided by the jobs running side by side (at least 1). An ``OMP_NUM_THREADS`` the user
    set is an upper bound for the automatic choice (shared machines, CI)."""
    if requested > 0:
        return requested
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    auto = int(slurm) if slurm.isdigit() else \
        max(1, available_cores() // max(1, parallel_jobs(launcher)))
    omp = os.environ.get("OMP_NUM_THREADS", "")
    return min(auto, int(omp)) if omp.isdigit() and int(omp) > 0 else auto


# ---------------------------------------------------------------------------- preemption
class PreemptionRequeue:
    """Inside a submitit job, route the preemption / time-limit signal through the trainer.

    submitit binds that signal (USR2 by default) to a handler that checkpoints the submitted
    callable and requeues it at once, mid-step. We bind it instead to the trainer's SIGTERM
    handler (stop after the current step, save the checkpoint, raise ``RunInterrupted``), and
    call submitit's handler afterwards via ``requeue``. Outside submitit this does nothing.
    """

    def __init__(self):
        self.signum = None
        self.submitit_handler = None
        if os.environ.get("SUBMITIT_EXECUTOR"):
            from submitit import JobEnvironment
            self.signum = JobEnvironment._usr_sig()

    def __enter__(self):
        if self.signum is not None:
            self.submitit_handler = signal.signal(self.signum, self._forward)
        return self

    def __exit__(self, *exc):
        if self.signum is not None:
            signal.signal(self.signum, self.submitit_handler)

    def _forward(self, signum, frame):
        handler = signal.getsignal(signal.SIGTERM)
        if isinstance(getattr(handler, "__self__", None), SignalCatcher):
            handler(signum, frame)  # the trainer checkpoints, then raises RunInterrupted
        else:
            self.submitit_handler(signum, frame)  # not training yet: requeue right away

    def requeue(self, signum: int) -> None:
        """After the trainer stopped on the preemption signal: let submitit requeue (exits)."""
        if self.signum is not None and signum == self.signum and callable(self.submitit_handler):
            print("da-train: preempted or out of time; checkpoint saved, requeueing the job",
                  file=sys.stderr)
            self.submitit_handler(signum, None)
