"""The results CSV (``--csv``): its columns, writing it, and reading it back as carried rows.

A results CSV passed as a PATH is the committed summary of runs whose folders may be gone:
its rows are *carried* into the table as they were, unless a run folder gives a row with the
same data, method and variant, which replaces it. Carried rows have no per-seed or selection
details: only their summary survived.
"""

from __future__ import annotations

import csv
from pathlib import Path

from .discover import ReportError
from .group import _row_key, _row_order

CSV_COLUMNS = [
    "data", "method", "seeds", "target_acc_mean", "target_acc_std", "source_acc_mean",
    "steps", "wall_s", "variant", "source_acc_std", "wall_s_total", "oracle", "device_name",
    "command", "target_acc_min", "target_acc_max", "proxy_a_distance",
]
_INT_COLUMNS = ("seeds", "steps")
_TEXT_COLUMNS = ("data", "method", "variant", "device_name", "command")


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


def merge_carried(rows: list[dict], carried: list[dict]) -> list[dict]:
    """``rows`` plus the carried rows that no run folder replaces, in summarise's order."""
    have = {_row_key(r) for r in rows}
    kept = list(rows)
    for row in carried:
        if _row_key(row) not in have:
            have.add(_row_key(row))
            kept.append(row)
    return sorted(kept, key=_row_order)
