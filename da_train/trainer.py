"""One training loop for every method.

The trainer owns sampling, optimisation, lr schedules, evaluation, logging, checkpoints and
resume; what is learned is entirely the method's business (see methods/base.py): the method
lists its phases and, per step, the loss of each update. :meth:`Trainer.fit` is the whole
loop, top to bottom; everything it calls is defined below it in the order it is called.

Speed: data lives on the training device as uint8 tensors and batches are gathered by index
there (no per-sample Python work); metrics are accumulated on the device and only read back
at logging intervals, so the loop never waits for the device in between.
"""

from __future__ import annotations

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

from .collapse import CollapseDetector
from .data import DomainPair
from .errors import ConfigError, override_key
from .methods import Batch, Method, Phase, StepOutput, TargetView
from .optim import build_optimizer, build_scheduler
from .regularizers import (
    apply_regularizers,
    build_regularizers,
    merged_reg_config,
    regularizer_eval_metrics,
)
from .runfiles import CHECKPOINT, EMBEDDINGS, METRICS, RESULTS, STATUS, TENSORBOARD
from .runtime import (
    SignalCatcher,
    atomic_torch_save,
    device_name,
    keep_freed_memory,
    package_versions,
    read_checkpoint,
    rng_state,
    set_rng_state,
    write_json,
)
from .sampling import EpochSampler
from .selection import compute_validators, is_oracle, objective, proxy_a_distance

