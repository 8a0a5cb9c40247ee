"""Smoke test of scripts/bench.py on the tiny synthetic data root (CPU, no timing checks)."""

import json
import math
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


def bench(args, cwd, timeout=300):
    return subprocess.run([sys.executable, str(BENCH), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_bench_writes_the_figures(tiny_root, tmp_path):
    out = tmp_path / "bench.json"
    proc = bench(["--method", "dann", "--data", "mnist_mnistm", "--device", "cpu",
                  "--steps", "5", "--warmup", "2", "--repeats", "2", "--workers", "0",
                  "--batch-size", "16", "--data-root", str(tiny_root),
                  "--cache-root", str(tiny_root), "--json", str(out)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    for key in ("trainer_steps_per_s", "bound_steps_per_s", "usual_steps_per_s",
                "trainer_samples_per_s", "bound_samples_per_s", "usual_samples_per_s",
                "trainer_over_bound", "trainer_over_usual", "eval_s",
                "trainer_peak_mem_mb", "bound_peak_mem_mb", "usual_peak_mem_mb"):
        assert positive(result[key]), (key, result[key])
    assert result["device"] == "cpu"
    assert result["device_name"] and result["torch_version"] and result["memory_kind"]
    assert result["settings"]["batch_size"] == 16 and result["settings"]["steps"] == 5
    for name in ("trainer", "bound", "usual"):
        rates = result["per_repeat"][name]["steps_per_s"]
        assert len(rates) == 2 and all(positive(r) for r in rates)
        assert math.isclose(result[f"{name}_samples_per_s"],
                            32 * result[f"{name}_steps_per_s"])
    assert 0 < result["eval_share_ref_run"] < 1
    assert "trainer" in proc.stdout and "usual" in proc.stdout  # the printed table
    assert (tiny_root / "mnist_m_built").is_dir()  # MNIST-M was built in the cache root


def test_mmd_table(tmp_path):
    out = tmp_path / "mmd.json"
    proc = bench(["--mmd-table", "--device", "cpu", "--mmd-sizes", "8", "32",
                  "--mmd-dims", "16", "--json", str(out)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| n = m | d | ms") and len(lines) == 2 + 2
    assert lines[2].startswith("| 8 | 16 |") and lines[3].startswith("| 32 | 16 |")
    rows = json.loads(out.read_text())["rows"]
    assert [(r["n"], r["d"]) for r in rows] == [(8, 16), (32, 16)]
    assert all(r["ms"] > 0 and r["peak_extra_mb"] >= 0 for r in rows)


def test_missing_data_exits_2(tmp_path):
    proc = bench(["--device", "cpu", "--steps", "2", "--warmup", "0", "--repeats", "1",
                  "--data-root", str(tmp_path / "nowhere")], cwd=tmp_path)
    assert proc.returncode == 2
    assert "MNIST files not found" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_arguments_exit_2(tmp_path):
    for args in (["--steps", "0"], ["--device", "tpu"], ["--override", "trainer.steps=5"]):
        proc = bench(args, cwd=tmp_path)
        assert proc.returncode == 2, args
        assert "usage:" in proc.stderr and "error:" in proc.stderr


def test_pipeline_bench_writes_the_issue_keys(tmp_path):
    """`bench.py --pipeline folders` on a tiny generated folder pair: the JSON keys the
    README and docs/performance.md quote, positive rates, and the settings it ran with."""
    out = tmp_path / "pipe.json"
    proc = bench(["--pipeline", "folders", "--per-domain", "24", "--width", "48",
                  "--height", "40", "--classes", "3", "--batch", "4", "--batches", "3",
                  "--image-size", "24", "--cache-size", "32", "--workers", "0",
                  "--threads", "1", "--json", str(out)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    for key in ("pipeline_batches_per_s", "usual_pipeline_batches_per_s", "cache_build_s",
                "cache_load_s", "speedup"):
        assert positive(result[key]), (key, result[key])
    assert result["speedup"] == result["pipeline_batches_per_s"] / result[
        "usual_pipeline_batches_per_s"]
    assert result["settings"]["threads"] == 1 and result["settings"]["image_size"] == 24
    assert isinstance(result["settings"]["malloc_tuned"], bool)
