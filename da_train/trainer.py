"""One training loop for every method.

The trainer owns sampling, optimisation, the lr schedule, evaluation, logging and
checkpoints; what is learned is entirely the method's business (see methods/base.py).
Data lives on the training device as uint8 tensors and batches are drawn by index there,
so the loop does no per-sample Python work. Metrics are accumulated on the device and only
read back (``.item()``) at logging intervals.
"""

from __future__ import annotations

import json
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from .config import ConfigError
from .data import DomainPair, normalise
from .methods import Method


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf."""


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


class BatchSampler:
    """Uniform sampling with replacement by index, on the data's own device."""

    def __init__(self, n: int, batch_size: int, device: torch.device, seed: int):
        self.n, self.batch_size = n, batch_size
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.device = device

    def __call__(self) -> torch.Tensor:
        return torch.randint(self.n, (self.batch_size,), generator=self.generator,
                             device=self.device)


def dann_lr_lambda(steps: int, alpha: float, beta: float):
    """lr multiplier 1 / (1 + alpha p)^beta with p = step / steps (DANN annealing)."""
    return lambda step: 1.0 / (1.0 + alpha * step / steps) ** beta


@torch.no_grad()
def accuracy(method: Method, images: torch.Tensor, labels: torch.Tensor,
             batch_size: int) -> float:
    """Top-1 accuracy in large batches; one host sync at the end."""
    was_training = method.training
    method.eval()
    correct = torch.zeros((), dtype=torch.long, device=labels.device)
    for start in range(0, len(images), batch_size):
        x = normalise(images[start: start + batch_size])
        pred = method.predict(x).argmax(1)
        correct += (pred == labels[start: start + batch_size]).sum()
    method.train(was_training)
    return correct.item() / max(1, len(images))


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "hydra-core", "omegaconf", "da-train"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (temp file + rename) so a crash never leaves half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
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


class Trainer:
    def __init__(self, cfg, method: Method, data: DomainPair, run_dir: Path,
                 device: torch.device, overrides: list[str] | None = None):
        self.cfg, self.tcfg = cfg, cfg.trainer
        self.device = device
        self.method = method.to(device)
        self.data = data.to(device)
        self.run_dir = Path(run_dir)
        self.overrides = overrides or []
        ocfg = cfg.optim
        self.optimizer = torch.optim.SGD(self.method.parameters(), lr=ocfg.lr,
                                         momentum=ocfg.momentum, weight_decay=ocfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, dann_lr_lambda(self.tcfg.steps, ocfg.anneal_alpha, ocfg.anneal_beta))
        bs = self.tcfg.batch_size
        self.source_sampler = BatchSampler(len(data.source_train.labels), bs, device, cfg.seed)
        self.target_sampler = BatchSampler(len(data.target_train_images), bs, device,
                                           cfg.seed + 1)
        self.step = 0

    # ------------------------------------------------------------------ pieces
    def evaluate(self) -> dict[str, float]:
        bs = self.tcfg.eval_batch_size
        return {
            "source_acc": accuracy(self.method, self.data.source_test.images,
                                   self.data.source_test.labels, bs),
            "target_acc": accuracy(self.method, self.data.target_test.images,
                                   self.data.target_test.labels, bs),
        }

    def save_checkpoint(self) -> None:
        state = {
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }
        path = self.run_dir / "checkpoint.pt"
        tmp = path.with_suffix(".pt.tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    def _train_step(self, progress: float):
        src_idx, tgt_idx = self.source_sampler(), self.target_sampler()
        xs = normalise(self.data.source_train.images[src_idx])
        ys = self.data.source_train.labels[src_idx]
        xt = normalise(self.data.target_train_images[tgt_idx])
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.tcfg.amp and self.device.type == "cuda"):
            out = self.method.training_step(xs, ys, xt, progress)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return out

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.run_dir / "status.json", {"status": "running"})
        writer = SummaryWriter(str(self.run_dir / "tb"))
        metrics_file = (self.run_dir / "metrics.jsonl").open("a")
        steps, log_every = self.tcfg.steps, self.tcfg.log_every
        sums: dict[str, torch.Tensor] = {}
        count = 0
        last_eval: dict[str, float] = {}
        bar = tqdm(total=steps, desc=f"{self.cfg.method.name}", dynamic_ncols=True,
                   disable=None)
        self.method.train()
        start = time.perf_counter()
        tick, tick_step = start, 0
        while self.step < steps:
            lr = self.optimizer.param_groups[0]["lr"]
            out = self._train_step(self.step / steps)
            self.step += 1
            for key, value in out.logs.items():
                v = value.detach().float()
                sums[key] = sums[key] + v if key in sums else v
            sums["loss"] = sums.get("loss", 0) + out.loss.detach().float()
            count += 1
            bar.update(1)
            is_eval = self.step % self.tcfg.eval_every == 0 or self.step == steps
            if self.step % log_every == 0 or is_eval:
                record = {f"train/{k}": (v / count).item() for k, v in sums.items()}
                if not all(np.isfinite(v) for v in record.values()):
                    bad = [k for k, v in record.items() if not np.isfinite(v)]
                    raise NonFiniteLossError(
                        f"Non-finite value in {', '.join(bad)} at step {self.step}; the last "
                        f"good checkpoint is kept in {self.run_dir / 'checkpoint.pt'}. "
                        "Lower optim.lr or method.lam.")
                now = time.perf_counter()
                record["train/lr"] = lr
                record["train/steps_per_s"] = (self.step - tick_step) / max(now - tick, 1e-9)
                tick, tick_step = now, self.step
                if is_eval:
                    last_eval = self.evaluate()
                    record.update({f"val/{k}": v for k, v in last_eval.items()})
                for key, value in record.items():
                    writer.add_scalar(key, value, self.step)
                metrics_file.write(json.dumps({"step": self.step, **record}) + "\n")
                metrics_file.flush()
                postfix = {"loss": f"{record['train/loss']:.3f}"}
                if last_eval:
                    postfix["tgt"] = f"{last_eval['target_acc']:.3f}"
                bar.set_postfix(postfix)
                sums, count = {}, 0
                if is_eval:
                    self.save_checkpoint()
        bar.close()
        wall = time.perf_counter() - start
        results = {
            "status": "completed",
            "method": self.cfg.method.name,
            "data": self.cfg.data.name,
            "seed": self.cfg.seed,
            "source_acc": last_eval["source_acc"],
            "target_acc": last_eval["target_acc"],
            "steps": self.step,
            "wall_time_s": wall,
            "steps_per_s": self.step / wall,
            "device": str(self.device),
            "device_name": (torch.cuda.get_device_name(self.device)
                            if self.device.type == "cuda" else platform.processor() or "cpu"),
            "versions": package_versions(),
            "overrides": self.overrides,
        }
        writer.add_hparams(flat_hparams(self.cfg),
                           {"hparam/target_acc": results["target_acc"],
                            "hparam/source_acc": results["source_acc"]},
                           run_name=".", global_step=self.step)
        writer.close()
        metrics_file.close()
        write_json(self.run_dir / "results.json", results)
        write_json(self.run_dir / "status.json", {"status": "completed"})
        return results
