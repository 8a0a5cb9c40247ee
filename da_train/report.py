"""The ``da-report`` command: turn da-train run and sweep folders into one results table.

``da-report outputs/`` finds every run folder below the given paths, groups the completed
runs by (data, method, variant) and prints a Markdown table of mean ± std over seeds. Runs
that did not complete (failed, interrupted, still running, unreadable files) are listed in a
second table instead of being dropped, so a table with fewer seeds than launched never goes
unnoticed. ``--md`` and ``--csv`` write the same results to files.

``--selection`` adds what each validator (a score computed without target labels, recorded
under results.json ``selection``; see :mod:`da_train.selection`) would have picked among the
configurations of a sweep, and what that pick costs against the oracle (best target
accuracy) and the median configuration. ``--plots DIR`` writes PNG figures
(:mod:`da_train.plots`). Neither changes the main table.

Two ways to keep a table when run folders are gone (a new machine, a cleaned disk):

- ``--archive DIR`` copies the small record of every completed run (``results.json``,
  ``status.json`` and ``.hydra/overrides.yaml``, a few KB; no checkpoints or event files)
  into ``DIR/<data>/<method>/<variant hash>/seed_<seed>/``. Such a folder is a run folder
  again, so committing ``DIR`` lets anyone rebuild the whole page, per-seed and selection
  sections included, with ``da-report DIR ...``.
- A results CSV written by ``--csv`` may be passed as a PATH: its rows are *carried* into the
  table (and the new CSV) as they were, marked ``†``, unless a run folder gives a row with
  the same data, method and variant, which replaces it. Carried rows have no per-seed or
  selection details: only their summary survived.

A run folder is any directory holding ``status.json``, ``results.json`` or
``.hydra/config.yaml``. ``status.json`` is the authority on whether a run finished: the
trainer writes ``results.json`` first and ``status.json`` = completed last.

Standard deviations are sample standard deviations (ddof=1) over seeds; a row with a single
seed reports 0.0 in the CSV (and no ``±`` in Markdown), which is not an estimate of spread.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import statistics
import sys
from collections import Counter
from pathlib import Path

import yaml

from .config import override_key

PROG = "da-report"
RUN_MARKERS = ("status.json", "results.json", ".hydra/config.yaml")
CSV_COLUMNS = [
    "data", "method", "seeds", "target_acc_mean", "target_acc_std", "source_acc_mean",
    "steps", "wall_s", "variant", "source_acc_std", "wall_s_total", "oracle", "device_name",
    "command", "target_acc_min", "target_acc_max", "proxy_a_distance",
]
# Override keys that do not change what is trained: grouping ignores them.
BOOKKEEPING_KEYS = {
    "seed", "method", "data", "data.root", "data.cache_root", "data.mnistm_dir",
    "data.download", "trainer.device", "trainer.resume",
}
REQUIRED_RESULT_KEYS = ("method", "data", "seed", "target_acc", "source_acc")
ERROR_CHARS = 200
DEFAULT_TITLE = "da-train results"
LEGEND = (
    "Accuracies are mean ± sample std (ddof=1) over seeds, measured at the final training "
    "step: no model selection or early stopping on target labels. A row with one seed shows "
    "no ± (its std is 0.0 in the CSV, not an estimate). `variant` lists the overrides that "
    "distinguish the row besides method, data and seed. Rows marked (oracle) are trained or "
    "selected (hyper-parameter search with objective=target_acc) "
    "with target labels: they are upper bounds, not UDA results. `wall s` is the mean "
    "wall-clock time per run."
)


PAD_LEGEND = (
    "proxy A-distance: 2 (1 - 2 err) of a linear classifier telling source from target test "
    "features at the end of the run; 0 = the domains look alike to it, 2 = fully separable.")


class ReportError(Exception):
    """A problem the user can fix (bad path, nothing to report); shown without a traceback."""


# ------------------------------------------------------------------------------ discovery
def is_run_folder(path: Path) -> bool:
    """da-train writes one of these markers into every run folder, even a failed one."""
    return any((path / marker).is_file() for marker in RUN_MARKERS)


def find_run_folders(paths) -> list[Path]:
    """Every run folder at or below ``paths`` (recursive), each once, in a stable order.

    Hidden folders (``.hydra``, ``.git``) are not descended into; symlinked folders are not
    followed, so a link cycle cannot hang the search.
    """
    found: dict[Path, Path] = {}
    for top in map(Path, paths):
        for dirpath, dirnames, _ in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            folder = Path(dirpath)
            if is_run_folder(folder):
                found.setdefault(folder.resolve(), folder)
    return sorted(found.values(), key=lambda p: _natural_key(str(p)))


def _natural_key(text: str) -> list:
    """Sort sweep jobs 2_... before 10_... as a person would."""
    return [(0, int(c), "") if c.isdigit() else (1, 0, c) for c in re.split(r"(\d+)", text)]


# ------------------------------------------------------------------------------ loading
class Unreadable(Exception):
    """A run file exists but cannot be parsed; the run is reported, not averaged."""


def _read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, None if the file is absent, Unreadable if corrupt."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise Unreadable(f"{path.name}: {err}") from err
    if not isinstance(data, dict):
        raise Unreadable(f"{path.name}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_overrides(folder: Path, results: dict) -> list[str] | None:
    """The run's command-line overrides: results.json first, else .hydra/overrides.yaml.

    None means no record at all (not the same as a run launched without overrides).
    """
    recorded = results.get("overrides")
    if isinstance(recorded, list) and all(isinstance(o, str) for o in recorded):
        return list(recorded)
    path = folder / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise Unreadable(f".hydra/overrides.yaml: {err}") from err
    if data is None:
        return []
    if not isinstance(data, list):
        raise Unreadable(".hydra/overrides.yaml: expected a list of overrides")
    return [str(o) for o in data]


def is_hydra_override(override: str) -> bool:
    """hydra.* overrides set output folders and launchers, not the experiment."""
    key = override_key(override)
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


def is_bookkeeping(override: str) -> bool:
    """Seed, method/data choice, paths, device and hydra.* keys do not define a variant."""
    return override_key(override) in BOOKKEEPING_KEYS or is_hydra_override(override)


def variant_of(overrides: list[str]) -> str:
    """The overrides that make this run differ from others of the same method and data."""
    return " ".join(sorted(o for o in overrides if not is_bookkeeping(o)))


def short_labels(keys) -> tuple[dict[tuple[str, str], str], str]:
    """Labels that tell ``(method, variant)`` configurations apart without repeating what
    they all share: the method plus the overrides not common to every key (e.g.
    ``dann [method.lam=0.3]`` in a lambda sweep), and the common overrides, once, for a
    caption. Why: a sweep's variants repeat the same preset and step count in every row and
    legend entry, which buries the one key that differs."""
    keys = list(keys)
    tokens = {key: set(key[1].split()) for key in keys}
    common = set.intersection(*tokens.values()) if keys else set()
    labels = {}
    for key in keys:
        rest = " ".join(sorted(tokens[key] - common))
        labels[key] = key[0] + (f" [{rest}]" if rest else "")
    return labels, " ".join(sorted(common))


def _is_number(value) -> bool:
    """JSON numbers only: a bool or a string must not slip into a mean."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


