"""The Markdown report: legends, the results table, per-seed, selection and problem sections.

:func:`to_markdown` assembles the page in this order: title, legend, results table, notes,
per-seed table, the selection analysis (``--selection``), failed or unfinished runs, then the
hand-written appendix (``--notes FILE``). The same text is printed and written by ``--md``.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from .group import group_runs
from .selection import selection_rows, selection_scopes

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
CARRIED_MARK = "†"


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


def selection_section(completed) -> list[str]:
    """The '## Model selection without target labels' section (``--selection``)."""
    from ..selection import DIRECTIONS  # lazy: imports torch, needed only here

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


def write_markdown(text: str, path) -> None:
    """Write the Markdown report, creating the parent folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
