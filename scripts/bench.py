#!/usr/bin/env python
"""Training throughput of da-train against a compute bound and the usual PyTorch pipeline.

Three measurements of the same method (same networks, same optimiser settings), one process,
one after the other:

1. ``trainer``: the real :class:`da_train.trainer.Trainer` (index sampling on the device,
   method losses, optimiser and lr schedule, NaN tracking, metrics.jsonl/TensorBoard logging)
   run into a temporary folder; the figures are the ``train/steps_per_s`` the trainer itself
   logs, one log interval per timed repeat (evaluation and checkpointing are excluded by the
   trainer). The warm-up steps form their own log interval, which is dropped.
2. ``bound``: the trainer's own step (``Trainer.optimise``: forward, backward, optimiser and
   lr step) on one fixed, already normalised source batch and one fixed target batch on the
   device, in a bare loop: no sampling, no normalisation, no logging. No training loop can be
   faster than this.
3. ``usual``: what common reference implementations do: torchvision-style datasets that
   return a PIL image per sample, ``Compose([ToTensor(), Normalize(mean, std)])``, two
   shuffled ``DataLoader`` s (``--workers`` processes each) zipped together, a host->device
   copy per batch, then the same ``Trainer.optimise`` step as 2.
4. ``graph_bound`` (CUDA only): the step body of 2 captured once as a CUDA graph and
   replayed in a bare loop, the bound for ``trainer.cuda_graph=true`` (da_train/graph.py);
   ``trainer_over_graph_bound`` is the trainer's share of it.

Each is timed ``--repeats`` times over ``--steps`` steps after ``--warmup`` steps; the median
is reported. One step is one source batch plus one target batch (``2 x --batch-size``
samples). Evaluation (``Trainer.evaluate`` on the full source and target test splits) is
timed separately.

``--mmd-table`` instead times ``da_train.losses.mmd.mmd2`` (rbf, 5 kernels) forward + backward
for several batch and feature sizes and prints a Markdown table.

Examples::

    python scripts/bench.py --method dann --data mnist_mnistm --device cpu --steps 300 \\
        --json bench.json
    python scripts/bench.py --device cuda --override trainer.amp=true
    python scripts/bench.py --mmd-table --device cpu
    python scripts/bench.py --pipeline folders --json out.json   # see scripts/bench_pipeline.py

Exit status: 0 on success, 2 for bad arguments, a rejected config or missing data.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import re
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Keys the benchmark sets itself; an --override of one of them would change what is measured.
RESERVED_KEYS = {
    "method": "--method", "data": "--data", "data.root": "--data-root",
    "data.cache_root": "--cache-root", "data.download": None, "trainer.device": "--device",
    "trainer.batch_size": "--batch-size", "trainer.steps": "--steps/--warmup/--repeats",
    "trainer.log_every": "--steps", "trainer.eval_every": None, "trainer.ckpt_every": None,
    "trainer.embed_samples": None, "trainer.resume": None,
}

#: Evaluations in the reference run used for the evaluation share (10,000 steps, evaluation
#: every 1,000 steps, counted as 11 to stay on the safe side: the trainer does 10).
REF_RUN_STEPS, REF_RUN_EVALS = 10_000, 11


class BenchError(Exception):
    """A problem the user can fix (missing data, rejected config); exit status 2."""


# ---------------------------------------------------------------------------- arguments
def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def nonneg_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="dann", help="method config name (default: dann)")
    p.add_argument("--data", default="mnist_mnistm", help="data config name (default: "
                   "mnist_mnistm)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--steps", type=positive_int, default=300,
                   help="timed steps per repeat (default: 300)")
    p.add_argument("--warmup", type=nonneg_int, default=20,
                   help="untimed steps before the timed ones (default: 20)")
    p.add_argument("--repeats", type=positive_int, default=3,
                   help="timed repeats; the median is reported (default: 3)")
    p.add_argument("--batch-size", type=positive_int, default=64,
                   help="samples per domain per step (default: 64)")
    p.add_argument("--data-root", default=os.environ.get("DA_DATA_ROOT", "data"),
                   help="data.root (default: $DA_DATA_ROOT or ./data)")
    p.add_argument("--cache-root", default=None,
                   help="data.cache_root, where the built MNIST-M is cached (default: "
                   "the data root)")
    p.add_argument("--workers", type=nonneg_int, default=2,
                   help="DataLoader workers per domain for the usual pipeline (default: 2)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Hydra override, e.g. trainer.amp=true (repeatable)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE",
                   help="also write the figures to FILE")
    p.add_argument("--tune-malloc", action="store_true",
                   help="glibc only: make malloc keep freed memory (mallopt M_MMAP_THRESHOLD "
                   "32 MiB, M_TRIM_THRESHOLD 1 GiB) to see the cost of page faults (see "
                   "docs/performance.md); off by default, as da-train does not do it")
    p.add_argument("--mmd-table", action="store_true",
                   help="time da_train.losses.mmd.mmd2 instead (Markdown table)")
    p.add_argument("--mmd-sizes", type=positive_int, nargs="+", default=[64, 256, 1024, 2048],
                   metavar="N", help="batch sizes n = m for --mmd-table")
    p.add_argument("--mmd-dims", type=positive_int, nargs="+", default=[128, 1200, 4096],
                   metavar="D", help="feature sizes for --mmd-table")
    return p


def check_overrides(parser: argparse.ArgumentParser, overrides: list[str]) -> None:
    for item in overrides:
        if "=" not in item:
            parser.error(f"--override {item!r}: expected KEY=VALUE, e.g. trainer.amp=true")
        key = item.split("=", 1)[0].lstrip("+~")
        if key in RESERVED_KEYS:
            option = RESERVED_KEYS[key]
            how = f"use {option}" if option else "the benchmark sets it itself"
            parser.error(f"--override {item!r}: {key} cannot be overridden here ({how}).")


# ---------------------------------------------------------------------------- helpers
def tune_malloc() -> bool:
    """The trainer's glibc setting (da_train.trainer.keep_freed_memory), process-wide."""
    from da_train.runtime import keep_freed_memory

    return keep_freed_memory()