def _completed_run(folder: Path, results: dict) -> dict:
    """One completed run as a flat dict; Unreadable if results.json lacks what we need."""
    missing = [k for k in REQUIRED_RESULT_KEYS if k not in results]
    if missing:
        raise Unreadable(f"results.json: missing {', '.join(missing)}")
    for key in ("target_acc", "source_acc"):
        if not _is_number(results[key]):
            raise Unreadable(f"results.json: {key} is not a number ({results[key]!r})")
    if not isinstance(results["seed"], (int, str)) or isinstance(results["seed"], bool):
        raise Unreadable(f"results.json: seed is not an integer ({results['seed']!r})")
    overrides = _read_overrides(folder, results)
    wall = results.get("wall_time_s")
    steps = results.get("steps")
    method = str(results["method"])
    return {
        "folder": folder,
        "run_dir": str(results.get("run_dir") or ""),
        "data": str(results["data"]),
        "method": method,
        "seed": results["seed"],
        "variant": variant_of(overrides or []),
        "overrides": overrides,
        "target_acc": float(results["target_acc"]),
        "source_acc": float(results["source_acc"]),
        "steps": steps if _is_number(steps) else None,
        "wall_time_s": float(wall) if _is_number(wall) else None,
        "device_name": results.get("device_name") or results.get("device"),
        # trained with target labels, or chosen by them (objective=target_acc in a sweep)
        "oracle": results.get("oracle") is True or results.get("oracle_selection") is True,
        "class_acc": class_accuracies(results.get("target_confusion")),
        "selection": _numbers(results.get("selection")),
        "proxy_a_distance": (float(results["proxy_a_distance"])
                             if _is_number(results.get("proxy_a_distance")) else None),
    }


