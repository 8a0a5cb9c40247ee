"""One training loop for every method.

The trainer owns sampling, optimisation, lr schedules, logging, and when to evaluate, save
and resume; what is learned is entirely the method's business (see methods/base.py): the
method lists its phases and, per step, the loss of each update. :meth:`Trainer.fit` is the
whole loop, top to bottom; everything it calls is defined below it in the order it is called.
What an evaluation measures is da_train/evaluation.py's, what a checkpoint holds
da_train/checkpoints.py's, what a finished run writes (results.json) da_train/results.py's.

Speed: data lives on the training device as uint8 tensors and batches are gathered by index
there (no per-sample Python work); metrics are accumulated on the device and only read back
at logging intervals, so the loop never waits for the device in between. On a GPU the step's
body can run as one CUDA graph per phase (``trainer.cuda_graph``, da_train/graph.py): the
body is :meth:`Trainer.run_updates` on a batch from :meth:`Trainer.gather`, the same code
the eager step runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from itertools import accumulate
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from . import checkpoints, results
from .collapse import CollapseDetector
from .data import DomainPair
from .evaluation import Evaluator, require_plots
from .graph import GraphedStep, resolve
from .methods import Batch, Method, Phase, StepOutput, TargetView
from .methods.base import EVERY_TARGET_EPOCH
from .optim import build_optimizer, build_scheduler
from .regularizers import apply_regularizers, build_regularizers, merged_reg_config
from .runfiles import CHECKPOINT, METRICS, STATUS, TENSORBOARD
from .runtime import SignalCatcher, keep_freed_memory, write_json
from .sampling import EpochSampler

#: Validation curves get at least this many points, however short the run.
MIN_EVAL_POINTS = 5
log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or inf."""


class CollapseError(NonFiniteLossError):
    """The collapse detector fired with ``trainer.stop_on_collapse=true``."""


class RunInterrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was saved. ``exit_code`` is 128 + signal."""

    def __init__(self, signum: int, step: int, run_dir: Path):
        import signal

        self.signum, self.step, self.run_dir = signum, step, run_dir
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(f"{name} received: stopped at step {step} after saving a checkpoint; "
                         f"continue with `da-train trainer.resume={run_dir}`.")


class Trainer:
    def __init__(self, cfg, method: Method, data: DomainPair, run_dir: Path,
                 device: torch.device, overrides: list[str] | None = None):
        self.cfg, self.tcfg = cfg, cfg.trainer
        self.device = device
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        elif self.tcfg.tune_malloc:
            keep_freed_memory()
        if self.tcfg.figures:
            require_plots()
        # the held-out source validation images are not in source_train: never sampled
        self.data = data.to(device)  # the pair arrives with its source-val split held out
        self.method = method.to(device)
        if self.tcfg.channels_last:
            self.method.to(memory_format=torch.channels_last)
        if self.tcfg.compile:
            self.method.backbone.features.compile()
            self.method.backbone.classifier.compile()
        self.run_dir = Path(run_dir)
        self.overrides = overrides or []
        self.phases: list[Phase] = method.phases(self.tcfg.steps)
        self.phase_starts = list(accumulate([0] + [p.steps for p in self.phases]))
        self.total_steps = self.phase_starts[-1]
        self.eval_every = min(self.tcfg.eval_every,
                              max(1, self.total_steps // MIN_EVAL_POINTS))
        bs = self.tcfg.batch_size
        self.source_sampler = EpochSampler(len(self.data.source_train.labels), bs, device,
                                           cfg.seed, stream=0)
        self.target_sampler = EpochSampler(len(self.data.target_train_images), bs, device,
                                           cfg.seed, stream=1)
        # steps per pass over the target training set (Phase.refresh_every=EVERY_TARGET_EPOCH)
        self.target_epoch_steps = math.ceil(self.target_sampler.n / bs)
        self.step = 0
        self.phase_index = -1
        self.optimizers: dict[str, torch.optim.Optimizer] = {}  # by name (optimizers_for)
        self.schedulers: dict = {}
        self.update_optimizers: dict[str, list[torch.optim.Optimizer]] = {}  # by update
        self.meter = Meter()
        self.regs = build_regularizers(merged_reg_config(cfg))
        self.method.target_outputs = bool(self.regs)
        self.collapse = CollapseDetector(self.method)
        # accuracies of the last evaluation (the others are kept by the evaluator)
        self.last_eval: dict[str, float] = {}
        self.evaluator = Evaluator(self.method, self.data, self.tcfg, cfg.seed, self.regs,
                                   self.run_dir)
        # wall time of the earlier processes of a resumed run (up to their last checkpoint)
        self.earlier_wall = 0.0
        self.clock: Clock | None = None
        self.purge_step: int | None = None
        capture, why = resolve(self.tcfg.cuda_graph, device, self.method, cfg)
        self.graph: GraphedStep | None = GraphedStep(self) if capture else None
        if device.type == "cuda" or capture:
            log.info("training step: %s", why)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        """Train to the end (or resume to it), write results.json and return its contents."""
        writer = self._open_logs()
        clock = self.clock = Clock(self.step, self.tcfg.progress_every)
        bar = tqdm(total=self.total_steps, initial=self.step, desc=self.cfg.method.name,
                   dynamic_ncols=True, disable=None)
        self.method.train()
        with (self.run_dir / METRICS).open("a") as metrics_file, SignalCatcher() as \
                signals, torch.autograd.set_detect_anomaly(self.tcfg.detect_anomaly):
            while self.step < self.total_steps:
                self.train_step()
                bar.update(1)

                done = self.step == self.total_steps
                evaluate = done or self.step % self.eval_every == 0 or self.phase_ends()
                stop = bool(signals.signum) and not done  # read once: a signal arriving
                # later in this step is handled at the next, after its checkpoint
                checkpoint = done or self.step % self.tcfg.ckpt_every == 0 or stop
                if evaluate or checkpoint or self.step % self.tcfg.log_every == 0:
                    record = self.meter.flush(self.run_dir / CHECKPOINT)  # the one host sync
                    record |= self.lr_record() | clock.rate(self.step)
                    self.watch_collapse(record)
                    if evaluate:
                        self.last_eval = self.evaluate(full=done)
                        record |= {f"val/{k}": v for k, v in self.last_eval.items()}
                        record |= {f"select/{k}": v
                                   for k, v in self.evaluator.last_selection.items()}
                    self.write_record(writer, metrics_file, record)
                    bar.set_postfix(self.postfix(record), refresh=False)
                    clock.maybe_report(self.step, self.total_steps, record)
                if checkpoint:
                    self.save_checkpoint()
                if evaluate or checkpoint:
                    clock.restart(self.step)  # throughput excludes evaluation and saving
                if stop:
                    bar.close()
                    writer.close()
                    self._status("interrupted", signal=signals.name)
                    raise RunInterrupted(signals.signum, self.step, self.run_dir)
        bar.close()
        out = results.finish(self, writer, self.wall_seconds())
        self._status("completed")
        return out

    # ------------------------------------------------------------------ one step
    def train_step(self, batch: Batch | None = None) -> list[StepOutput]:
        """THE training step, the only copy (fit, scripts/bench.py and the tests call it):
        enter the phase when it starts, sample a batch on the device, forward / backward /
        optimiser step for each of the phase's updates, one lr-schedule step per optimiser,
        the metric sums for logging; then ``self.step`` advances. Everything that changes
        from step to step is state the trainer owns (step, samplers, optimisers, schedulers,
        meter); nothing in it reads a value back to the host. ``batch`` replaces the sampled
        batch (scripts/bench.py's bounds time the step on a fixed or a DataLoader batch)."""
        phase, progress = self.enter_phase()
        if batch is None and self.graph is not None:
            outs = self.graph(self.phase_index, phase, progress)
        else:
            batch = self.sample(phase) if batch is None else batch
            outs = self.run_updates(phase, batch, progress, self.step + 1)
        for scheduler in self.schedulers.values():
            scheduler.step()
        self.step += 1
        return outs

    def run_updates(self, phase: Phase, batch: Batch, progress, step) -> list[StepOutput]:
        """The step's body, what a CUDA graph captures: for each of the phase's updates the
        forward, backward and optimiser step, the method's after-update hook, the metric sums
        and the collapse counters. ``progress`` and ``step`` are Python numbers in an eager
        step and 0-d device tensors in the graph step (updated in place between replays)."""
        outs = []
        for update in phase.updates:
            out = self.optimise(update, batch, progress)
            self.method.after_update(update, progress)
            self.meter.add(self._loss_key(update), out, batch, step)
            self.collapse.observe(out)
            outs.append(out)
        return outs

    def enter_phase(self) -> tuple[Phase, float]:
        """The phase of the current step (entering it when it starts, refreshing the method's
        target state when the phase asks for it) and its progress in [0, 1)."""
        index = max(i for i, start in enumerate(self.phase_starts[:-1]) if start <= self.step)
        if index != self.phase_index:
            self.build_optimizers(index, fresh=True)
            if self.graph is not None:
                self.graph.reset()
        phase = self.phases[index]
        in_phase = self.step - self.phase_starts[index]
        every = phase.refresh_every
        if every == EVERY_TARGET_EPOCH:  # counted from the phase's start, so a resumed run
            every = self.target_epoch_steps  # refreshes at the same steps
        if every and in_phase % every == 0:
            self.refresh(phase)
        return phase, in_phase / phase.steps

    def refresh(self, phase: Phase) -> None:
        """Let the method recompute its state from all unlabelled target training images."""
        was_training = self.method.training
        self.method.eval()
        target = TargetView(self.data.target_train_images, self.data.eval_view,
                            self.tcfg.eval_batch_size)
        with torch.no_grad():
            self.method.refresh(phase, target)
        self.method.train(was_training)

    def build_optimizers(self, index: int, fresh: bool, device_lr: bool | None = None) -> None:
        """The optimisers of phase ``index``; ``fresh`` runs the method's start hook.
        ``device_lr`` (default: when the step is a CUDA graph): learning rates as device
        tensors and fused optimisers (da_train/optim.py)."""
        device_lr = self.graph is not None if device_lr is None else device_lr
        phase = self.phases[index]
        if fresh:
            self.method.start_phase(phase)
        base = OmegaConf.to_container(self.cfg.optim, resolve=True)
        names = {update: self.method.optimizers_for(phase, update)
                 for update in dict.fromkeys(phase.updates)}  # a repeated update: same ones
        self.optimizers, self.schedulers = {}, {}
        for name in dict.fromkeys(n for ns in names.values() for n in ns):
            settings = {**base, **self.method.optim_overrides(phase, name)}
            opt = build_optimizer(self.method.parameters_for(phase, name), settings,
                                  device_lr=device_lr)
            self.optimizers[name] = opt
            self.schedulers[name] = build_scheduler(opt, settings, phase.steps)
        self.update_optimizers = {u: [self.optimizers[n] for n in ns] for u, ns in names.items()}
        self.phase_index = index

    def sample(self, phase: Phase) -> Batch:
        """A source and a target batch, gathered by index on the device (no source batch in a
        source-free phase: its sampler does not even advance)."""
        return self.gather(phase, self.source_sampler() if phase.source else None,
                           self.target_sampler())

    def gather(self, phase: Phase, src: torch.Tensor | None, tgt: torch.Tensor) -> Batch:
        """The batch of these indices: uint8 gather, normalisation and augmentation, all on
        the device (part of the CUDA graph when the step is one)."""
        data = self.data
        xs = ys = None
        if src is not None:
            xs = data.train_view(data.source_train.gather(src))
            ys = data.source_train.labels.index_select(0, src)
        yt = (data.target_train_labels.index_select(0, tgt) if self.method.needs_target_labels
              else None)
        return Batch(xs, ys, data.train_view(data.target_train_images.index_select(0, tgt)),
                     yt, target_index=tgt)

    def optimise(self, update: str, batch: Batch, progress: float) -> StepOutput:
        """Forward the method for ``update``, back-propagate, step its optimiser."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.tcfg.amp and self.device.type == "cuda"):
            out = self.method.training_step(update, batch, progress)
            if self.regs and update in self.method.regularized_updates:
                out.loss, reg_logs = apply_regularizers(self.regs, out, batch, self.method,
                                                        progress)
                out.logs.update(reg_logs)
        if self.step + 1 == self.cfg.debug.inject_nan_at:
            out.loss = out.loss * float("nan")
        optimizers = self.update_optimizers[update]
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        return out

    def watch_collapse(self, record: dict) -> None:
        """Log the collapse detector's warning; stop like a NaN with stop_on_collapse."""
        warning = self.collapse.check(self.step, record)
        if warning is None:
            return
        log.warning(warning)
        if self.tcfg.stop_on_collapse:
            raise CollapseError(warning + f" Stopped (trainer.stop_on_collapse=true); the last "
                                f"checkpoint is kept in {self.run_dir / CHECKPOINT}.")

    def _loss_key(self, update: str) -> str:
        return "loss" if len(self.update_optimizers) == 1 else f"loss_{update}"

    def phase_ends(self) -> bool:
        """True at the last step of a phase that is not the last (e.g. end of ADDA stage 1)."""
        return self.step in self.phase_starts[1:-1]

    # ------------------------------------------------------------------ logging
    def _open_logs(self) -> SummaryWriter:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._status("running")
        return SummaryWriter(str(self.run_dir / TENSORBOARD), purge_step=self.purge_step)

    def lr_record(self) -> dict[str, float]:
        """The current learning rates, from the schedules (host floats, no device read), one
        per optimiser: ``train/lr``, or ``train/lr_<optimiser name>`` when there are several."""
        single = len(self.optimizers) == 1
        return {"train/lr" if single else f"train/lr_{name}": self.schedulers[name].lrs()[0]
                for name in self.optimizers}

    def write_record(self, writer, metrics_file, record: dict) -> None:
        for key, value in record.items():
            writer.add_scalar(key, value, self.step)
        metrics_file.write(json.dumps({"step": self.step, **record}) + "\n")
        metrics_file.flush()

    def postfix(self, record: dict) -> dict:
        out = {k.split("/")[1]: f"{v:.3f}" for k, v in record.items()
               if k.startswith("train/loss")}
        if self.last_eval:
            out["tgt"] = f"{self.last_eval['target_acc']:.3f}"
        return out

    def _status(self, status: str, **extra) -> None:
        write_json(self.run_dir / STATUS, {"status": status, "step": self.step, **extra})

    # ------------------------------------------------------------------ evaluation, saving
    def evaluate(self, full: bool = True) -> dict[str, float]:
        """Source and target test accuracy and the extra metrics (see
        :meth:`da_train.evaluation.Evaluator.evaluate`; ``full=False``: the first
        ``trainer.eval_samples`` test images of each domain)."""
        return self.evaluator.evaluate(full)

    def save_checkpoint(self) -> None:
        """checkpoint.pt: everything needed to continue bit for bit (da_train/checkpoints.py)."""
        checkpoints.save_checkpoint(self)

    def load_checkpoint(self, path: Path) -> None:
        """Restore everything a checkpoint holds, so the run continues bit for bit."""
        checkpoints.load_checkpoint(self, path)

    def wall_seconds(self) -> float:
        """Wall time of the run so far, summed over the processes of a resumed run."""
        return self.earlier_wall + (self.clock.wall() if self.clock else 0.0)


# ---------------------------------------------------------------------------- helpers
class Meter:
    """Running means of the logged training terms, kept on the device (no host sync), and
    the first step at which a loss was not finite.

    The sums are accumulated in place (``add_``) into tensors that live as long as the meter
    and are zeroed, not replaced, at each flush: a CUDA graph that captured :meth:`add` keeps
    writing into the same tensors at every replay. The counts are host integers; a replay
    does not run Python, so the graph step calls :meth:`count` with the keys its captured
    body adds (:meth:`recording` collects them while it is captured)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor | float] = {}
        self.counts: dict[str, int] = {}
        self.first_bad: dict[str, torch.Tensor] = {}
        self._recording: list[str] | None = None

    def add(self, loss_key: str, out: StepOutput, batch: Batch, step) -> None:
        loss = out.loss.detach()
        logs = {loss_key: loss, **out.logs}
        if out.source_logits is not None:
            logs["source_acc"] = (out.source_logits.detach().argmax(1) == batch.ys).float().mean()
        for key, value in logs.items():
            value = value.detach().float() if torch.is_tensor(value) else float(value)
            total = self.sums.get(key)
            if torch.is_tensor(total) and torch.is_tensor(value):
                total.add_(value)
            elif torch.is_tensor(value):  # 0.0 + value, as a tensor this meter keeps
                self.sums[key] = torch.zeros_like(value).add_(value) if total is None \
                    else torch.full_like(value, total).add_(value)
            else:
                self.sums[key] = (0.0 if total is None else total) + value
        self.count(logs)
        flag = ~torch.isfinite(loss)
        bad = self.first_bad.get(loss_key)
        if bad is None:
            self.first_bad[loss_key] = torch.where(flag, step, 0)
        else:
            bad.copy_(torch.where(flag & (bad == 0), step, bad))

    def count(self, keys) -> None:
        """One more value of each of ``keys`` in the current window."""
        for key in keys:
            self.counts[key] = self.counts.get(key, 0) + 1
        if self._recording is not None:
            self._recording.extend(keys)

    @contextlib.contextmanager
    def recording(self):
        """The keys :meth:`add` counts inside the block (a captured step's keys)."""
        self._recording = keys = []
        try:
            yield keys
        finally:
            self._recording = None

    def flush(self, checkpoint: Path) -> dict[str, float]:
        """The means since the last flush as floats (raises on a non-finite loss)."""
        bad = {k: int(v) for k, v in self.first_bad.items() if int(v) > 0}
        if bad:
            key, step = min(bad.items(), key=lambda kv: kv[1])
            raise NonFiniteLossError(
                f"train/{key} became NaN or inf at step {step}; the run stopped and the last "
                f"good checkpoint is kept in {checkpoint}. Lower optim.lr or the method's "
                "weights (e.g. method.weight), or rerun with trainer.detect_anomaly=true to find "
                "the operation that produced it.")
        record = {f"train/{k}": float(self.sums[k] / n) for k, n in self.counts.items() if n}
        for key, total in self.sums.items():  # a new window in the same tensors
            if torch.is_tensor(total):
                total.zero_()
            else:
                self.sums[key] = 0.0
        self.counts = {}
        return record


class Clock:
    """Training throughput (excluding evaluation and checkpoints), wall time, and a plain
    progress line every ``trainer.progress_every`` seconds when stdout is not a terminal
    (Slurm, nohup, CI: tqdm is silent there), to stdout and cli.log through logging."""

    def __init__(self, step: int, every: float):
        self.start = time.perf_counter()
        self.tick, self.tick_step = self.start, step
        self.first_step = step
        self.last_report = -math.inf
        self.every = every

    def restart(self, step: int) -> None:
        self.tick, self.tick_step = time.perf_counter(), step

    def rate(self, step: int) -> dict[str, float]:
        """Steps per second since the last call (or restart)."""
        now = time.perf_counter()
        rate = (step - self.tick_step) / max(now - self.tick, 1e-9)
        self.tick, self.tick_step = now, step
        return {"train/steps_per_s": rate}

    def wall(self) -> float:
        return time.perf_counter() - self.start

    def maybe_report(self, step: int, total: int, record: dict) -> None:
        now = time.perf_counter()
        if sys.stdout.isatty() or (now - self.last_report < self.every and step < total):
            return
        self.last_report = now
        rate = (step - self.first_step) / max(now - self.start, 1e-9)
        eta = (total - step) / rate if rate > 0 else math.inf
        losses = " ".join(f"{k[6:]}={v:.4f}" for k, v in record.items()
                          if k.startswith("train/loss"))
        target = record.get("val/target_acc")
        log.info(f"step {step}/{total} ({rate:.1f} steps/s, ETA {_duration(eta)}) {losses}"
                 + (f" target_acc={target:.4f}" if target is not None else ""))


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"

