"""From completed runs to table rows: one row per (data, method, variant), seeds pooled.

Standard deviations are sample standard deviations (ddof=1) over seeds; a row with a single
seed reports 0.0, which is not an estimate of spread. Each row's keys are the columns of the
results CSV (:data:`.csvtable.CSV_COLUMNS`).
"""

from __future__ import annotations

import shlex
import statistics
from collections import Counter

from ..errors import override_key
from .load import _is_number
from .variants import is_hydra_override


def group_runs(completed) -> dict[tuple[str, str, str], list[dict]]:
    """Runs that differ only by seed (and bookkeeping) share a row, ordered by seed."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for run in completed:
        groups.setdefault(_row_key(run), []).append(run)
    for runs in groups.values():
        runs.sort(key=lambda r: (_seed_key(r["seed"]), str(r["folder"])))
    return groups


def _row_key(row: dict) -> tuple[str, str, str]:
    """What makes a row one row: the same data, method and variant."""
    return row["data"], row["method"], row["variant"]


def _std(values: list[float]) -> float:
    """Sample std (ddof=1); 0.0 for one value, where no spread can be estimated."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _seed_key(seed) -> tuple:
    """Numeric seeds in numeric order (2 before 10), anything else after them as text."""
    return (0, seed, "") if _is_number(seed) else (1, 0, str(seed))


def _unique_seeds(runs) -> list:
    """The row's seeds in order, each once."""
    return sorted(dict.fromkeys(r["seed"] for r in runs), key=_seed_key)


def command_for(runs) -> str:
    """A da-train command that re-runs this row: the first run's overrides over all seeds.

    hydra.* keys and trainer.resume are dropped (they would write into or resume the old
    folder); when no overrides were recorded, method= and data= are spelt out. The resolved
    data and cache folders the run read (results.json ``data_roots``) are spelt out too, so
    the command reads the same data wherever it is run.
    """
    first = runs[0]
    overrides = first["overrides"]
    if overrides is None:
        overrides = [f"method={first['method']}", f"data={first['data']}"]
    keep = [o for o in overrides if override_key(o) not in ("seed", "trainer.resume")
            and not is_hydra_override(o)]
    seeds = _unique_seeds(runs)
    words = ["da-train"] + (["-m"] if len(seeds) > 1 else [])
    given = {override_key(o) for o in keep}
    roots = [f"{k}={v}" for k, v in (first.get("data_roots") or {}).items() if k not in given]
    words += keep + roots + ["seed=" + ",".join(str(s) for s in seeds)]
    return " ".join(shlex.quote(w) for w in words)


def _most_common(values):
    """The value most runs agree on (None if no run recorded one)."""
    present = [v for v in values if v is not None]
    return Counter(present).most_common(1)[0][0] if present else None


def _row(key: tuple[str, str, str], runs: list[dict]) -> dict:
    """One table row from the runs of one (data, method, variant) group."""
    data, method, variant = key
    target = [r["target_acc"] for r in runs]
    source = [r["source_acc"] for r in runs]
    walls = [r["wall_time_s"] for r in runs if r["wall_time_s"] is not None]
    pads = [r["proxy_a_distance"] for r in runs if r.get("proxy_a_distance") is not None]
    devices = sorted({str(r["device_name"]) for r in runs if r["device_name"]})
    return {
        "data": data, "method": method, "seeds": len(runs),
        "target_acc_mean": statistics.fmean(target), "target_acc_std": _std(target),
        "source_acc_mean": statistics.fmean(source),
        "steps": _most_common(r["steps"] for r in runs),
        "wall_s": statistics.fmean(walls) if walls else None,
        "variant": variant, "source_acc_std": _std(source),
        "wall_s_total": sum(walls) if walls else None,
        "oracle": any(r["oracle"] for r in runs), "device_name": "; ".join(devices),
        "command": command_for(runs),
        "target_acc_min": min(target), "target_acc_max": max(target),
        "proxy_a_distance": statistics.fmean(pads) if pads else None,
    }


def summarise(completed) -> list[dict]:
    """Rows keyed by CSV_COLUMNS, sorted by data, then oracle rows last, method, variant."""
    rows = [_row(key, runs) for key, runs in group_runs(completed).items()]
    return sorted(rows, key=_row_order)


def _row_order(row: dict) -> tuple:
    """Table order: by data, then oracle rows last, then method and variant."""
    return row["data"], row["oracle"], row["method"], row["variant"]


def consistency_notes(completed) -> list[str]:
    """Things that make a mean misleading: a seed counted twice, runs of different lengths."""
    notes = []
    for (data, method, variant), runs in sorted(group_runs(completed).items()):
        label = f"{data} / {method}" + (f" [{variant}]" if variant else "")
        repeated = [s for s, n in Counter(str(r["seed"]) for r in runs).items() if n > 1]
        if repeated:
            notes.append(f"{label}: seed {', '.join(repeated)} appears in more than one "
                         "folder; each folder is counted as a run.")
        steps = sorted({r["steps"] for r in runs if r["steps"] is not None})
        if len(steps) > 1:
            notes.append(f"{label}: runs have different step counts "
                         f"({', '.join(map(str, steps))}); the table shows the most common.")
    return notes