def _numbers(mapping) -> dict[str, float]:
    """The numeric entries of a results.json mapping (``selection``); {} when absent."""
    if not isinstance(mapping, dict):
        return {}
    return {str(k): float(v) for k, v in mapping.items() if _is_number(v)}


def class_accuracies(confusion) -> list[float] | None:
    """Per-class target accuracy (recall) from results.json's ``target_confusion``.

    None when the run did not record a usable matrix (older runs): the report then simply
    leaves the class columns out for that run.
    """
    if not isinstance(confusion, list) or not confusion:
        return None
    try:
        rows = [[float(v) for v in row] for row in confusion]
    except (TypeError, ValueError):
        return None
    if any(len(row) != len(rows) for row in rows):
        return None
    return [row[i] / sum(row) if sum(row) else math.nan for i, row in enumerate(rows)]


def _first_line(text, limit: int = ERROR_CHARS) -> str:
    """Error messages can be long tracebacks; a table cell gets the first line only."""
    lines = str(text or "").strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _problem(folder: Path, status: str, error: str, step=None) -> dict:
    """One row of the 'Failed or unfinished runs' table."""
    return {"folder": str(folder), "status": status, "error": _first_line(error), "step": step}


def _load_one(folder: Path) -> tuple[dict | None, dict | None]:
    """(completed run, None) or (None, problem) for one run folder."""
    try:
        status = _read_json(folder / "status.json")
        results = _read_json(folder / "results.json")
    except Unreadable as err:
        return None, _problem(folder, "unreadable", str(err))
    if status is None and results is None:
        return None, _problem(folder, "unknown", "no status.json or results.json: the run "
                              "stopped before training started, or is starting now")
    state = str((status or results).get("status", "completed" if results else "unknown"))
    step = (status or {}).get("step")
    if state != "completed":
        error = (status or {}).get("error") or _why_not_completed(state)
        return None, _problem(folder, state, error, step)
    if results is None:
        return None, _problem(folder, "completed", "status.json says completed but "
                              "results.json is missing", step)
    try:
        return _completed_run(folder, results), None
    except Unreadable as err:
        return None, _problem(folder, "unreadable", str(err), step)


def _why_not_completed(state: str) -> str:
    """A hint for statuses written without an error message."""
    if state == "running":
        return "still running, or killed before it could record a final status"
    return ""


def load_runs(folders) -> tuple[list[dict], list[dict]]:
    """Split run folders into completed runs and problems; a bad file never raises."""
    completed, problems = [], []
    for folder in folders:
        run, problem = _load_one(Path(folder))
        if run is not None:
            completed.append(run)
        else:
            problems.append(problem)
    return drop_archived_copies(completed), problems


def drop_archived_copies(completed) -> list[dict]:
    """One entry per run when both a run folder and its archived record (``--archive``) are
    reported. A copy holds the same results.json, so the same ``run_dir``, seed, accuracies
    and wall time identify it (results of older runs have no ``run_dir``; the rest still
    does). The original folder wins: it also has the event files that ``--plots`` reads."""
    chosen: dict[tuple, dict] = {}
    for run in completed:
        identity = tuple(str(run[k]) for k in ("run_dir", "data", "method", "variant", "seed",
                                               "target_acc", "source_acc", "wall_time_s"))
        is_original = bool(run["run_dir"]) and (
            Path(run["folder"]).resolve() == Path(run["run_dir"]).resolve())
        if identity not in chosen or is_original:
            chosen[identity] = run
    kept = {id(run) for run in chosen.values()}
    return [run for run in completed if id(run) in kept]


