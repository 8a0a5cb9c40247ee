#!/usr/bin/env python
"""Input-pipeline benchmark for image folders: da-train's cached pipeline vs the usual one.

Generates a folder pair of JPEGs (default 2,000 of 500x375 per domain, 10 classes) in a
temporary directory, then times batches per second delivered to the device (no model), for
batches of ``--batch`` source + ``--batch`` target images with the same operations (random
resized crop 224, horizontal flip, ImageNet normalisation):

* ``pipeline``: da-train's ``data=folders`` (the images decoded once into the uint8 cache,
  gathered by index, augmented on the device as a batch); also the first run's cache-build
  time and the second load's (cache hit) time;
* ``usual``: torchvision ``ImageFolder`` + ``DataLoader(num_workers=2)`` + ``transforms``
  (decode every image with PIL in each epoch).

    python scripts/bench_pipeline.py --json out.json                # the full benchmark
    python scripts/bench_pipeline.py --per-domain 300 --json o.json # a quick one
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from da_train.runtime import keep_freed_memory


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--per-domain", type=int, default=2000, help="images per domain (2000)")
    p.add_argument("--width", type=int, default=500, help="JPEG width (500)")
    p.add_argument("--height", type=int, default=375, help="JPEG height (375)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=32, help="images per domain per batch (32)")
    p.add_argument("--batches", type=int, default=30, help="timed batches per pipeline (30)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--cache-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (usual, 2)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads of the main process (0: one per CPU core, as da-train "
                        "uses for a single run and as the usual pipeline's workers use them "
                        "all; on a machine shared with other jobs, 1 avoids OpenMP stalls)")
    p.add_argument("--workdir", default=None, help="keep the images and cache here")
    p.add_argument("--json", default=None, help="write the figures to this file")
    return p.parse_args(argv)


def make_domain(root: Path, n: int, classes: int, size: tuple[int, int], seed: int) -> None:
    """``n`` photo-like JPEGs (smooth random colour fields + noise) in ImageFolder layout."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size

    def one(i):
        folder = root / f"class{i % classes:02d}"
        low = rng.integers(0, 256, (h // 25 + 1, w // 25 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((w, h), Image.BILINEAR)
        arr = np.asarray(img).astype(np.int16) + rng.integers(-20, 20, (h, w, 3))
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg",
                                                                 quality=90)

    for c in range(classes):
        (root / f"class{c:02d}").mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(n)))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_pipeline(src: Path, tgt: Path, cache: Path, args, device) -> dict:
    """da-train's folder pipeline: cache build, cache hit, batches/s on ``device``."""
    from omegaconf import OmegaConf

    from da_train.data import load_pair
    from da_train.data.schemas import FoldersConfig

    cfg = OmegaConf.merge(OmegaConf.structured(FoldersConfig), {
        "source": {"root": str(src)}, "target": {"root": str(tgt)}, "test": "transductive",
        "cache_root": str(cache), "cache_size": args.cache_size, "image_size": args.image_size})
    t0 = time.perf_counter()
    load_pair(cfg)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    pair = load_pair(cfg).to(device)
    hit = time.perf_counter() - t0
    ns, nt = len(pair.source_train.labels), len(pair.target_train_images)

    def batch():
        i = torch.randint(0, ns, (args.batch,), device=device)
        j = torch.randint(0, nt, (args.batch,), device=device)
        return (pair.train_view(pair.source_train.gather(i)),
                pair.train_view(pair.target_train_images.index_select(0, j)))

    for _ in range(3):
        batch()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.batches):
        xs, xt = batch()
    sync(device)
    rate = args.batches / (time.perf_counter() - t0)
    assert xs.shape == (args.batch, 3, args.image_size, args.image_size)
    return {"pipeline_batches_per_s": rate, "cache_build_s": build, "cache_load_s": hit}


def bench_usual(src: Path, tgt: Path, args, device) -> dict:
    """ImageFolder + DataLoader(num_workers) + torchvision transforms, same crop/flip/norm."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    tf = transforms.Compose([
        transforms.RandomResizedCrop(args.image_size), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    loaders = [DataLoader(datasets.ImageFolder(str(root), tf), batch_size=args.batch,
                          shuffle=True, num_workers=args.workers, drop_last=True,
                          pin_memory=device.type == "cuda", persistent_workers=args.workers > 0)
               for root in (src, tgt)]
    it = zip(*(_forever(dl) for dl in loaders), strict=False)

    def batch():
        (xs, _), (xt, _) = next(it)
        return xs.to(device, non_blocking=True), xt.to(device, non_blocking=True)

    for _ in range(2):  # worker start-up is not counted
        batch()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.batches):
        batch()
    sync(device)
    return {"usual_pipeline_batches_per_s": args.batches / (time.perf_counter() - t0)}


def _forever(loader):
    """Batches of ``loader``, epoch after epoch (as a training loop draws them)."""
    while True:
        yield from loader


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    args.threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(args.threads)
    # what the trainer does on a CPU (trainer.tune_malloc=true): without it every batch's
    # fresh 25 MB buffers are page-faulted in again, which made repeats differ by 1.5x
    args.malloc_tuned = device.type == "cpu" and keep_freed_memory()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        src, tgt = work / "images" / "source", work / "images" / "target"
        t0 = time.perf_counter()
        for seed, root in enumerate((src, tgt)):
            if not root.exists():
                make_domain(root, args.per_domain, args.classes, (args.width, args.height), seed)
        print(f"images ready in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        out = bench_pipeline(src, tgt, work / "cache_run_" / str(time.time_ns()), args, device)
        out.update(bench_usual(src, tgt, args, device))
    out["speedup"] = out["pipeline_batches_per_s"] / out["usual_pipeline_batches_per_s"]
    out["settings"] = {k: getattr(args, k) for k in ("per_domain", "width", "height", "batch",
                                                     "batches", "image_size", "cache_size",
                                                     "workers", "device", "threads",
                                                     "malloc_tuned")}
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return out


if __name__ == "__main__":
    main()
