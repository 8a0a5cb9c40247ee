"""The PATH arguments of da-report: check them and find the run folders below them.

A run folder is any directory holding one of :data:`~da_train.runfiles.RUN_MARKERS`
(``status.json``, ``results.json`` or ``.hydra/config.yaml``): da-train writes one into every
run folder, even a failed one. Reading what a folder holds is :mod:`.load`'s job.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..runfiles import RUN_MARKERS


class ReportError(Exception):
    """A problem the user can fix (bad path, nothing to report); shown without a traceback."""


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


def _check_paths(paths: list[str]) -> None:
    """Fail early on a mistyped path rather than report on fewer runs than meant."""
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise ReportError(f"path does not exist: {', '.join(missing)}")
    files = [p for p in paths if not Path(p).is_dir() and not p.endswith(".csv")]
    if files:
        raise ReportError(f"not a folder: {', '.join(files)}; pass the run, sweep or "
                          "outputs folder that contains it, or a results CSV (.csv)")