# ------------------------------------------------------------------------------ summary
def group_runs(completed) -> dict[tuple[str, str, str], list[dict]]:
    """Runs that differ only by seed (and bookkeeping) share a row, ordered by seed."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for run in completed:
        groups.setdefault(_row_key(run), []).append(run)
    for runs in groups.values():
        runs.sort(key=lambda r: (_seed_key(r["seed"]), str(r["folder"])))
    return groups


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
    folder); when no overrides were recorded, method= and data= are spelt out.
    """
    first = runs[0]
    overrides = first["overrides"]
    if overrides is None:
        overrides = [f"method={first['method']}", f"data={first['data']}"]
    keep = [o for o in overrides if override_key(o) not in ("seed", "trainer.resume")
            and not is_hydra_override(o)]
    seeds = _unique_seeds(runs)
    words = ["da-train"] + (["-m"] if len(seeds) > 1 else [])
    words += keep + ["seed=" + ",".join(str(s) for s in seeds)]
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


# ------------------------------------------------------------------------------ carried rows
CARRIED_MARK = "†"
_INT_COLUMNS = ("seeds", "steps")
_TEXT_COLUMNS = ("data", "method", "variant", "device_name", "command")


def _carried_value(column: str, text: str):
    """A CSV cell back as the value write_csv was given (None for an empty cell)."""
    if column in _TEXT_COLUMNS:
        return text
    if column == "oracle":
        return text.strip().lower() == "true"
    if text.strip() == "":
        return None
    return int(float(text)) if column in _INT_COLUMNS else float(text)


def read_carried_rows(path) -> list[dict]:
    """The rows of a results CSV written by ``--csv``, marked ``carried`` (their file).

    Why: the CSV is the committed summary of runs whose folders may no longer exist; reading
    it back keeps those rows in a regenerated table instead of silently dropping them.
    """
    path = Path(path)
    try:
        with path.open(newline="") as handle:
            records = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ReportError(f"cannot read the results CSV {path}: {err}") from err
    header = set(records[0]) if records else set()
    missing = [c for c in CSV_COLUMNS[:7] if c not in header]
    if records and missing:
        raise ReportError(
            f"{path} is not a results CSV written by da-report --csv: it lacks the column(s) "
            f"{', '.join(missing)}. Pass run or sweep folders, or a CSV from `da-report ... "
            "--csv FILE`.")
    rows = []
    for number, record in enumerate(records, start=2):
        try:
            row = {c: _carried_value(c, record.get(c) or "") for c in CSV_COLUMNS}
        except ValueError as err:
            raise ReportError(f"{path}, line {number}: {err}; the file was edited by hand "
                              "or is not a da-report CSV") from err
        rows.append({**row, "carried": str(path)})
    return rows


def _row_key(row: dict) -> tuple[str, str, str]:
    """What makes a row one row: the same data, method and variant."""
    return row["data"], row["method"], row["variant"]


def merge_carried(rows: list[dict], carried: list[dict]) -> list[dict]:
    """``rows`` plus the carried rows that no run folder replaces, in summarise's order."""
    have = {_row_key(r) for r in rows}
    kept = list(rows)
    for row in carried:
        if _row_key(row) not in have:
            have.add(_row_key(row))
            kept.append(row)
    return sorted(kept, key=_row_order)


# ------------------------------------------------------------------------------ archive
ARCHIVED_FILES = ("results.json", "status.json", ".hydra/overrides.yaml")


def archive_folder(run: dict) -> Path:
    """Where a run's record goes, relative to the archive: stable, so re-archiving the
    same run overwrites its record instead of adding a second copy."""
    digest = hashlib.sha1(run["variant"].encode()).hexdigest()[:8]
    return Path(run["data"], run["method"], digest, f"seed_{run['seed']}")


