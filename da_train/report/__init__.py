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

One module per step, in the order the command runs them (each imports only earlier ones):

- :mod:`.discover`  -- check the PATH arguments, find run folders; ``ReportError``
- :mod:`.variants`  -- which overrides define a variant (the row key besides method, data)
- :mod:`.load`      -- read one run folder: a completed run, or a problem row saying why not
- :mod:`.group`     -- runs to rows: mean ± std over seeds, re-run command, warnings
- :mod:`.csvtable`  -- the results CSV: columns, writing, carrying rows of an old CSV
- :mod:`.archive`   -- ``--archive``: copy each run's small record
- :mod:`.selection` -- ``--selection``: what each validator would pick, at what cost
- :mod:`.markdown`  -- the Markdown page and its sections
- :mod:`.command`   -- argument parsing, :func:`main` and the console-script :func:`cli`

Figures are :mod:`da_train.plots` (imported by this package, never the other way round);
run-folder file names are :mod:`da_train.runfiles`.
"""

from __future__ import annotations

from ..runfiles import RUN_MARKERS
from .archive import ARCHIVED_FILES, archive_folder, archive_runs
from .command import PROG, build_report, cli, main, parse_args
from .csvtable import CSV_COLUMNS, merge_carried, read_carried_rows, write_csv
from .discover import ReportError, find_run_folders, is_run_folder
from .group import command_for, consistency_notes, group_runs, summarise
from .load import (
    ERROR_CHARS,
    REQUIRED_RESULT_KEYS,
    Unreadable,
    class_accuracies,
    drop_archived_copies,
    load_runs,
)
from .markdown import (
    CARRIED_MARK,
    DEFAULT_TITLE,
    LEGEND,
    PAD_LEGEND,
    SELECTION_LEGEND,
    per_seed_section,
    selection_section,
    to_markdown,
    write_markdown,
)
from .selection import selection_rows, selection_scopes
from .variants import BOOKKEEPING_KEYS, is_bookkeeping, is_hydra_override, variant_of

__all__ = [
    "ARCHIVED_FILES", "BOOKKEEPING_KEYS", "CARRIED_MARK", "CSV_COLUMNS", "DEFAULT_TITLE",
    "ERROR_CHARS", "LEGEND", "PAD_LEGEND", "PROG", "REQUIRED_RESULT_KEYS", "RUN_MARKERS",
    "SELECTION_LEGEND", "ReportError", "Unreadable", "archive_folder", "archive_runs",
    "build_report", "class_accuracies", "cli", "command_for", "consistency_notes",
    "drop_archived_copies", "find_run_folders", "group_runs", "is_bookkeeping",
    "is_hydra_override", "is_run_folder", "load_runs", "main", "merge_carried", "parse_args",
    "per_seed_section", "read_carried_rows", "selection_rows", "selection_scopes",
    "selection_section", "summarise", "to_markdown", "variant_of", "write_csv",
    "write_markdown",
]