#: Validation curves get at least this many points, however short the run.
MIN_EVAL_POINTS = 5
#: Images per domain for the validators and the proxy A-distance (a fixed, seeded subset).
SELECT_SAMPLES = 2000
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
        self.select_idx = torch.randperm(
            len(data.target_train_images), generator=torch.Generator().manual_seed(cfg.seed)
        )[:SELECT_SAMPLES].to(device)
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
        self.step = 0
        self.phase_index = -1
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict = {}
        self.meter = Meter()
        self.regs = build_regularizers(merged_reg_config(cfg))
        self.method.target_outputs = bool(self.regs)
        self.collapse = CollapseDetector(self.method)
        self.last_eval: dict[str, float] = {}
        self.last_selection: dict[str, float] = {}
        # rows: true target class, columns: predicted class (final, full evaluation only)
        self.target_confusion: torch.Tensor | None = None
        self.eval_seconds = 0.0
        # wall time of the earlier processes of a resumed run (up to their last checkpoint)
        self.earlier_wall = 0.0
        self.clock: Clock | None = None
        self.purge_step: int | None = None

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
                        record |= {f"select/{k}": v for k, v in self.last_selection.items()}
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
        return self.finish(writer, self.wall_seconds())

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
        batch = self.sample(phase) if batch is None else batch
        outs = []
        for update in phase.updates:
            out = self.optimise(update, batch, progress)
            self.method.after_update(update, progress)
            self.meter.add(self._loss_key(update), out, batch, self.step + 1)
            self.collapse.observe(out)
            outs.append(out)
        for scheduler in self.schedulers.values():
            scheduler.step()
        self.step += 1
        return outs

    def enter_phase(self) -> tuple[Phase, float]:
        """The phase of the current step (entering it when it starts, refreshing the method's
        target state when the phase asks for it) and its progress in [0, 1)."""
        index = max(i for i, start in enumerate(self.phase_starts[:-1]) if start <= self.step)
        if index != self.phase_index:
            self._build_optimizers(index, fresh=True)
        phase = self.phases[index]
        in_phase = self.step - self.phase_starts[index]
        if phase.refresh_every and in_phase % phase.refresh_every == 0:
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

    def _build_optimizers(self, index: int, fresh: bool) -> None:
        """The optimisers of phase ``index``; ``fresh`` runs the method's start hook."""
        phase = self.phases[index]
        if fresh:
            self.method.start_phase(phase)
        base = OmegaConf.to_container(self.cfg.optim, resolve=True)
        self.optimizers, self.schedulers = {}, {}
        for update in dict.fromkeys(phase.updates):  # a repeated update shares its optimiser
            settings = {**base, **self.method.optim_overrides(phase, update)}
            opt = build_optimizer(self.method.parameters_for(phase, update), settings)
            self.optimizers[update] = opt
            self.schedulers[update] = build_scheduler(opt, settings, phase.steps)
        self.phase_index = index

    def sample(self, phase: Phase) -> Batch:
        """A source and a target batch, gathered by index on the device (no source batch in a
        source-free phase: its sampler does not even advance)."""
        data = self.data
        xs = ys = None
        if phase.source:
            src = self.source_sampler()
            xs = data.train_view(data.source_train.gather(src))
            ys = data.source_train.labels.index_select(0, src)
        tgt = self.target_sampler()
        yt = data.target_train_labels[tgt] if self.method.needs_target_labels else None
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
        optimizer = self.optimizers[update]
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
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
        return "loss" if len(self.optimizers) == 1 else f"loss_{update}"

    def phase_ends(self) -> bool:
        """True at the last step of a phase that is not the last (e.g. end of ADDA stage 1)."""
        return self.step in self.phase_starts[1:-1]

    # ------------------------------------------------------------------ logging
    def _open_logs(self) -> SummaryWriter:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._status("running")
        return SummaryWriter(str(self.run_dir / TENSORBOARD), purge_step=self.purge_step)

    def lr_record(self) -> dict[str, float]:
        single = len(self.optimizers) == 1
        return {"train/lr" if single else f"train/lr_{update}": opt.param_groups[0]["lr"]
                for update, opt in self.optimizers.items()}

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

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, full: bool = True) -> dict[str, float]:
        """Source and target test accuracy (+ the method's extra target metrics).

        ``full=False`` (intermediate curves) uses the first ``trainer.eval_samples`` test
        images of each domain, so evaluation stays a small share of the run; the final
        evaluation, the one in results.json, always uses the full test splits.
        """
        start = time.perf_counter()
        was_training = self.method.training
        self.method.eval()
        n = None if full or self.tcfg.eval_samples == 0 else self.tcfg.eval_samples
        src, tgt = self.data.source_test, self.data.target_test
        src_logits = self.predict_all(self.method.predict, src.images[:n])
        tgt_logits = self.predict_all(self.method.predict_target, tgt.images[:n])
        tgt_pred = tgt_logits.argmax(1)
        metrics = {
            "source_acc": (src_logits.argmax(1) == src.labels[:n]).float().mean(),
            "target_acc": (tgt_pred == tgt.labels[:n]).float().mean(),
            **self.method.eval_metrics(tgt_logits, tgt.labels[:n]),
            **regularizer_eval_metrics(self.regs, tgt_logits, tgt.labels[:n]),
        }
        if full:
            self.target_confusion = confusion_matrix(tgt_pred, tgt.labels, tgt_logits.shape[1])
        self.last_selection = self.validators()
        if self.tcfg.embed_samples and not (self.run_dir / EMBEDDINGS).exists():
            self.save_embeddings(first=self.test_features(self.tcfg.embed_samples // 2))
        self.method.train(was_training)
        self.eval_seconds += time.perf_counter() - start
        return {k: float(v) for k, v in metrics.items()}

    @torch.no_grad()
    def validators(self) -> dict[str, float]:
        """The label-free scores of :mod:`da_train.selection` (``select/`` in TensorBoard,
        ``selection`` in results.json) on a fixed subset of the unlabelled target *training*
        images and on the held-out source validation split: no target label is read."""
        method, data = self.method, self.data
        images = data.target_train_images.index_select(0, self.select_idx)
        target_logits = self.predict_all(method.predict_target, images)
        target_feats = self.predict_all(lambda x: method.embed(x, "target"), images)
        source = [None, None, None]
        if data.source_val is not None:
            val = data.source_val
            source = [self.predict_all(method.predict, val.images[:SELECT_SAMPLES]),
                      val.labels[:SELECT_SAMPLES],
                      self.predict_all(lambda x: method.embed(x, "source"),
                                       val.images[:SELECT_SAMPLES])]
        return compute_validators(*source, target_logits, target_feats, seed=self.cfg.seed)

    @torch.no_grad()
    def test_features(self, n: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{domain: (features, labels)} of the first ``n`` test images of each domain."""
        out = {}
        for domain, split in (("source", self.data.source_test),
                              ("target", self.data.target_test)):
            feats = self.predict_all(lambda x, d=domain: self.method.embed(x, d),
                                     split.images[:n])
            out[domain] = (feats.flatten(1).cpu(), split.labels[:n].cpu())
        return out

    def save_embeddings(self, first=None, last=None) -> None:
        """embeddings.npz for the before/after feature figure (da_train/plots.py); written at
        the first evaluation (first = last) and rewritten at the end, so a resumed run keeps
        its "before" without storing it in the checkpoint."""
        from .plots import load_embeddings, save_embeddings

        path = self.run_dir / EMBEDDINGS
        if first is None:
            old = load_embeddings(path) if path.exists() else None
            first = {d: (old[f"first_{d}"], old[f"first_{d}_labels"]) for d in last} \
                if old is not None else last
        last = last or first
        save_embeddings(path, **{f"{when}_{d}{suffix}": pair[d][i]
                                 for when, pair in (("first", first), ("last", last))
                                 for d in ("source", "target")
                                 for i, suffix in ((0, ""), (1, "_labels"))})

    @torch.no_grad()
    def predict_all(self, predict, images: torch.Tensor) -> torch.Tensor:
        """Logits for a whole split in large batches (no host sync)."""
        bs = self.tcfg.eval_batch_size
        return torch.cat([predict(self.data.eval_view(images[i: i + bs])).float()
                          for i in range(0, len(images), bs)])

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> None:
        """Everything needed to continue bit for bit, as tensors and plain containers (loads
        with ``weights_only=True``)."""
        state = {
            "format": 2,
            "method": self.method.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "step": self.step,
            "phase_index": self.phase_index,
            "samplers": {"source": self.source_sampler.state_dict(),
                         "target": self.target_sampler.state_dict()},
            "rng": rng_state(),
            "last_eval": self.last_eval,
            "last_selection": self.last_selection,
            "target_confusion": self.target_confusion,
            "eval_seconds": self.eval_seconds,
            "wall_seconds": self.wall_seconds(),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }
        atomic_torch_save(state, self.run_dir / CHECKPOINT)

    def wall_seconds(self) -> float:
        """Wall time of the run so far, summed over the processes of a resumed run."""
        return self.earlier_wall + (self.clock.wall() if self.clock else 0.0)

    def load_checkpoint(self, path: Path) -> None:
        """Restore everything a checkpoint holds, so the run continues bit for bit."""
        state = read_checkpoint(path, map_location=self.device)
        self.method.load_state_dict(state["method"])
        self.step = state["step"]
        self._build_optimizers(state["phase_index"], fresh=False)
        for key, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][key])
            self.schedulers[key].load_state_dict(state["schedulers"][key])
        self.source_sampler.load_state_dict(state["samplers"]["source"])
        self.target_sampler.load_state_dict(state["samplers"]["target"])
        set_rng_state(state["rng"])
        self.last_eval = state["last_eval"]
        self.last_selection = state.get("last_selection", {})
        self.target_confusion = state.get("target_confusion")
        self.eval_seconds = state["eval_seconds"]
        self.earlier_wall = state.get("wall_seconds", 0.0)
        self.purge_step = self.step + 1

    # ------------------------------------------------------------------ the end
    def finish(self, writer, wall: float) -> dict:
        """results.json, the projector, the figures and the HParams entry; "completed"."""
        self.method.eval()
        features = self.test_features(SELECT_SAMPLES)
        self.method.train()
        results = self.results(wall)
        results["proxy_a_distance"] = proxy_a_distance(features["source"][0],
                                                       features["target"][0], seed=self.cfg.seed)
        if self.tcfg.embed_samples:
            n = self.tcfg.embed_samples // 2
            last = {d: (f[:n], y[:n]) for d, (f, y) in features.items()}
            self.add_embedding(writer, last)
            self.save_embeddings(last=last)
        if self.tcfg.figures:
            self.add_figures(writer)
        value, raw = objective(results, self.cfg.objective)
        results["objective"] = {"name": self.cfg.objective, "score": raw, "maximised": value}
        if is_oracle(self.cfg.objective):
            results["oracle_selection"] = True  # chosen by target labels: da-report says so
        writer.add_hparams(self.hparams(), {"hparam/target_acc": results["target_acc"],
                                            "hparam/source_acc": results["source_acc"]},
                           run_name=".", global_step=self.step)
        writer.close()
        write_json(self.run_dir / RESULTS, results)
        self._status("completed")
        return results

    def hparams(self) -> dict:
        """Method, pair and seed first, then every key the command line set (the swept keys
        of a sweep); keys left at their defaults are the same in every run, so left out."""
        chosen = {"method.name": self.cfg.method.name, "data.name": self.cfg.data.name,
                  "seed": self.cfg.seed}
        for key in (override_key(o) for o in self.overrides):
            value = OmegaConf.select(self.cfg, key, default=None)
            if key not in chosen and not key.startswith("hydra") and value is not None:
                chosen[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
        return chosen

    def add_embedding(self, writer, features: dict) -> None:
        """Source + target test features in the TensorBoard projector (domain, class, image),
        reduced to 32 dimensions by PCA so the run folder stays small."""
        feats = torch.cat([features["source"][0], features["target"][0]])
        meta = [[domain, str(int(y))] for domain in ("source", "target")
                for y in features[domain][1]]
        n = len(features["source"][0])
        images = [thumbnails(split.images[:n]) for split in (self.data.source_test,
                                                             self.data.target_test)]
        if feats.shape[1] > 32 and feats.shape[0] > 32:
            u, s, _ = torch.pca_lowrank(feats, q=32)
            feats = u * s
        label_img = torch.cat(images) if images[0] is not None else None
        writer.add_embedding(feats, metadata=meta, label_img=label_img,
                             metadata_header=["domain", "class"], global_step=self.step,
                             tag="features")

    def add_figures(self, writer) -> None:
        """Accuracy curves, the confusion matrix and the before/after feature scatter in
        TensorBoard's Images tab (``trainer.figures=true``)."""
        from .plots import run_figures

        for tag, fig in run_figures(self.run_dir, self.target_confusion.numpy(),
                                    self.data.names()).items():
            writer.add_figure(tag, fig, self.step)

    def results(self, wall: float) -> dict:
        return {
            "status": "completed",
            "method": self.cfg.method.name,
            "data": self.cfg.data.name,
            "seed": self.cfg.seed,
            "oracle": self.method.needs_target_labels,
            "source_acc": self.last_eval["source_acc"],
            "target_acc": self.last_eval["target_acc"],
            **{k: v for k, v in self.last_eval.items() if k not in ("source_acc", "target_acc")},
            **({"target_confusion": self.target_confusion.tolist()}
               if self.target_confusion is not None else {}),
            "class_names": self.data.names(),
            "sizes": self.data.sizes(),
            "source_val": self.cfg.data.source_val,
            "selection": self.last_selection,
            "steps": self.step,
            "phases": {p.name: p.steps for p in self.phases},
            "wall_time_s": wall,
            "eval_time_s": self.eval_seconds,
            "steps_per_s": self.step / wall if wall > 0 else math.nan,
            "device": str(self.device),
            "device_name": device_name(self.device),
            "versions": package_versions(),
            "overrides": self.overrides,
            "run_dir": str(self.run_dir),
            # data_roots (resolved data/cache folders), skipped_images: set by data.load_pair
            **getattr(self.data, "records", {}),
        }


# ---------------------------------------------------------------------------- helpers
class Meter:
    """Running means of the logged training terms, kept on the device (no host sync), and
    the first step at which a loss was not finite."""

    def __init__(self):
        self.sums: dict[str, tuple] = {}
        self.first_bad: dict[str, torch.Tensor] = {}

    def add(self, loss_key: str, out: StepOutput, batch: Batch, step: int) -> None:
        loss = out.loss.detach()
        logs = {loss_key: loss, **out.logs}
        if out.source_logits is not None:
            logs["source_acc"] = (out.source_logits.detach().argmax(1) == batch.ys).float().mean()
        for key, value in logs.items():
            value = value.detach().float() if torch.is_tensor(value) else float(value)
            total, n = self.sums.get(key, (0.0, 0))
            self.sums[key] = (total + value, n + 1)
        flag = ~torch.isfinite(loss)
        bad = self.first_bad.get(loss_key)
        self.first_bad[loss_key] = (torch.where(flag, step, 0) if bad is None
                                    else torch.where(flag & (bad == 0), step, bad))

    def flush(self, checkpoint: Path) -> dict[str, float]:
        """The means since the last flush as floats (raises on a non-finite loss)."""
        bad = {k: int(v) for k, v in self.first_bad.items() if int(v) > 0}
        if bad:
            key, step = min(bad.items(), key=lambda kv: kv[1])
            raise NonFiniteLossError(
                f"train/{key} became NaN or inf at step {step}; the run stopped and the last "
                f"good checkpoint is kept in {checkpoint}. Lower optim.lr or the method's "
                "weights (e.g. method.lam), or rerun with trainer.detect_anomaly=true to find "
                "the operation that produced it.")
        record = {f"train/{k}": float(total / n) for k, (total, n) in self.sums.items()}
        self.sums = {}
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


def require_plots() -> None:
    """``trainer.figures=true`` needs matplotlib: fail before training, not at the end."""
    from .plots import PlotsUnavailable, require_matplotlib

    try:
        require_matplotlib()
    except PlotsUnavailable as err:
        raise ConfigError(f"trainer.figures=true: {err}") from err


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor,
                     num_classes: int) -> torch.Tensor:
    """Counts[true, predicted]: shows *which* classes a method confuses, e.g. a target class
    mapped onto the wrong source class by domain alignment (see docs/results.md)."""
    flat = labels.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes ** 2).view(num_classes, num_classes).cpu()


def thumbnails(images: torch.Tensor) -> torch.Tensor | None:
    """uint8 N x C x H x W images -> float RGB in [0, 1] for the projector's sprite (None for
    inputs that are not images, e.g. vectors or signals)."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        return None
    img = images.float().cpu() / 255.0
    return img.expand(-1, 3, -1, -1) if img.shape[1] == 1 else img
