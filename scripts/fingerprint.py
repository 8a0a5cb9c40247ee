"""Fingerprints of short fixed-seed CPU runs: the before/after check of a refactor.

For every method (on data=mnist_usps) and every ``experiment=`` preset it runs the real CLI for
a few steps on one CPU thread and records the final accuracies, the last training log line and
a sha256 of the trained parameters (in state-dict order, names ignored, so a renamed module
does not hide a changed number). Two files from two checkouts must be equal::

    DA_DATA_ROOT=../shared/data python scripts/fingerprint.py --out before.json   # old code
    DA_DATA_ROOT=../shared/data python scripts/fingerprint.py --out after.json    # new code
    python scripts/fingerprint.py --compare before.json after.json

(equal: the same parameters, accuracies and values under every log key both runs have.)

``--repo DIR`` runs the da-train package found in DIR (e.g. a ``git worktree`` of the old
commit) instead of the installed one. Needs the real data (``DA_DATA_ROOT``); caches go to a
temporary folder (``DA_CACHE_DIR``), never into the data folder; for a checkout older than
``DA_CACHE_DIR`` add ``--extra 'data.cache_root={cache}'``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

STEPS = 12
SHORT = [f"trainer.steps={STEPS}", "trainer.eval_every=6", "trainer.log_every=6",
         "trainer.ckpt_every=1000", "trainer.embed_samples=0", "trainer.threads=1",
         "trainer.eval_samples=500", "data.download=false", "trainer.progress_every=0"]
ADDA = [f"method.pretrain_steps={STEPS // 2}", f"method.adapt_steps={STEPS // 2}"]


def jobs(repo: Path) -> dict[str, list[str]]:
    conf = repo / "da_train" / "conf"
    out = {}
    for f in sorted((conf / "method").glob("*.yaml")):
        extra = ADDA if f.stem == "adda" else []
        out[f"method={f.stem}"] = [f"method={f.stem}", "data=mnist_usps", *extra]
    for f in sorted((conf / "experiment").glob("*.yaml")):
        extra = ADDA if f.stem.startswith("adda") else []
        out[f"experiment={f.stem}"] = [f"experiment={f.stem}", *extra]
    return out


def param_hash(checkpoint: Path) -> str:
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["method"]
    h = hashlib.sha256()
    for value in state.values():
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def run_one(repo: Path, overrides: list[str], run_dir: Path, cache: Path,
            extra: list[str]) -> dict:
    code = "import sys; from da_train.cli import main; sys.exit(main())"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo),
           "DA_CACHE_DIR": str(cache)}
    cmd = [sys.executable, "-c", code, *overrides, *SHORT, *extra, f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:]}
    results = json.loads((run_dir / "results.json").read_text())
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    last = {k: v for k, v in last.items() if "steps_per_s" not in k}
    return {"target_acc": results["target_acc"], "source_acc": results["source_acc"],
            "last_record": last, "params": param_hash(run_dir / "checkpoint.pt")}


def same(x: dict, y: dict) -> bool:
    """Equal parameters and accuracies, and equal values under every log key both runs have
    (a refactor may log a new key, e.g. a regulariser's weight; it may not change a value)."""
    if "error" in x or "error" in y:
        return x == y
    keys = set(x["last_record"]) & set(y["last_record"])
    return (all(x[k] == y[k] for k in ("params", "target_acc", "source_acc"))
            and all(x["last_record"][k] == y["last_record"][k] for k in keys))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path)
    p.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    p.add_argument("--only", nargs="*", help="job names (e.g. method=vada) to run")
    p.add_argument("--compare", nargs=2, type=Path)
    p.add_argument("--extra", nargs="*", default=[],
                   help="overrides added to every run (e.g. data.cache_root=DIR for a checkout "
                        "older than DA_CACHE_DIR; {cache} is the temporary cache folder)")
    args = p.parse_args()
    if args.compare:
        a, b = (json.loads(f.read_text()) for f in args.compare)
        bad = [k for k in sorted(set(a) & set(b)) if not same(a[k], b[k])]
        for k in bad:
            print(f"DIFFERS {k}:\n  {a[k]}\n  {b[k]}")
        print(f"{len(set(a) & set(b)) - len(bad)} equal, {len(bad)} differ; only in the first: "
              f"{sorted(set(a) - set(b))}; only in the second: {sorted(set(b) - set(a))}")
        return 1 if bad else 0
    if not os.environ.get("DA_DATA_ROOT"):
        sys.exit("set DA_DATA_ROOT to a data folder (e.g. ../shared/data)")
    repo = args.repo.resolve()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(os.environ.get("FINGERPRINT_CACHE", Path(tmp) / "cache"))
        for name, overrides in jobs(repo).items():
            if args.only and name not in args.only:
                continue
            extra = [e.replace("{cache}", str(cache)) for e in args.extra]
            out[name] = run_one(repo, overrides, Path(tmp) / name.replace("=", "_"), cache, extra)
            print(name, out[name].get("target_acc", out[name].get("error")), flush=True)
            if args.out:  # after every job, so an interrupted run keeps what it has
                args.out.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
