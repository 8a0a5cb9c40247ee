"""The ``da-report`` command line: options, the pipeline from PATHs to report, exit codes.

:func:`build_report` runs the steps of the other modules in order (check and find, load,
group, carry CSV rows, plots, archive, Markdown); :func:`main` prints the result and turns a
:class:`~.discover.ReportError` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..runfiles import HYDRA_CONFIG, RESULTS, STATUS
from .archive import archive_runs
from .csvtable import merge_carried, read_carried_rows, write_csv
from .discover import ReportError, _check_paths, find_run_folders
from .group import consistency_notes, summarise
from .load import load_runs
from .markdown import DEFAULT_TITLE, to_markdown, write_markdown

PROG = "da-report"


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
                        help=f"copy the record of every completed run ({RESULTS}, "
                             f"{STATUS}, overrides; a few KB each) into DIR, so the table "
                             "can be rebuilt after the run folders are gone")
    parser.add_argument("--plots", metavar="DIR",
                        help="write PNG figures (accuracy curves, confusion matrices, "
                             "feature scatters) into DIR; needs da-train[plots]")
    return parser.parse_args(argv)


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
            f"directory containing {STATUS}, {RESULTS} or {HYDRA_CONFIG}, as "
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
    from ..plots import PlotsUnavailable, write_figures

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
