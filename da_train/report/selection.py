"""``--selection``: what each label-free validator would have picked among configurations.

A configuration is one row of the results table (method + variant, seeds pooled); its score
for a validator is the mean over seeds of results.json ``selection`` (the validators and their
directions are :mod:`da_train.selection`'s). The pick is compared with the oracle (best target
accuracy, which needs target labels) and the median configuration. The analysis only: the
section's Markdown is :func:`.markdown.selection_section`.
"""

from __future__ import annotations

import statistics

from .group import group_runs


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
    :func:`da_train.plots.short_labels`) and ``shared`` (the overrides all of them have)."""
    from ..plots import short_labels  # lazy: plots imports numpy, which --help can do without

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
