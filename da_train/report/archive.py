"""``--archive DIR``: copy the small record of every completed run, so the table survives.

The record is ``results.json``, ``status.json`` and ``.hydra/overrides.yaml`` (a few KB; no
checkpoints or event files), copied into ``DIR/<data>/<method>/<variant hash>/seed_<seed>/``.
Such a folder is a run folder again, so ``da-report DIR`` rebuilds the whole page, per-seed and
selection sections included.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from ..runfiles import HYDRA_OVERRIDES, RESULTS, STATUS

ARCHIVED_FILES = (RESULTS, STATUS, HYDRA_OVERRIDES)


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
    record = (source / RESULTS).read_bytes()
    relative, n = base, 1
    while (archive_dir / relative / RESULTS).is_file() and \
            (archive_dir / relative / RESULTS).read_bytes() != record:
        n += 1
        relative = base.with_name(f"{base.name}-{n}")
    return relative