def archive_runs(completed, archive_dir) -> int:
    """Copy the record of each completed run into ``archive_dir``; the number archived.

    Runs already inside the archive are left alone, and archiving a run again overwrites its
    own record. A different run of the same row and seed (a rerun) goes to
    ``seed_<seed>-2``, ... so that no record is ever overwritten by another run's.
    """
    archive_dir = Path(archive_dir)
    root = archive_dir.resolve()
    count = 0
    for run in completed:
        source = Path(run["folder"])
        if source.resolve().is_relative_to(root):
            continue
        target = archive_dir / _free_slot(archive_dir, archive_folder(run), source)
        for name in ARCHIVED_FILES:
            if (source / name).is_file():
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / name, target / name)
        count += 1
    return count


def _free_slot(archive_dir: Path, base: Path, source: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``, ...: the first slot that is empty or already
    holds this very run (the same results.json)."""
    record = (source / "results.json").read_bytes()
    relative, n = base, 1
    while (archive_dir / relative / "results.json").is_file() and \
            (archive_dir / relative / "results.json").read_bytes() != record:
        n += 1
        relative = base.with_name(f"{base.name}-{n}")
    return relative


# ------------------------------------------------------------------------------ output
def _cell(value) -> str:
    """Markdown-safe table cell: pipes would split the cell, newlines end the table."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _acc(mean: float, std: float, seeds: int) -> str:
    """``0.8176 ± 0.0052``; a single seed has no spread to show."""
    return f"{mean:.4f} ± {std:.4f}" if seeds > 1 else f"{mean:.4f}"


def _fmt(value, spec: str) -> str:
    """Format a number, or an empty cell when no run recorded it."""
    return "" if value is None else format(value, spec)


def _markdown_row(row: dict, pad: bool = False) -> str:
    """One results row as Markdown (with a proxy A-distance cell when ``pad``)."""
    method = row["method"] + (" (oracle)" if row["oracle"] else "")
    cells = [
        row["data"], method, row["variant"],
        f"{row['seeds']}{CARRIED_MARK}" if row.get("carried") else row["seeds"],
        _acc(row["target_acc_mean"], row["target_acc_std"], row["seeds"]),
        _acc(row["source_acc_mean"], row["source_acc_std"], row["seeds"]),
        _fmt(row["steps"], ""), _fmt(row["wall_s"], ".1f"), row["device_name"],
        f"`{row['command']}`",
    ]
    if pad:
        cells.insert(6, _fmt(row.get("proxy_a_distance"), ".3f"))
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _carried_legend(rows) -> list[str]:
    """Say where carried rows come from and what they lack, once per source file."""
    sources = sorted({r["carried"] for r in rows if r.get("carried")})
    if not sources:
        return []
    return ["", f"{CARRIED_MARK} carried from {', '.join(sources)}: the run folders of these "
            "rows were not given to this report, so only their summary is shown; they are not "
            "in the per-seed table or the selection analysis."]


def _problems_table(problems) -> list[str]:
    """The 'Failed or unfinished runs' section, so missing seeds are visible."""
    lines = ["## Failed or unfinished runs", ""]
    if not problems:
        return lines + ["None.", ""]
    lines += ["| folder | status | step | error |", "|---|---|---|---|"]
    for p in problems:
        cells = [p["folder"], p["status"], "" if p["step"] is None else p["step"], p["error"]]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines + [""]


def _seeds_line(runs) -> str:
    """``seed 0: 0.8176, seed 1: 0.8012``: the spread behind a mean, run by run."""
    return ", ".join(f"seed {r['seed']}: {r['target_acc']:.4f}" for r in runs)


def _class_line(runs) -> str:
    """Mean per-class target accuracy over the runs that recorded a confusion matrix."""
    per_run = [r["class_acc"] for r in runs if r.get("class_acc")]
    if not per_run or len({len(c) for c in per_run}) != 1:
        return ""
    means = [statistics.fmean(c[i] for c in per_run) for i in range(len(per_run[0]))]
    return " ".join(f"{i}: {m:.2f}" for i, m in enumerate(means))


def per_seed_section(completed) -> list[str]:
    """Target accuracy of every seed and per class: a mean can hide a bimodal outcome."""
    lines = ["## Per seed and per class (target test split)", "",
             "| data | method | variant | target acc per seed | target acc per class "
             "(mean over seeds) |", "|---|---|---|---|---|"]
    for (data, method, variant), runs in sorted(group_runs(completed).items()):
        cells = [data, method, variant, _seeds_line(runs), _class_line(runs)]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines + [""]


def to_markdown(rows, problems, title: str = DEFAULT_TITLE, notes=(), completed=(),
                appendix: str = "", selection: bool = False) -> str:
    """The whole report: title, legend, results table, notes, per-seed table, the selection
    analysis (``selection``), failed or unfinished runs, then ``appendix`` (hand-written
    Markdown from ``--notes FILE``)."""
    lines = [f"# {title}", "", LEGEND, "", "## Results", ""]
    if rows:
        pad = any(r.get("proxy_a_distance") is not None for r in rows)
        lines += [
            "| data | method | variant | seeds | target acc | source acc | "
            + ("proxy A-dist | " if pad else "") + "steps | wall s | device | command |",
            "|---|---|---|---:|---|---|" + ("---:|" if pad else "") + "---:|---:|---|---|",
        ]
        lines += [_markdown_row(r, pad) for r in rows]
        if pad:
            lines += ["", PAD_LEGEND]
        lines += _carried_legend(rows)
    else:
        lines.append("No completed runs.")
    lines.append("")
    if notes:
        lines += ["Notes:", ""] + [f"- {_cell(n)}" for n in notes] + [""]
    if completed:
        lines += per_seed_section(completed)
    if selection:
        lines += selection_section(completed)
    lines += _problems_table(problems)
    if appendix.strip():
        lines += [appendix.strip(), ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ selection
SELECTION_LEGEND = (
    "What each way of choosing without target labels would have picked. A configuration is "
    "one row of the results table (method + variant, seeds grouped); its score is the mean "
    "over seeds of the validator at the final evaluation (results.json `selection`). "
    "`picked` is the configuration with the best score in the validator's direction; "
    "`target acc` is its mean target test accuracy; `vs oracle` and `vs median` are that "
    "minus the best (the oracle pick, which needs target labels) and minus the median "
    "configuration's accuracy. `rank corr` is Spearman's rho between the score, oriented so "
    "that higher is better, and target accuracy over the configurations (blank with fewer "
    "than 3). Oracle-trained rows are never candidates. The main table is unaffected.")


def selection_scopes(completed) -> list[tuple[str, str, list[dict]]]:
    """(data, scope, configurations) to choose among: each method's variants, then all
    methods of one data pair together. Only scopes with at least two configurations."""
    by_data: dict[str, list[dict]] = {}
    for (data, method, variant), runs in sorted(group_runs(completed).items()):
        if any(r["oracle"] for r in runs):
            continue
        by_data.setdefault(data, []).append(_config(method, variant, runs))
    scopes = []
    for data, configs in by_data.items():
        methods = sorted({c["method"] for c in configs})
        for method in methods:
            mine = [c for c in configs if c["method"] == method]
            if len(mine) > 1:
                scopes.append((data, method, _labelled(mine)))
        if len(methods) > 1:
            scopes.append((data, "all methods", _labelled(configs)))
    return scopes


def _config(method: str, variant: str, runs: list[dict]) -> dict:
    """One candidate: mean target accuracy and mean of each validator over its seeds."""
    names = sorted({n for r in runs for n in r["selection"]})
    scores = {n: statistics.fmean(r["selection"][n] for r in runs if n in r["selection"])
              for n in names if all(n in r["selection"] for r in runs)}
    return {"method": method, "variant": variant, "seeds": len(runs), "scores": scores,
            "target_acc": statistics.fmean(r["target_acc"] for r in runs)}


def _labelled(configs: list[dict]) -> list[dict]:
    """Copies of a scope's configurations with ``label`` (what tells them apart, see
    :func:`short_labels`) and ``shared`` (the overrides all of them have)."""
    labels, shared = short_labels((c["method"], c["variant"]) for c in configs)
    return [{**c, "label": labels[(c["method"], c["variant"])], "shared": shared}
            for c in configs]


def _spearman(scores: list[float], accs: list[float]) -> float | None:
    """Spearman's rho, None when undefined (under 3 points, or a constant column)."""
    if len(scores) < 3 or len(set(scores)) < 2 or len(set(accs)) < 2:
        return None
    from scipy.stats import spearmanr

    return float(spearmanr(scores, accs).statistic)


def selection_rows(configs: list[dict], directions: dict[str, str]) -> list[dict]:
    """One row per validator (plus the oracle): pick, its accuracy, gaps, rank correlation."""
    accs = [c["target_acc"] for c in configs]
    best, median = max(accs), statistics.median(accs)
    oracle = configs[accs.index(best)]
    rows = [{"validator": "oracle (target labels)", "direction": "max", "picked": oracle,
             "n": len(configs), "rho": 1.0 if len(set(accs)) > 1 and len(accs) > 2 else None}]
    for name, direction in directions.items():
        have = [c for c in configs if name in c["scores"]]
        if not have:
            continue
        values = [c["scores"][name] for c in have]
        sign = 1.0 if direction == "max" else -1.0
        pick = max(range(len(have)), key=lambda i: (sign * values[i], -i))
        rows.append({"validator": name, "direction": direction, "picked": have[pick],
                     "n": len(have),
                     "rho": _spearman([sign * v for v in values],
                                      [c["target_acc"] for c in have])})
    for row in rows:
        acc = row["picked"]["target_acc"]
        row.update(target_acc=acc, vs_oracle=acc - best, vs_median=acc - median)
    return rows


def selection_section(completed) -> list[str]:
    """The '## Model selection without target labels' section (``--selection``)."""
    from .selection import DIRECTIONS  # lazy: imports torch, needed only here

    lines = ["## Model selection without target labels", "", SELECTION_LEGEND, ""]
    scopes = selection_scopes(completed)
    if not scopes:
        return lines + ["No data pair has two or more non-oracle configurations to choose "
                        "among.", ""]
    lines += ["| data | scope | validator | better | picked | target acc | vs oracle "
              "| vs median | rank corr | configs |",
              "|---|---|---|---|---|---:|---:|---:|---:|---:|"]
    shared_lines = []
    for data, scope, configs in scopes:
        if configs[0]["shared"]:
            shared_lines.append(f"- {data} / {scope}: every configuration has "
                                f"`{configs[0]['shared']}`")
        for row in selection_rows(configs, DIRECTIONS):
            cells = [data, scope, row["validator"],
                     "higher" if row["direction"] == "max" else "lower",
                     row["picked"]["label"], f"{row['target_acc']:.4f}",
                     f"{row['vs_oracle']:+.4f}", f"{row['vs_median']:+.4f}",
                     _fmt(row["rho"], "+.2f"), row["n"]]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    if shared_lines:
        lines += ["", "`picked` names only what differs within the scope; the rest is shared:",
                  *shared_lines]
    return lines + [""]


def _csv_value(column: str, value) -> str:
    """Fixed precision so CSVs diff cleanly: 4 decimals for accuracies, 1 for seconds."""
    if value is None:
        return ""
    if column.endswith(("_acc_mean", "_acc_std", "_acc_min", "_acc_max", "_distance")):
        return f"{value:.4f}"
    if column.startswith("wall_s"):
        return f"{value:.1f}"
    if column == "oracle":
        return "true" if value else "false"
    return str(value)


def write_csv(rows, path) -> None:
    """The main table as CSV, columns in CSV_COLUMNS order (required ones first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow([_csv_value(c, row[c]) for c in CSV_COLUMNS])


def write_markdown(text: str, path) -> None:
    """Write the Markdown report, creating the parent folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ------------------------------------------------------------------------------ command
def parse_args(argv) -> argparse.Namespace:
    """Command-line options (argparse exits with code 2 on a usage error)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Summarise da-train run and sweep folders as a Markdown (and CSV) "
                    "table of mean ± std over seeds; failed or unfinished runs are listed.")
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="run, sweep or outputs folders (searched recursively), or a "
                             "results CSV from --csv, whose rows are carried over")
    parser.add_argument("--md", metavar="FILE", help="also write the Markdown report here")
    parser.add_argument("--csv", metavar="FILE", help="also write the results table as CSV")
    parser.add_argument("--title", default=DEFAULT_TITLE, help="report title (Markdown)")
    parser.add_argument("--notes", metavar="FILE",
                        help="Markdown file appended to the report (hand-written analysis "
                             "kept apart, so regenerating the report never erases it)")
    parser.add_argument("--selection", action="store_true",
                        help="add the model-selection analysis: what each validator (no "
                             "target labels) would have picked, and its cost vs the oracle")
    parser.add_argument("--archive", metavar="DIR",
                        help="copy the record of every completed run (results.json, "
                             "status.json, overrides; a few KB each) into DIR, so the table "
                             "can be rebuilt after the run folders are gone")
    parser.add_argument("--plots", metavar="DIR",
                        help="write PNG figures (accuracy curves, confusion matrices, "
                             "feature scatters) into DIR; needs da-train[plots]")
    return parser.parse_args(argv)


def _check_paths(paths: list[str]) -> None:
    """Fail early on a mistyped path rather than report on fewer runs than meant."""
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise ReportError(f"path does not exist: {', '.join(missing)}")
    files = [p for p in paths if not Path(p).is_dir() and not p.endswith(".csv")]
    if files:
        raise ReportError(f"not a folder: {', '.join(files)}; pass the run, sweep or "
                          "outputs folder that contains it, or a results CSV (.csv)")


def build_report(args: argparse.Namespace) -> tuple[str, list[dict], list[str], list[str]]:
    """(Markdown, rows, warnings, messages) for the folders named in ``args``; with
    ``--plots`` the figures are drawn and a message says where."""
    _check_paths(args.paths)
    csvs = [p for p in args.paths if not Path(p).is_dir()]
    folders = find_run_folders([p for p in args.paths if Path(p).is_dir()])
    carried = [row for path in csvs for row in read_carried_rows(path)]
    if not folders and not carried:
        raise ReportError(
            f"no run folders found under {', '.join(args.paths)}. A run folder is a "
            "directory containing status.json, results.json or .hydra/config.yaml, as "
            "written by da-train; pass a run folder, a sweep folder or the outputs folder.")
    appendix = _read_notes(args.notes) if args.notes else ""
    completed, problems = load_runs(folders)
    rows = merge_carried(summarise(completed), carried)
    notes = consistency_notes(completed)
    messages = [_write_plots(completed, args.plots)] if args.plots else []
    if args.archive:
        count = archive_runs(completed, args.archive)
        messages.append(f"archived the records of {count} run(s) in {args.archive}")
    markdown = to_markdown(rows, problems, args.title, notes, completed, appendix,
                           selection=args.selection)
    return markdown, rows, notes, messages


def _write_plots(completed, out_dir: str) -> str:
    """Draw the figures; a one-line message for stderr, or ReportError without matplotlib."""
    from .plots import PlotsUnavailable, write_figures

    try:
        written = write_figures(completed, out_dir)
    except PlotsUnavailable as err:
        raise ReportError(str(err)) from err
    return f"wrote {len(written)} figure(s) to {out_dir}"


def _read_notes(path: str) -> str:
    """The --notes file, or a ReportError naming it."""
    try:
        return Path(path).read_text()
    except OSError as err:
        raise ReportError(f"cannot read the --notes file {path}: {err.strerror}; pass an "
                          "existing Markdown file or leave --notes out") from err


def main(argv=None) -> int:
    """Print the report; exit code 0 on success (failed runs included), 2 on user error."""
    args = parse_args(argv)
    try:
        markdown, rows, notes, messages = build_report(args)
        if args.md:
            write_markdown(markdown, args.md)
        if args.csv:
            write_csv(rows, args.csv)
    except (ReportError, OSError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"{PROG}: warning: {note}", file=sys.stderr)
    for message in messages:
        print(f"{PROG}: {message}", file=sys.stderr)
    print(markdown, end="")
    return 0


def cli() -> None:
    """Console-script entry point: exit with main's return code."""
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
