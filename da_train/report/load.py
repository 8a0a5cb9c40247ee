"""Reading one run folder: a completed run as a flat dict, or a problem row saying why not.

``status.json`` is the authority on whether a run finished: the trainer writes
``results.json`` first and ``status.json`` = completed last. A missing, corrupt or incomplete
file never raises: the run becomes a row of the 'Failed or unfinished runs' table instead of
being dropped or averaged.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from ..runfiles import HYDRA_OVERRIDES, RESULTS, STATUS
from .variants import variant_of

REQUIRED_RESULT_KEYS = ("method", "data", "seed", "target_acc", "source_acc")
ERROR_CHARS = 200


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
    path = folder / HYDRA_OVERRIDES
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise Unreadable(f"{HYDRA_OVERRIDES}: {err}") from err
    if data is None:
        return []
    if not isinstance(data, list):
        raise Unreadable(f"{HYDRA_OVERRIDES}: expected a list of overrides")
    return [str(o) for o in data]


def _is_number(value) -> bool:
    """JSON numbers only: a bool or a string must not slip into a mean."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


def _completed_run(folder: Path, results: dict) -> dict:
    """One completed run as a flat dict; Unreadable if results.json lacks what we need."""
    missing = [k for k in REQUIRED_RESULT_KEYS if k not in results]
    if missing:
        raise Unreadable(f"{RESULTS}: missing {', '.join(missing)}")
    for key in ("target_acc", "source_acc"):
        if not _is_number(results[key]):
            raise Unreadable(f"{RESULTS}: {key} is not a number ({results[key]!r})")
    if not isinstance(results["seed"], (int, str)) or isinstance(results["seed"], bool):
        raise Unreadable(f"{RESULTS}: seed is not an integer ({results['seed']!r})")
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
        # the resolved data and cache folders the run read ({key: path}; older runs: {})
        "data_roots": results.get("data_roots") if isinstance(results.get("data_roots"),
                                                               dict) else {},
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
        status = _read_json(folder / STATUS)
        results = _read_json(folder / RESULTS)
    except Unreadable as err:
        return None, _problem(folder, "unreadable", str(err))
    if status is None and results is None:
        return None, _problem(folder, "unknown", f"no {STATUS} or {RESULTS}: the run "
                              "stopped before training started, or is starting now")
    state = str((status or results).get("status", "completed" if results else "unknown"))
    step = (status or {}).get("step")
    if state != "completed":
        error = (status or {}).get("error") or _why_not_completed(state)
        return None, _problem(folder, state, error, step)
    if results is None:
        return None, _problem(folder, "completed", f"{STATUS} says completed but "
                              f"{RESULTS} is missing", step)
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