def sync(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def _proc_status_kb(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


class PeakMemory:
    """Peak memory during one measurement.

    - CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``: bytes held
      by tensors (data on the device, weights, optimiser state, activations).
    - CPU: the peak resident set size of this process (``VmHWM`` of /proc/self/status, reset
      at the start through /proc/self/clear_refs), i.e. the whole process: Python, torch,
      the datasets in memory and the measurement's own tensors. Where the reset is not
      possible, ``resource.getrusage`` max RSS, the peak over the process' life so far.
      DataLoader worker processes are not included.
    """

    def __init__(self, device):
        self.device = device
        self.kind = ""
        self.start_bytes = 0

    def start(self) -> None:
        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
            self.kind = "cuda max_memory_allocated"
            return
        self.start_bytes = (_proc_status_kb("VmRSS") or 0) * 1024
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.kind = "cpu peak RSS of the bench process (VmHWM, reset per measurement)"
        except OSError:
            self.kind = "cpu getrusage max RSS (peak over the process' life so far)"

    def stop(self) -> dict:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.kind.startswith("cpu peak RSS"):
            peak = (_proc_status_kb("VmHWM") or 0) * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
        return {"peak_mb": peak / 2**20,
                "extra_mb": max(peak - self.start_bytes, 0) / 2**20,
                "kind": self.kind}


def minor_faults() -> int:
    """Minor page faults of this process so far (fresh memory pages the kernel handed in)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed_repeats(run_steps, device, warmup: int, steps: int,
                  repeats: int) -> tuple[list[float], float]:
    """steps/s of ``repeats`` calls of ``run_steps(steps, offset)`` after a warm-up call,
    and the minor page faults per timed step."""
    if warmup:
        run_steps(warmup, 0)
    sync(device)
    rates = []
    faults = minor_faults()
    for r in range(repeats):
        start = time.perf_counter()
        run_steps(steps, warmup + r * steps)
        sync(device)
        rates.append(steps / (time.perf_counter() - start))
    return rates, (minor_faults() - faults) / (repeats * steps)


@contextlib.contextmanager
def quiet_stderr():
    """Silence the C++ profiler's start/stop chatter on file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def compose_config(args, extra: list[str]):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from da_train.config import register_schema

    register_schema()
    overrides = [f"method={args.method}", f"data={args.data}", f"data.root={args.data_root}",
                 f"data.cache_root={args.cache_root or args.data_root}", "data.download=false",
                 f"trainer.device={args.device}", f"trainer.batch_size={args.batch_size}",
                 *args.override, *extra]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="da_train.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
    except Exception as err:  # Hydra/OmegaConf report a rejected override in many types
        raise BenchError(f"the configuration was rejected: {err}") from err
    return cfg, overrides


# ---------------------------------------------------------------------------- 1. trainer
def plan_trainer_steps(steps: int, warmup: int, repeats: int) -> int:
    """trainer.steps so that the warm-up ends on a log boundary (a multiple of ``steps``)."""
    return (math.ceil(warmup / steps) + repeats) * steps


def measure_trainer(args, cfg, overrides, data, device, mem: PeakMemory) -> dict:
    from da_train.methods import build_method
    from da_train.models import build_backbone
    from da_train.trainer import Trainer

    backbone = build_backbone(cfg.backbone, data.num_classes, data.input_shape)
    method = build_method(cfg.method, backbone, data.num_classes)
    with tempfile.TemporaryDirectory(prefix="da-bench-") as run_dir:
        trainer = Trainer(cfg, method, data, Path(run_dir), device, overrides)
        total = trainer.total_steps  # a multi-phase method (ADDA) sets its own length
        timed_from = total - args.repeats * args.steps
        warm_from = timed_from - args.warmup
        last_phase = trainer.phases[-1]
        last_from = total - last_phase.steps
        if total % args.steps or warm_from < last_from:
            raise BenchError(
                f"{cfg.method.name} runs {total} steps, its last phase ({last_phase.name}) "
                f"{last_phase.steps}: the timed window (warm-up {args.warmup} + {args.repeats} x "
                f"{args.steps} steps) must fit in the last phase and --steps must divide the "
                "total; change --steps/--warmup/--repeats or the method's phase lengths.")
        # One evaluation first, timed: the first (cold) evaluation of a process. A real run
        # spends 90% of its steps after its first evaluation (step 1,000), and the bound and
        # usual measurements run after one too, so all three see a similar heap history.
        sync(device)
        start = time.perf_counter()
        trainer.evaluate()
        eval_first_s = time.perf_counter() - start
        # Start the run so that the warm-up is one log interval of its own and every timed
        # repeat is exactly one log interval: the trainer logs when step % log_every == 0.
        trainer.step = warm_from
        mem.start()
        faults = minor_faults()
        results = trainer.fit()
        faults = minor_faults() - faults
        memory = mem.stop()
        records = [json.loads(line) for line in
                   (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
        # one record per timed repeat (log_every = --steps); a record at an evaluation step in
        # between (the trainer evaluates at least 5 times per run) is not a repeat
        rates = [r["train/steps_per_s"] for r in records
                 if r["step"] > timed_from and r["step"] % args.steps == 0]
        if len(rates) != args.repeats:
            raise RuntimeError(f"expected {args.repeats} timed log intervals in metrics.jsonl, "
                               f"found {len(rates)} (steps {[r['step'] for r in records]})")
        sync(device)
        eval_faults = minor_faults()
        start = time.perf_counter()
        metrics = trainer.evaluate()  # reads the accuracies back: ends with a device sync
        eval_s = time.perf_counter() - start
        eval_faults = minor_faults() - eval_faults
        out = {
            "rates": rates, "memory": memory, "eval_s": eval_s, "eval_first_s": eval_first_s,
            "eval_in_run_s": results["eval_time_s"] - eval_first_s, "eval_metrics": metrics,
            # fit() ends with an evaluation: take off the faults of the evaluation after it
            "faults_per_step": max(faults - eval_faults, 0) / (total - warm_from),
            "eval_samples": len(trainer.data.source_test.labels)
            + len(trainer.data.target_test.labels),
            "trainer": trainer, "phase": last_phase,
            "progress_from": (timed_from - last_from) / last_phase.steps,
            "progress_warm_from": (warm_from - last_from) / last_phase.steps,
        }
    return out


# ---------------------------------------------------------------------------- 2 + 3
def rewind(trainer, trained: dict) -> None:
    """Put the trained trainer back at the first warm-up step of the timed window, so the
    bound and usual measurements see the same progress (lr, ramps) as the trainer's run."""
    last_from = trainer.total_steps - trained["phase"].steps
    trainer.step = last_from + round(trained["progress_warm_from"] * trained["phase"].steps)


def fixed_batch(trainer, bs: int):
    """The first ``bs`` source and target training images, normalised, on the device."""
    from da_train.methods import Batch

    pair = trainer.data
    labels = pair.target_train_labels
    return Batch(pair.train_view(pair.source_train.images[:bs]), pair.source_train.labels[:bs],
                 pair.train_view(pair.target_train_images[:bs]),
                 labels[:bs] if trainer.method.needs_target_labels else None)


def measure_bound(args, cfg, data, device, trained: dict, mem: PeakMemory) -> dict:
    trainer = trained["trainer"]
    batch = fixed_batch(trainer, args.batch_size)
    rewind(trainer, trained)
    trainer.method.train()

    def run_steps(n: int, offset: int) -> None:
        for _ in range(n):
            trainer.train_step(batch)  # the trainer's own step on a fixed batch

    mem.start()
    rates, faults = timed_repeats(run_steps, device, args.warmup, args.steps, args.repeats)
    return {"rates": rates, "memory": mem.stop(), "faults_per_step": faults}


def measure_graph_bound(args, cfg, data, device, trained: dict, mem: PeakMemory) -> dict:
    """CUDA only: the trainer's step body (``Trainer.run_updates``, every update of the last
    phase with the fused, tensor-lr optimisers of the graph path) on one fixed batch,
    captured once as a CUDA graph and replayed in a bare loop: no sampling, no schedule, no
    host work at all between replays. What a graph-captured step can reach on this GPU."""
    import torch

    from da_train.graph import WARMUP

    trainer = trained["trainer"]
    batch = fixed_batch(trainer, args.batch_size)
    rewind(trainer, trained)
    trainer.method.train()
    trainer.build_optimizers(trainer.phase_index, fresh=False, device_lr=True)
    phase = trainer.phases[trainer.phase_index]
    progress = torch.full((), trained["progress_warm_from"], dtype=torch.float64, device=device)
    step = torch.full((), trainer.step + 1, dtype=torch.long, device=device)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(WARMUP):
            trainer.run_updates(phase, batch, progress, step)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        trainer.run_updates(phase, batch, progress, step)

    def run_steps(n: int, offset: int) -> None:
        for _ in range(n):
            graph.replay()

    mem.start()
    rates, faults = timed_repeats(run_steps, device, args.warmup, args.steps, args.repeats)
    return {"rates": rates, "memory": mem.stop(), "faults_per_step": faults}


class TensorImages:
    """A torchvision-style dataset over a uint8 ``N x C x H x W`` tensor.

    Returns ``(PIL image, label)`` per sample, like the usual MNIST-M datasets do (``label``
    is -1 when the labels are not loaded).
    """

    def __init__(self, images, labels, transform):
        import numpy as np

        arr = images.cpu().numpy()
        # HWC (or HW for one channel) once, as those datasets keep their arrays
        self.arr = np.ascontiguousarray(arr.transpose(0, 2, 3, 1) if arr.shape[1] == 3
                                        else arr[:, 0])
        self.labels = None if labels is None else labels.cpu().numpy()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.arr)

    def __getitem__(self, i: int):
        from PIL import Image

        image = self.transform(Image.fromarray(self.arr[i]))
        return image, -1 if self.labels is None else int(self.labels[i])


def usual_datasets(args, cfg, data):
    """(source, target) datasets returning PIL images through ToTensor + Normalize."""
    from torchvision import datasets, transforms

    from da_train.data import DataError

    channels = data.input_shape[0]
    norm = transforms.Normalize((0.5,) * channels, (0.5,) * channels)  # same x/127.5 - 1
    to_tensor = transforms.Compose([transforms.ToTensor(), norm])
    if cfg.data.name == "mnist_mnistm":
        source_tf = transforms.Compose([transforms.Pad(2), transforms.Grayscale(3),
                                        transforms.ToTensor(), norm])
        try:
            source = datasets.MNIST(str(cfg.data.root), train=True, download=False,
                                    transform=source_tf)
        except RuntimeError as err:
            raise DataError(
                f"torchvision.datasets.MNIST found no MNIST in {cfg.data.root}/MNIST/raw ({err}); "
                "the usual pipeline needs the uncompressed IDX files there (gunzip the *.gz "
                "files).") from err
        source_kind = "torchvision.datasets.MNIST + Pad(2) + Grayscale(3)"
    else:
        source = TensorImages(data.source_train.images, data.source_train.labels, to_tensor)
        source_kind = "uint8 tensor -> PIL dataset"
    target = TensorImages(data.target_train_images, data.target_train_labels, to_tensor)
    for name, ds in (("source", source), ("target", target)):
        if len(ds) < args.batch_size:
            raise BenchError(f"the {name} training split has {len(ds)} samples, fewer than "
                             f"--batch-size {args.batch_size}.")
    return source, target, source_kind


def forever(loader):
    """Batches without end; a fresh iterator (and fresh workers) per epoch, as usual."""
    while True:
        yield from loader


def measure_usual(args, cfg, data, device, trained: dict, mem: PeakMemory) -> dict:
    from torch.utils.data import DataLoader

    from da_train.methods import Batch

    trainer = trained["trainer"]
    source, target, source_kind = usual_datasets(args, cfg, data)
    loaders = [DataLoader(ds, batch_size=args.batch_size, shuffle=True, drop_last=True,
                          num_workers=args.workers) for ds in (source, target)]
    src_batches, tgt_batches = forever(loaders[0]), forever(loaders[1])
    rewind(trainer, trained)
    needs_yt = trainer.method.needs_target_labels
    trainer.method.train()
    xs, _ = source[0]
    if tuple(xs.shape) != tuple(data.input_shape):
        raise RuntimeError(f"usual pipeline images are {tuple(xs.shape)}, the trainer's "
                           f"{tuple(data.input_shape)}")

    def run_steps(n: int, offset: int) -> None:
        for _ in range(n):
            (xs, ys), (xt, yt) = next(src_batches), next(tgt_batches)
            batch = Batch(xs.to(device), ys.to(device), xt.to(device),
                          yt.to(device) if needs_yt else None)
            trainer.train_step(batch)  # the trainer's own step on the loader's batch

    mem.start()
    try:
        rates, faults = timed_repeats(run_steps, device, args.warmup, args.steps,
                                      args.repeats)
        memory = mem.stop()
    finally:
        src_batches.close()  # ends the loader iterators: shuts the worker processes down
        tgt_batches.close()
        gc.collect()
    return {"rates": rates, "memory": memory, "source_dataset": source_kind,
            "faults_per_step": faults}


# ---------------------------------------------------------------------------- report
def median(values: list[float]) -> float:
    return statistics.median(values)


def run_bench(args) -> dict:
    import torch
    import torchvision

    from da_train.config import validate
    from da_train.data import load_pair
    from da_train.methods import CHOICES, core_of
    from da_train.runtime import device_name, pick_device, seed_everything

    trainer_steps = plan_trainer_steps(args.steps, args.warmup, args.repeats)
    bench_keys = [f"trainer.steps={trainer_steps}", f"trainer.log_every={args.steps}",
                  f"trainer.eval_every={trainer_steps}", f"trainer.ckpt_every={trainer_steps}",
                  "trainer.embed_samples=0"]
    cfg, overrides = compose_config(args, bench_keys)
    validate(cfg)
    device = pick_device(cfg.trainer.device)
    seed_everything(cfg.seed)
    if cfg.method.name not in CHOICES:
        raise BenchError(f"unknown method {cfg.method.name!r}; choices: {', '.join(CHOICES)}.")
    data = load_pair(cfg.data, with_target_labels=core_of(cfg.method.name).needs_target_labels,
                     seed=cfg.seed)
    mem = PeakMemory(device)
    load_start = os.getloadavg()

    log(f"trainer: {args.warmup} warm-up + {args.repeats} x {args.steps} steps on {device}")
    trained = measure_trainer(args, cfg, overrides, data, device, mem)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    log("bound: bare forward/backward/step on a fixed batch")
    bound = measure_bound(args, cfg, data, device, trained, mem)
    log(f"usual: PIL datasets + DataLoader ({args.workers} workers per domain)")
    usual = measure_usual(args, cfg, data, device, trained, mem)
    measured = [("trainer", trained), ("bound", bound), ("usual", usual)]
    if device.type == "cuda":
        log("graph bound: the step body captured once as a CUDA graph, replayed bare")
        measured.append(("graph_bound", measure_graph_bound(args, cfg, data, device, trained,
                                                            mem)))

    per_step = 2 * args.batch_size
    out: dict = {
        "device": str(device),
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "python_version": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "settings": {
            "method": cfg.method.name, "data": cfg.data.name, "batch_size": args.batch_size,
            "samples_per_step": per_step, "steps": args.steps, "warmup": args.warmup,
            "repeats": args.repeats, "workers": args.workers, "overrides": args.override,
            "data_root": str(cfg.data.root), "cache_root": str(cfg.data.cache_root),
            "amp": bool(cfg.trainer.amp), "compile": bool(cfg.trainer.compile),
            "channels_last": bool(cfg.trainer.channels_last),
            "phase": trained["phase"].name, "updates": list(trained["phase"].updates),
            "tune_malloc": args.tune_malloc,
        },
        "usual_source_dataset": usual["source_dataset"],
        # 1-minute load average before and after: a busy shared machine shows up here
        "load_avg_1min": {"start": load_start[0], "end": os.getloadavg()[0]},
        "cpu_count": os.cpu_count(),
        "memory_kind": trained["memory"]["kind"],
        "per_repeat": {},
    }
    for name, res in measured:
        rate = median(res["rates"])
        out[f"{name}_steps_per_s"] = rate
        out[f"{name}_samples_per_s"] = rate * per_step
        out[f"{name}_peak_mem_mb"] = res["memory"]["peak_mb"]
        out[f"{name}_extra_mem_mb"] = res["memory"]["extra_mb"]
        out[f"{name}_minor_faults_per_step"] = res["faults_per_step"]
        out["per_repeat"][name] = {"steps_per_s": res["rates"],
                                   "samples_per_s": [r * per_step for r in res["rates"]]}
    out["trainer_over_bound"] = out["trainer_steps_per_s"] / out["bound_steps_per_s"]
    out["trainer_over_usual"] = out["trainer_steps_per_s"] / out["usual_steps_per_s"]
    if "graph_bound_steps_per_s" in out:
        out["trainer_over_graph_bound"] = (out["trainer_steps_per_s"]
                                           / out["graph_bound_steps_per_s"])
    out["cuda_graph"] = trained["trainer"].graph is not None
    out["eval_s"] = trained["eval_s"]
    out["eval_first_s"] = trained["eval_first_s"]
    out["eval_in_run_s"] = trained["eval_in_run_s"]
    out["eval_samples"] = trained["eval_samples"]
    out["target_acc_after_bench"] = trained["eval_metrics"]["target_acc"]
    train_s = REF_RUN_STEPS / out["trainer_steps_per_s"]
    # the first evaluation of a process is the cold one, the others are like eval_s
    eval_total = out["eval_first_s"] + (REF_RUN_EVALS - 1) * out["eval_s"]
    out["eval_share_ref_run"] = eval_total / (train_s + eval_total)
    out["ref_run"] = {"steps": REF_RUN_STEPS, "evaluations": REF_RUN_EVALS,
                      "train_s": train_s, "eval_s": eval_total}
    return out


def print_report(out: dict) -> None:
    s = out["settings"]
    print(f"\n{s['method']} on {s['data']}, batch {s['batch_size']}+{s['batch_size']}, "
          f"{out['device']} ({out['device_name']}), torch {out['torch_version']}, "
          f"{out['torch_threads']} threads")
    tuned = ", malloc tuned (--tune-malloc)" if s["tune_malloc"] else ""
    print(f"median of {s['repeats']} x {s['steps']} steps after {s['warmup']} warm-up "
          f"steps{tuned}\n")
    print(f"{'pipeline':<9} {'steps/s':>9} {'samples/s':>10} {'trainer/x':>10} "
          f"{'peak MB':>9} {'extra MB':>9} {'faults/step':>12}  per repeat (steps/s)")
    for name in ("trainer", "bound", "usual", "graph_bound"):
        if f"{name}_steps_per_s" not in out:
            continue
        rate = out[f"{name}_steps_per_s"]
        ratio = out["trainer_steps_per_s"] / rate
        reps = ", ".join(f"{r:.1f}" for r in out["per_repeat"][name]["steps_per_s"])
        print(f"{name:<9} {rate:>9.1f} {out[f'{name}_samples_per_s']:>10.0f} {ratio:>10.2f} "
              f"{out[f'{name}_peak_mem_mb']:>9.0f} {out[f'{name}_extra_mem_mb']:>9.0f} "
              f"{out[f'{name}_minor_faults_per_step']:>12.0f}  {reps}")
    graph = (f", trainer/graph bound = {out['trainer_over_graph_bound']:.3f}"
             if "trainer_over_graph_bound" in out else "")
    print(f"\ntrainer/bound = {out['trainer_over_bound']:.3f}, "
          f"trainer/usual = {out['trainer_over_usual']:.2f}{graph} "
          f"(trainer's step {'a CUDA graph' if out['cuda_graph'] else 'eager'})")
    print(f"memory: {out['memory_kind']}; faults/step: minor page faults of the bench process")
    load = out["load_avg_1min"]
    print(f"1-minute load average: {load['start']:.2f} at the start, {load['end']:.2f} at the "
          f"end ({out['cpu_count']} CPUs)")
    ref = out["ref_run"]
    print(f"evaluation ({out['eval_samples']} test images): {out['eval_s']:.2f} s (first of the "
          f"process: {out['eval_first_s']:.2f} s, in the run: {out['eval_in_run_s']:.2f} s); "
          f"a {ref['steps']}-step run with {ref['evaluations']} evaluations spends "
          f"{100 * out['eval_share_ref_run']:.2f}% of its time evaluating")


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- MMD table
def profiled_peak_bytes(fn) -> int:
    """Peak bytes allocated through torch's CPU allocator during ``fn``, above the start.

    From the allocation/free records of ``torch.profiler`` (profile_memory=True), summed in
    time order; counts every tensor torch allocates (distance and kernel matrices, autograd
    buffers, gradients), not Python objects or allocator caching.
    """
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    records = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
               and e.device_type().name == "CPU"]
    level = peak = 0
    for event in sorted(records, key=lambda e: e.start_ns()):
        level += event.nbytes()
        peak = max(peak, level)
    return peak


def rss_peak_bytes(fn) -> int:
    """Fallback: growth of the process' peak RSS during ``fn`` (after returning free heap)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = (_proc_status_kb("VmRSS") or 0) * 1024
    Path("/proc/self/clear_refs").write_text("5")
    fn()
    return max((_proc_status_kb("VmHWM") or 0) * 1024 - before, 0)


def mmd_table(args) -> dict:
    import torch

    from da_train.losses.mmd import mmd2
    from da_train.runtime import device_name, pick_device

    device = pick_device(args.device)
    rows = []
    memory_kind = ("cuda max_memory_allocated above the level before the call"
                   if device.type == "cuda" else
                   "torch CPU allocator peak above the level before the call (torch.profiler "
                   "memory records)")
    for n in args.mmd_sizes:
        for d in args.mmd_dims:
            gen = torch.Generator(device=device).manual_seed(0)
            source = torch.randn(n, d, device=device, generator=gen).requires_grad_()
            target = (torch.randn(n, d, device=device, generator=gen) + 0.5).requires_grad_()

            def once(source=source, target=target):
                value, _ = mmd2(source, target, kernel="rbf", kernel_num=5)
                value.backward()
                source.grad = target.grad = None

            once()  # warm-up
            sync(device)
            times, spent = [], 0.0
            while len(times) < 3 or (spent < 1.0 and len(times) < 50):
                start = time.perf_counter()
                once()
                sync(device)
                times.append(time.perf_counter() - start)
                spent += times[-1]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
                once()
                torch.cuda.synchronize(device)
                peak = torch.cuda.max_memory_allocated(device) - base
            else:
                try:
                    peak = profiled_peak_bytes(once)
                except Exception as err:  # the profiler's record API is not public
                    log(f"torch.profiler memory records unavailable ({err}); using peak RSS")
                    memory_kind = "peak RSS growth of the process (VmHWM) during the call"
                    peak = rss_peak_bytes(once)
            rows.append({"n": n, "m": n, "d": d, "ms": 1000 * statistics.median(times),
                         "repeats": len(times), "peak_extra_mb": peak / 2**20,
                         "dist_matrix_mb": 4 * (2 * n) ** 2 / 2**20})
            del source, target
    return {"device": str(device), "device_name": device_name(device),
            "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
            "kernel": "rbf", "kernel_num": 5, "estimator": "biased",
            "memory_kind": memory_kind, "rows": rows}


def print_mmd_table(out: dict) -> None:
    print(f"\nmmd2 (rbf, {out['kernel_num']} kernels, {out['estimator']}) forward + backward, "
          f"n = m, on {out['device']} ({out['device_name']}), torch {out['torch_version']}\n")
    print("| n = m | d | ms (median) | peak extra MB | one (n+m)^2 float32 matrix MB |")
    print("|---:|---:|---:|---:|---:|")
    for r in out["rows"]:
        print(f"| {r['n']} | {r['d']} | {r['ms']:.2f} | {r['peak_extra_mb']:.1f} | "
              f"{r['dist_matrix_mb']:.1f} |")
    print(f"\npeak extra memory: {out['memory_kind']}")


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["--pipeline", "folders"] or "--pipeline=folders" in argv[:1]:
        # the input pipeline alone, for your own image folders: scripts/bench_pipeline.py
        sys.path.insert(0, str(Path(__file__).parent))
        import bench_pipeline

        bench_pipeline.main(argv[1:] if argv[0] == "--pipeline=folders" else argv[2:])
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    check_overrides(parser, args.override)
    if args.tune_malloc and not tune_malloc():
        parser.error("--tune-malloc needs glibc (libc.so.6 with mallopt)")
    if args.json is not None and args.json.parent and not args.json.parent.is_dir():
        parser.error(f"--json {args.json}: folder {args.json.parent} does not exist")

    from da_train.config import ConfigError
    from da_train.data import DataError

    try:
        if args.mmd_table:
            out = mmd_table(args)
            print_mmd_table(out)
        else:
            out = run_bench(args)
            print_report(out)
    except (BenchError, ConfigError, DataError) as err:
        print(f"bench.py: error: {err}", file=sys.stderr)
        return 2
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
