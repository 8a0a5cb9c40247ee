"""One training loop for every method.

The trainer owns sampling, optimisation, lr schedules, evaluation, logging, checkpoints,
resume and signal handling; what is learned is entirely the method's business (see
methods/base.py): the method lists its phases and, per step, the loss of each update.

Speed: data lives on the training device as uint8 tensors and batches are gathered by index
there (no per-sample Python work); metrics are accumulated on the device and only read back
(``.item()``) at logging intervals, so the loop never waits for the device in between.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from .config import ConfigError
from .data import DomainPair, normalise
from .methods import Batch, Method, Phase
from .optim import build_optimizer, build_scheduler
from .sampling import EpochSampler

CHECKPOINT = "checkpoint.pt"


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or inf."""


class RunInterrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was saved. ``exit_code`` is 128 + signal."""

    def __init__(self, signum: int, step: int, run_dir: Path):
        self.signum, self.step, self.run_dir = signum, step, run_dir
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(f"{name} received: stopped at step {step} after saving a checkpoint; "
                         f"continue with `da-train trainer.resume={run_dir}`.")


# ---------------------------------------------------------------------------- helpers
def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name} but no CUDA device is available; "
                          "use trainer.device=cpu or trainer.device=auto.")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@torch.no_grad()
def predict_all(predict, images: torch.Tensor, batch_size: int,
                norm: Callable[[torch.Tensor], torch.Tensor] = normalise) -> torch.Tensor:
    """Logits for a whole split in large batches (no host sync)."""
    return torch.cat([predict(norm(images[i: i + batch_size])).float()
                      for i in range(0, len(images), batch_size)])


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor,
                     num_classes: int) -> torch.Tensor:
    """Counts[true, predicted]: shows *which* classes a method confuses, e.g. a target class
    mapped onto the wrong source class by domain alignment (see docs/results.md)."""
    flat = labels.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes ** 2).view(num_classes, num_classes).cpu()


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "hydra-core", "omegaconf", "da-train"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed heap memory in the process (Linux; a no-op elsewhere).

    PyTorch's CPU allocator frees each step's activations; by default glibc serves large
    blocks with mmap/munmap and trims the heap top, so the next step page-faults fresh,
    zeroed pages again. Measured with scripts/bench.py on a 2-core CPU this costs 20-25% of a
    DANN step. A fixed 32 MiB mmap threshold (the largest glibc accepts) and a 1 GiB trim
    threshold keep those pages. Returns True when both settings were accepted.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
        return bool(libc.mallopt(m_mmap_threshold, 32 * 2**20)
                    and libc.mallopt(m_trim_threshold, 2**30))
    except (OSError, AttributeError):
        return False


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (temp file + rename) so a crash never leaves half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save to a temp file, fsync, rename: a kill never leaves a broken checkpoint."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def flat_hparams(cfg) -> dict:
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, name + ".")
            elif isinstance(value, (int, float, str, bool)):
                flat[name] = value
            else:
                flat[name] = str(value)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


class SignalCatcher:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks after each step.

    The loop then saves a checkpoint and stops cleanly; a second signal exits at once.
    Only installed in the main thread (Python's rule for signal handlers).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            os._exit(128 + signum)
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------- trainer
class Trainer:
    def __init__(self, cfg, method: Method, data: DomainPair, run_dir: Path,
                 device: torch.device, overrides: list[str] | None = None):
        self.cfg, self.tcfg = cfg, cfg.trainer
        self.device = device
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        elif self.tcfg.tune_malloc:
            keep_freed_memory()
        self.data = data.to(device)
        self.method = method.to(device)
        if self.tcfg.channels_last:
            self.method.to(memory_format=torch.channels_last)
        if self.tcfg.compile:
            self.method.backbone.features.compile()
            self.method.backbone.classifier.compile()
        self.run_dir = Path(run_dir)
        self.overrides = overrides or []
        self.phases: list[Phase] = method.phases(self.tcfg.steps)
        self.total_steps = sum(p.steps for p in self.phases)
        bs = self.tcfg.batch_size
        self.source_sampler = EpochSampler(len(data.source_train.labels), bs, device,
                                           cfg.seed, stream=0)
        self.target_sampler = EpochSampler(len(data.target_train_images), bs, device,
                                           cfg.seed, stream=1)
        self.step = 0
        self.phase_index = -1
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict = {}
        self.last_eval: dict[str, float] = {}
        # rows: true target class, columns: predicted class (final, full evaluation only)
        self.target_confusion: torch.Tensor | None = None
        self.eval_seconds = 0.0
        self.purge_step: int | None = None

    # ------------------------------------------------------------------ phases
    def _phase_at(self, step: int) -> tuple[int, int]:
        """(phase index, first step of that phase) for global ``step``."""
        start = 0
        for i, phase in enumerate(self.phases):
            if step < start + phase.steps:
                return i, start
            start += phase.steps
        return len(self.phases) - 1, start - self.phases[-1].steps

    def _enter_phase(self, index: int, fresh: bool) -> None:
        """Build the optimisers of phase ``index``; ``fresh`` runs the method's start hook."""
        phase = self.phases[index]
        if fresh:
            self.method.start_phase(phase)
        base = OmegaConf.to_container(self.cfg.optim, resolve=True)
        self.optimizers, self.schedulers = {}, {}
        for update in phase.updates:
            settings = {**base, **self.method.optim_overrides(phase, update)}
            opt = build_optimizer(self.method.parameters_for(phase, update), settings)
            self.optimizers[update] = opt
            self.schedulers[update] = build_scheduler(opt, settings, phase.steps)
        self.phase_index = index

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> None:
        state = {
            "method": self.method.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "step": self.step,
            "phase_index": self.phase_index,
            "samplers": {"source": self.source_sampler.state_dict(),
                         "target": self.target_sampler.state_dict()},
            "rng": rng_state(),
            "last_eval": self.last_eval,
            "target_confusion": self.target_confusion,
            "eval_seconds": self.eval_seconds,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }
        atomic_torch_save(state, self.run_dir / CHECKPOINT)

    def load_checkpoint(self, path: Path) -> None:
        """Restore everything a checkpoint holds, so the run continues bit for bit."""
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.method.load_state_dict(state["method"])
        self.step = state["step"]
        self._enter_phase(state["phase_index"], fresh=False)
        for key, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][key])
            self.schedulers[key].load_state_dict(state["schedulers"][key])
        self.source_sampler.load_state_dict(state["samplers"]["source"])
        self.target_sampler.load_state_dict(state["samplers"]["target"])
        set_rng_state(state["rng"])
        self.last_eval = state["last_eval"]
        self.target_confusion = state.get("target_confusion")
        self.eval_seconds = state["eval_seconds"]
        self.purge_step = self.step + 1

    # ------------------------------------------------------------------ pieces
    def evaluate(self, full: bool = True) -> dict[str, float]:
        """Source and target test accuracy (+ the method's extra target metrics).

        ``full=False`` (intermediate curves) uses the first ``trainer.eval_samples`` test
        images of each domain, so evaluation stays a small share of the run; the final
        evaluation, the one in results.json, always uses the full test splits.
        """
        start = time.perf_counter()
        was_training = self.method.training
        self.method.eval()
        bs, data = self.tcfg.eval_batch_size, self.data
        n = None if full or self.tcfg.eval_samples == 0 else self.tcfg.eval_samples
        src, tgt = data.source_test, data.target_test
        view = self.data.eval_view
        src_logits = predict_all(self.method.predict, src.images[:n], bs, view)
        tgt_logits = predict_all(self.method.predict_target, tgt.images[:n], bs, view)
        tgt_pred = tgt_logits.argmax(1)
        metrics = {
            "source_acc": (src_logits.argmax(1) == src.labels[:n]).float().mean(),
            "target_acc": (tgt_pred == tgt.labels[:n]).float().mean(),
            **self.method.eval_metrics(tgt_logits, tgt.labels[:n]),
        }
        if full:
            self.target_confusion = confusion_matrix(tgt_pred, tgt.labels, tgt_logits.shape[1])
        self.method.train(was_training)
        out = {k: float(v) for k, v in metrics.items()}
        self.eval_seconds += time.perf_counter() - start
        return out

    def _batch(self) -> Batch:
        src, tgt = self.source_sampler(), self.target_sampler()
        data = self.data
        yt = data.target_train_labels[tgt] if self.method.needs_target_labels else None
        return Batch(data.train_view(data.source_train.gather(src)),
                     data.source_train.labels.index_select(0, src),
                     data.train_view(data.target_train_images.index_select(0, tgt)), yt)

    def _train_step(self, sums: dict, first_bad: dict) -> None:
        """One step: every update of the current phase, in order. Nothing here syncs."""
        index, start = self._phase_at(self.step)
        if index != self.phase_index:
            self._enter_phase(index, fresh=True)
        phase = self.phases[index]
        progress = (self.step - start) / phase.steps
        batch = self._batch()
        single = len(phase.updates) == 1
        for update in phase.updates:
            with torch.autocast(self.device.type, dtype=torch.bfloat16,
                                enabled=self.tcfg.amp and self.device.type == "cuda"):
                out = self.method.training_step(update, batch, progress)
            loss = out.loss
            if self.step + 1 == self.tcfg.inject_nan_at:
                loss = loss * float("nan")
            optimizer = self.optimizers[update]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self.schedulers[update].step()
            loss_key = "loss" if single else f"loss_{update}"
            self._accumulate(sums, {loss_key: loss.detach(), **out.logs})
            self._track_non_finite(first_bad, loss_key, loss.detach())

    def _accumulate(self, sums: dict, logs: dict) -> None:
        for key, value in logs.items():
            value = value.detach().float() if torch.is_tensor(value) else float(value)
            total, n = sums.get(key, (0.0, 0))
            sums[key] = (total + value, n + 1)

    def _track_non_finite(self, first_bad: dict, key: str, loss: torch.Tensor) -> None:
        """Remember (on the device, no sync) the first step at which ``key`` was not finite."""
        step = self.step + 1
        bad = first_bad.get(key)
        flag = ~torch.isfinite(loss)
        if bad is None:
            first_bad[key] = torch.where(flag, step, 0)
        else:
            first_bad[key] = torch.where(flag & (bad == 0), step, bad)

    def _check_finite(self, first_bad: dict) -> None:
        bad = {k: int(v) for k, v in first_bad.items() if int(v) > 0}
        if bad:
            key, step = min(bad.items(), key=lambda kv: kv[1])
            raise NonFiniteLossError(
                f"train/{key} became NaN or inf at step {step}; the run stopped and the last "
                f"good checkpoint is kept in {self.run_dir / CHECKPOINT}. Lower optim.lr or the "
                "method's weights (e.g. method.lam), or rerun with trainer.detect_anomaly=true "
                "to find the operation that produced it.")

    # ------------------------------------------------------------------ logging
    def _status(self, status: str, **extra) -> None:
        write_json(self.run_dir / "status.json", {"status": status, "step": self.step, **extra})

    def _log(self, writer, metrics_file, sums: dict, tick: list) -> dict:
        record = {f"train/{k}": float(total / n) for k, (total, n) in sums.items()}
        now = time.perf_counter()
        record["train/steps_per_s"] = (self.step - tick[1]) / max(now - tick[0], 1e-9)
        tick[:] = [now, self.step]
        for update, opt in self.optimizers.items():
            name = "train/lr" if len(self.optimizers) == 1 else f"train/lr_{update}"
            record[name] = opt.param_groups[0]["lr"]
        return record

    def _write(self, writer, metrics_file, record: dict) -> None:
        for key, value in record.items():
            writer.add_scalar(key, value, self.step)
        metrics_file.write(json.dumps({"step": self.step, **record}) + "\n")
        metrics_file.flush()

    def _add_embedding(self, writer) -> None:
        """Source + target test features in the TensorBoard projector (domain, class, image)."""
        n = self.tcfg.embed_samples // 2
        if n == 0:
            return
        feats, meta, images = [], [], []
        with torch.no_grad():
            self.method.eval()
            for domain, split in (("source", self.data.source_test),
                                  ("target", self.data.target_test)):
                x = split.images[:n]
                feats.append(self.method.embed(self.data.eval_view(x), domain)
                             .float().flatten(1).cpu())
                meta += [[domain, str(int(y))] for y in split.labels[:n].cpu()]
                img = x.float().cpu() / 255.0
                images.append(img.expand(-1, 3, -1, -1) if img.shape[1] == 1 else img)
            self.method.train()
        writer.add_embedding(torch.cat(feats), metadata=meta, label_img=torch.cat(images),
                             metadata_header=["domain", "class"], global_step=self.step,
                             tag="features")

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict:
        """Train to the end (or resume to it) and write results.json; see module docstring."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._status("running")
        writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.purge_step)
        start = time.perf_counter()
        with (self.run_dir / "metrics.jsonl").open("a") as metrics_file, SignalCatcher() as sig, \
                torch.autograd.set_detect_anomaly(self.tcfg.detect_anomaly):
            try:
                self._loop(writer, metrics_file, sig)
            finally:
                writer.flush()
        wall = time.perf_counter() - start
        results = self._results(wall)
        self._add_embedding(writer)
        writer.add_hparams(flat_hparams(self.cfg),
                           {"hparam/target_acc": results["target_acc"],
                            "hparam/source_acc": results["source_acc"]},
                           run_name=".", global_step=self.step)
        writer.close()
        write_json(self.run_dir / "results.json", results)
        self._status("completed")
        return results

    def _loop(self, writer, metrics_file, sig: SignalCatcher) -> None:
        tc = self.tcfg
        sums: dict = {}
        first_bad: dict = {}
        bar = tqdm(total=self.total_steps, initial=self.step, desc=self.cfg.method.name,
                   dynamic_ncols=True, disable=None)
        self.method.train()
        tick = [time.perf_counter(), self.step]
        while self.step < self.total_steps:
            self._train_step(sums, first_bad)
            self.step += 1
            bar.update(1)
            done = self.step == self.total_steps
            is_eval = self.step % tc.eval_every == 0 or done or self._phase_ends()
            is_ckpt = self.step % tc.ckpt_every == 0 or done
            if self.step % tc.log_every == 0 or is_eval or is_ckpt or sig.signum:
                self._check_finite(first_bad)
                record = self._log(writer, metrics_file, sums, tick)
                if is_eval:
                    self.last_eval = self.evaluate(full=done)
                    record.update({f"val/{k}": v for k, v in self.last_eval.items()})
                self._write(writer, metrics_file, record)
                bar.set_postfix(self._postfix(record))
                sums = {}
            if is_ckpt or sig.signum:
                self.save_checkpoint()
            if is_eval or is_ckpt:
                tick[:] = [time.perf_counter(), self.step]  # throughput excludes eval and saving
            if sig.signum and not done:
                bar.close()
                writer.flush()
                self._status("interrupted", signal=signal.Signals(sig.signum).name)
                raise RunInterrupted(sig.signum, self.step, self.run_dir)
        bar.close()

    def _phase_ends(self) -> bool:
        """True at the last step of a phase that is not the last (e.g. end of ADDA stage 1)."""
        boundary = 0
        for phase in self.phases[:-1]:
            boundary += phase.steps
            if self.step == boundary:
                return True
        return False

    def _postfix(self, record: dict) -> dict:
        out = {k.split("/")[1]: f"{v:.3f}" for k, v in record.items()
               if k.startswith("train/loss")}
        if self.last_eval:
            out["tgt"] = f"{self.last_eval['target_acc']:.3f}"
        return out

    def _results(self, wall: float) -> dict:
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
        }
