"""da-report on synthetic run folders laid out as da-train writes them."""

from __future__ import annotations

import csv
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from da_train.report import (
    CSV_COLUMNS,
    find_run_folders,
    load_runs,
    main,
    summarise,
    to_markdown,
    write_csv,
)

REQUIRED_FIRST = ["data", "method", "seeds", "target_acc_mean", "target_acc_std",
                  "source_acc_mean", "steps", "wall_s"]


def make_run(folder: Path, *, method="dann", data="mnist_mnistm", seed=0, target=0.8,
             source=0.98, extra=(), steps=1000, wall=10.0, status="completed",
             error=None, step=None, oracle=None, results=True, overrides_in_results=True,
             confusion=None, selection=None, pad=None):
    """Write a run folder: .hydra/{config,overrides}.yaml, status.json, results.json."""
    overrides = [f"method={method}", f"data={data}", f"seed={seed}", *extra]
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(f"seed: {seed}\n")
    (folder / ".hydra" / "overrides.yaml").write_text(
        "".join(f"- {o}\n" for o in overrides))
    state = {"status": status}
    if error is not None:
        state["error"] = error
    if step is not None:
        state["step"] = step
    (folder / "status.json").write_text(json.dumps(state))
    if results:
        res = {"status": "completed", "method": method, "data": data, "seed": seed,
               "source_acc": source, "target_acc": target, "steps": steps,
               "wall_time_s": wall, "steps_per_s": steps / wall, "device": "cpu",
               "device_name": "x86_64", "versions": {"torch": "2.14.1"}}
        if overrides_in_results:
            res["overrides"] = overrides
        if oracle is not None:
            res["oracle"] = oracle
        if confusion is not None:
            res["target_confusion"] = confusion
        if selection is not None:
            res["selection"] = selection
        if pad is not None:
            res["proxy_a_distance"] = pad
        (folder / "results.json").write_text(json.dumps(res))
    return folder


@pytest.fixture
def outputs(tmp_path) -> Path:
    """outputs/ with a 3-seed dann sweep, a 2-variant sweep, single runs and broken runs."""
    out = tmp_path / "outputs"
    sweep = out / "multiruns" / "2026-01-01_10-00-00"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    for i, (seed, tgt, src) in enumerate([(0, 0.81, 0.985), (1, 0.82, 0.987), (2, 0.79, 0.99)]):
        make_run(sweep / f"{i}_method=dann,seed={seed}", seed=seed, target=tgt, source=src,
                 wall=100.0 + seed)
    lam = out / "multiruns" / "2026-01-02_10-00-00"
    for i, (value, seed, tgt) in enumerate([(0.3, 0, 0.7), (0.3, 1, 0.72), (1, 0, 0.6)]):
        make_run(lam / f"{i}_method.lam={value},seed={seed}", method="ddc", seed=seed,
                 target=tgt, extra=[f"method.lam={value}", "data.root=/x", "hydra.verbose=1"])
    runs = out / "runs" / "2026-01-03"
    make_run(runs / "10-00_target_only", method="target_only", target=0.96, oracle=True)
    make_run(runs / "11-00_source_only", method="source_only", target=0.55, oracle=False)
    make_run(runs / "12-00_failed", seed=5, status="failed", results=False,
             error="Non-finite value in train/loss at step 40\nsecond line")
    make_run(runs / "13-00_interrupted", seed=6, status="interrupted", step=1234,
             results=False)
    make_run(runs / "14-00_corrupt", seed=7, target=0.0)
    (runs / "14-00_corrupt" / "results.json").write_text('{"status": "completed", "targ')
    make_run(runs / "15-00_noresults", seed=8, results=False)
    return out


def row_for(rows, method, variant=""):
    matches = [r for r in rows if r["method"] == method and r["variant"] == variant]
    assert len(matches) == 1, rows
    return matches[0]


def test_find_run_folders_nested_and_deduplicated(outputs):
    folders = find_run_folders([outputs, outputs / "runs"])
    names = [f.name for f in folders]
    assert len(folders) == 3 + 3 + 6
    assert len(set(f.resolve() for f in folders)) == len(folders)
    assert "0_method=dann,seed=0" in names and "13-00_interrupted" in names
    assert not any(n in ("multiruns", "runs", ".hydra", "2026-01-01_10-00-00") for n in names)
    single = outputs / "runs" / "2026-01-03" / "10-00_target_only"
    assert find_run_folders([single]) == [single]


def test_mean_and_std_over_three_seeds(outputs):
    completed, _ = load_runs(find_run_folders([outputs]))
    row = row_for(summarise(completed), "dann")
    targets, sources = [0.81, 0.82, 0.79], [0.985, 0.987, 0.99]
    assert row["seeds"] == 3
    assert row["target_acc_mean"] == pytest.approx(sum(targets) / 3)
    assert row["target_acc_std"] == pytest.approx(statistics.stdev(targets))
    assert row["target_acc_std"] == pytest.approx(0.015275, abs=1e-6)  # ddof=1, not ddof=0
    assert row["source_acc_mean"] == pytest.approx(sum(sources) / 3)
    assert row["source_acc_std"] == pytest.approx(statistics.stdev(sources))
    assert row["wall_s"] == pytest.approx(101.0)
    assert row["wall_s_total"] == pytest.approx(303.0)
    assert row["steps"] == 1000 and row["device_name"] == "x86_64"
    assert row["command"] == "da-train -m method=dann data=mnist_mnistm seed=0,1,2"
    assert row["oracle"] is False


def test_variants_are_separate_rows_and_bookkeeping_is_ignored(outputs):
    completed, _ = load_runs(find_run_folders([outputs]))
    rows = summarise(completed)
    low = row_for(rows, "ddc", "method.lam=0.3")
    high = row_for(rows, "ddc", "method.lam=1")
    assert low["seeds"] == 2 and low["target_acc_mean"] == pytest.approx(0.71)
    assert high["seeds"] == 1 and high["target_acc_mean"] == pytest.approx(0.6)
    assert high["target_acc_std"] == 0.0 and high["source_acc_std"] == 0.0
    # hydra.* is dropped from the command; data.root is kept so the command finds the data.
    assert low["command"] == ("da-train -m method=ddc data=mnist_mnistm method.lam=0.3 "
                              "data.root=/x seed=0,1")
    assert high["command"] == "da-train method=ddc data=mnist_mnistm method.lam=1 data.root=/x " \
                              "seed=0"


def test_problems_are_listed_and_not_averaged(outputs):
    completed, problems = load_runs(find_run_folders([outputs]))
    assert {r["seed"] for r in completed if r["method"] == "dann"} == {0, 1, 2}
    by_name = {Path(p["folder"]).name: p for p in problems}
    assert set(by_name) == {"12-00_failed", "13-00_interrupted", "14-00_corrupt",
                            "15-00_noresults"}
    assert by_name["12-00_failed"]["status"] == "failed"
    assert by_name["12-00_failed"]["error"] == "Non-finite value in train/loss at step 40"
    assert by_name["13-00_interrupted"]["status"] == "interrupted"
    assert by_name["13-00_interrupted"]["step"] == 1234
    assert by_name["14-00_corrupt"]["status"] == "unreadable"
    assert "results.json" in by_name["14-00_corrupt"]["error"]
    assert by_name["15-00_noresults"]["status"] == "completed"
    assert "results.json is missing" in by_name["15-00_noresults"]["error"]
    # the corrupt run had target 0.0: it must not drag the dann mean down
    assert row_for(summarise(completed), "dann")["seeds"] == 3


def test_error_message_is_truncated(tmp_path):
    make_run(tmp_path / "run", status="failed", results=False, error="x" * 500)
    _, problems = load_runs([tmp_path / "run"])
    assert len(problems[0]["error"]) <= 200 and problems[0]["error"].startswith("xxx")


def test_running_and_missing_fields_are_problems(tmp_path):
    make_run(tmp_path / "a", status="running", results=False)
    make_run(tmp_path / "b")
    res = json.loads((tmp_path / "b" / "results.json").read_text())
    del res["target_acc"]
    (tmp_path / "b" / "results.json").write_text(json.dumps(res))
    (tmp_path / "c" / ".hydra").mkdir(parents=True)
    (tmp_path / "c" / ".hydra" / "config.yaml").write_text("seed: 0\n")
    completed, problems = load_runs(find_run_folders([tmp_path]))
    assert completed == []
    status = {Path(p["folder"]).name: p["status"] for p in problems}
    assert status == {"a": "running", "b": "unreadable", "c": "unknown"}


def test_overrides_fall_back_to_hydra_file(tmp_path):
    make_run(tmp_path / "r", extra=["method.lam=0.5"], overrides_in_results=False)
    completed, _ = load_runs([tmp_path / "r"])
    assert completed[0]["variant"] == "method.lam=0.5"


def test_oracle_marking_and_sort_order(outputs, tmp_path):
    make_run(tmp_path / "o", method="dann", oracle=True, extra=["method.lam=0"])
    completed, problems = load_runs(find_run_folders([outputs, tmp_path / "o"]))
    rows = summarise(completed)
    order = [(r["method"], r["oracle"]) for r in rows]
    assert order == [("dann", False), ("ddc", False), ("ddc", False), ("source_only", False),
                     ("dann", True), ("target_only", True)]
    text = to_markdown(rows, problems, "My title")
    assert text.startswith("# My title\n")
    assert "target_only (oracle)" in text and "source_only (oracle)" not in text
    assert "upper bounds" in text and "no model selection" in text
    dann = row_for(rows, "dann")
    assert f"| {dann['target_acc_mean']:.4f} ± {dann['target_acc_std']:.4f} |" in text
    assert "## Failed or unfinished runs" in text and "13-00_interrupted" in text


def test_csv_columns_and_values(outputs, tmp_path):
    completed, _ = load_runs(find_run_folders([outputs]))
    rows = summarise(completed)
    path = tmp_path / "out" / "table.csv"
    write_csv(rows, path)
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        records = [dict(zip(header, line, strict=True)) for line in reader]
    assert header[:8] == REQUIRED_FIRST and header == CSV_COLUMNS
    assert header[8:] == ["variant", "source_acc_std", "wall_s_total", "oracle",
                          "device_name", "command", "target_acc_min", "target_acc_max",
                          "proxy_a_distance"]
    assert len(records) == len(rows)
    dann = next(r for r in records if r["method"] == "dann")
    assert dann["target_acc_mean"] == f"{statistics.fmean([0.81, 0.82, 0.79]):.4f}"
    assert dann["target_acc_std"] == f"{statistics.stdev([0.81, 0.82, 0.79]):.4f}"
    assert dann["seeds"] == "3" and dann["steps"] == "1000"
    assert dann["wall_s"] == "101.0" and dann["wall_s_total"] == "303.0"
    assert dann["oracle"] == "false" and dann["variant"] == ""
    assert dann["target_acc_min"] == "0.7900" and dann["target_acc_max"] == "0.8200"
    assert dann["proxy_a_distance"] == ""
    oracle = next(r for r in records if r["method"] == "target_only")
    assert oracle["oracle"] == "true" and oracle["target_acc_std"] == "0.0000"


def test_duplicate_seed_is_warned(tmp_path, capsys):
    make_run(tmp_path / "a", seed=0, target=0.8)
    make_run(tmp_path / "b", seed=0, target=0.9)
    assert main([str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "seed 0 appears in more than one folder" in captured.err
    assert "| 2 | 0.8500 ± " in captured.out


def test_main_in_process_errors(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert "path does not exist" in capsys.readouterr().err
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("da-report: error: no run folders found under")
    assert "status.json" in err and ".hydra/config.yaml" in err


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "da_train.report", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def test_cli_subprocess_writes_files_and_exit_codes(outputs, tmp_path):
    md, table = tmp_path / "report.md", tmp_path / "results.csv"
    proc = run_cli(outputs, "--md", md, "--csv", table, "--title", "Digits", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert md.read_text() == proc.stdout
    assert proc.stdout.startswith("# Digits\n")
    assert "12-00_failed" in proc.stdout and "Non-finite value" in proc.stdout
    assert table.read_text().splitlines()[0].startswith(",".join(REQUIRED_FIRST))
    assert len(table.read_text().splitlines()) == 1 + 5

    proc = run_cli(tmp_path / "nope", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("da-report: error: path does not exist")
    assert "Traceback" not in proc.stderr and proc.stdout == ""

    (tmp_path / "empty").mkdir()
    proc = run_cli(tmp_path / "empty", cwd=tmp_path)
    assert proc.returncode == 2 and "no run folders found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_per_seed_and_per_class_section(tmp_path):
    # two seeds that map the target classes in opposite ways: the mean (0.5) hides that
    make_run(tmp_path / "a", method="dann", data="mnist01_23", seed=0, target=0.9,
             confusion=[[90, 10], [10, 90]])
    make_run(tmp_path / "b", method="dann", data="mnist01_23", seed=1, target=0.1,
             confusion=[[10, 90], [90, 10]])
    make_run(tmp_path / "c", method="source_only", data="mnist01_23", seed=0, target=0.6,
             confusion=[[80, 20], [60, 40]])
    make_run(tmp_path / "d", method="ddc", seed=0, target=0.7)  # no matrix recorded
    runs, _ = load_runs(find_run_folders([tmp_path]))
    text = to_markdown(summarise(runs), [], "t", completed=runs)
    section = text.split("## Per seed and per class")[1].split("## Failed")[0]
    lines = {line.split(" | ")[1]: line for line in section.splitlines() if "seed " in line}
    assert "seed 0: 0.9000, seed 1: 0.1000" in lines["dann"]
    assert lines["dann"].endswith("| 0: 0.50 1: 0.50 |")
    assert lines["source_only"].endswith("| 0: 0.80 1: 0.40 |")
    assert lines["ddc"].endswith("| seed 0: 0.7000 |  |")


def test_notes_file_is_appended_and_missing_file_is_an_error(outputs, tmp_path, capsys):
    notes = tmp_path / "analysis.md"
    notes.write_text("## What was tried\n\nLower lr.\n")
    md = tmp_path / "report.md"
    assert main([str(outputs), "--md", str(md), "--notes", str(notes)]) == 0
    assert md.read_text().endswith("## What was tried\n\nLower lr.\n")
    capsys.readouterr()
    assert main([str(outputs), "--notes", str(tmp_path / "nope.md")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("da-report: error: cannot read the --notes file") and "nope.md" in err


def test_oracle_flag_comes_from_results_json_not_the_method_name(tmp_path):
    make_run(tmp_path / "a", method="target_only", target=0.9)            # no flag recorded
    make_run(tmp_path / "b", method="my_oracle", target=0.95, oracle=True)
    rows = summarise(load_runs(find_run_folders([tmp_path]))[0])
    assert {r["method"]: r["oracle"] for r in rows} == {"target_only": False, "my_oracle": True}


def test_proxy_a_distance_column(tmp_path):
    make_run(tmp_path / "a", seed=0, pad=0.5)
    make_run(tmp_path / "b", seed=1, pad=0.7)
    make_run(tmp_path / "c", method="ddc", pad=None)
    rows = summarise(load_runs(find_run_folders([tmp_path]))[0])
    assert row_for(rows, "dann")["proxy_a_distance"] == pytest.approx(0.6)
    assert row_for(rows, "ddc")["proxy_a_distance"] is None
    text = to_markdown(rows, [])
    assert "| proxy A-dist |" in text and "| 0.600 |" in text and "2 (1 - 2 err)" in text
    assert "proxy A-dist" not in to_markdown(summarise(load_runs([tmp_path / "c"])[0]), [])


# ------------------------------------------------------------------------ selection
LAMS = (0.1, 0.3, 1.0, 3.0)
# Mean target accuracy per lambda (seed 0 / seed 1); the oracle is lam=1 (0.85), the median
# of (0.6, 0.75, 0.85, 0.5) is 0.675.
ACC = {0.1: (0.58, 0.62), 0.3: (0.74, 0.76), 1.0: (0.84, 0.86), 3.0: (0.49, 0.51)}
# Validators: entropy (lower is better) is lowest at lam=3 (a collapse: confident and wrong);
# im is highest at lam=1 and ranks every configuration like target accuracy;
# source_val_acc prefers the smallest lambda; dev (lower is better) picks lam=0.3.
SCORES = {
    0.1: {"entropy": 0.5, "im": 1.0, "source_val_acc": 0.99, "dev": 0.40},
    0.3: {"entropy": 0.4, "im": 1.5, "source_val_acc": 0.98, "dev": 0.20},
    1.0: {"entropy": 0.3, "im": 2.0, "source_val_acc": 0.97, "dev": 0.30},
    3.0: {"entropy": 0.1, "im": 0.5, "source_val_acc": 0.90, "dev": 0.90},
}


@pytest.fixture
def lam_sweep(tmp_path) -> Path:
    sweep = tmp_path / "sweep"
    job = 0
    for lam in LAMS:
        for seed in (0, 1):
            scores = {k: v + 0.001 * seed for k, v in SCORES[lam].items()}
            make_run(sweep / f"{job}", method="dann", data="mnist_usps", seed=seed,
                     target=ACC[lam][seed], extra=[f"method.lam={lam}"], selection=scores)
            job += 1
    # An oracle run with the best accuracy of all: never a candidate.
    make_run(sweep / "oracle", method="target_only", data="mnist_usps", target=0.99,
             oracle=True, selection={"entropy": 0.0, "im": 3.0})
    return sweep


def selection_table(text):
    section = text.split("## Model selection without target labels")[1].split("\n## ")[0]
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| mnist")]
    return {(r[1], r[2]): r for r in rows}


def test_selection_picks_gaps_and_rank_correlation(lam_sweep, capsys):
    assert main([str(lam_sweep), "--selection"]) == 0
    out = capsys.readouterr().out
    table = selection_table(out)
    assert set(table) == {("dann", v) for v in
                          ("oracle (target labels)", "entropy", "im", "source_val_acc", "dev")}
    oracle = table[("dann", "oracle (target labels)")]
    assert oracle[4:9] == ["dann [method.lam=1.0]", "0.8500", "+0.0000", "+0.1750", "+1.00"]
    entropy = table[("dann", "entropy")]
    # ranks of -entropy 1,2,3,4 vs accuracy 2,3,4,1: rho = 1 - 6 * 12 / 60 = -0.2
    assert entropy[3:9] == ["lower", "dann [method.lam=3.0]", "0.5000", "-0.3500", "-0.1750",
                            "-0.20"]
    im = table[("dann", "im")]
    assert im[3:9] == ["higher", "dann [method.lam=1.0]", "0.8500", "+0.0000", "+0.1750",
                       "+1.00"]
    assert table[("dann", "source_val_acc")][4:7] == ["dann [method.lam=0.1]", "0.6000",
                                                      "-0.2500"]
    dev = table[("dann", "dev")]
    assert dev[4:6] == ["dann [method.lam=0.3]", "0.7500"]
    # dev oriented (-dev): 0.1 -> -0.4, 0.3 -> -0.2, 1 -> -0.3, 3 -> -0.9; acc order 3,0.1,0.3,1
    assert dev[8] == "+0.80" and dev[9].strip(" |") == "4"
    # The main table is unchanged: one row per lambda, final-step numbers.
    assert "| mnist_usps | dann | method.lam=1.0 | 2 | 0.8500 ± 0.0141 |" in out


def test_selection_rows_function_directly(lam_sweep):
    from da_train.report import selection_rows, selection_scopes
    from da_train.selection import DIRECTIONS

    completed, _ = load_runs(find_run_folders([lam_sweep]))
    [(data, scope, configs)] = selection_scopes(completed)
    assert (data, scope, len(configs)) == ("mnist_usps", "dann", 4)
    rows = {r["validator"]: r for r in selection_rows(configs, DIRECTIONS)}
    assert rows["im"]["rho"] == pytest.approx(1.0)
    assert rows["entropy"]["vs_oracle"] == pytest.approx(-0.35)
    assert "snd" not in rows   # not recorded by any run: no row rather than a guess


def test_selection_across_methods_and_without_candidates(tmp_path, capsys):
    make_run(tmp_path / "a", method="dann", data="p", target=0.7, selection={"im": 1.0})
    make_run(tmp_path / "b", method="ddc", data="p", target=0.8, selection={"im": 0.5})
    assert main([str(tmp_path), "--selection"]) == 0
    table = selection_table(capsys.readouterr().out.replace("| p |", "| mnist_p |"))
    assert table[("all methods", "im")][4:7] == ["dann", "0.7000", "-0.1000"]
    assert table[("all methods", "im")][8] == ""      # two configurations: no rank corr
    only = tmp_path / "only"
    make_run(only / "a", method="dann", data="p", target=0.7)
    assert main([str(only), "--selection"]) == 0
    assert "No data pair has two or more" in capsys.readouterr().out


def test_selection_in_markdown_file_only_when_asked(lam_sweep, tmp_path):
    md = tmp_path / "r.md"
    assert main([str(lam_sweep), "--md", str(md)]) == 0
    assert "Model selection" not in md.read_text()
    assert main([str(lam_sweep), "--md", str(md), "--selection"]) == 0
    assert "## Model selection without target labels" in md.read_text()


def test_plots_without_matplotlib_is_one_clear_error(outputs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    assert main([str(outputs), "--plots", str(tmp_path / "figs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("da-report: error: figures need matplotlib")
    assert 'pip install "da-train[plots]"' in err and err.count("\n") == 1


def test_short_labels_name_what_differs_and_state_the_rest_once():
    from da_train.plots import short_labels

    keys = [("dann", "experiment=p method.lam=0.1 trainer.steps=2000"),
            ("dann", "experiment=p method.lam=1 trainer.steps=2000"),
            ("ddc", "experiment=p trainer.steps=2000")]
    labels, shared = short_labels(keys)
    assert shared == "experiment=p trainer.steps=2000"
    assert [labels[k] for k in keys] == ["dann [method.lam=0.1]", "dann [method.lam=1]", "ddc"]
    assert short_labels([("dann", "")]) == ({("dann", ""): "dann"}, "")


def test_selection_table_names_the_swept_key_and_lists_the_shared_ones(tmp_path, capsys):
    for i, lam in enumerate((0.1, 1.0)):
        make_run(tmp_path / str(i), method="dann", data="mnist_usps", target=0.7 + lam / 10,
                 extra=["experiment=dann_mnist_usps", "trainer.steps=2000",
                        f"method.lam={lam}"], selection={"im": lam})
    assert main([str(tmp_path), "--selection"]) == 0
    out = capsys.readouterr().out
    assert selection_table(out)[("dann", "im")][4] == "dann [method.lam=1.0]"
    assert ("- mnist_usps / dann: every configuration has "
            "`experiment=dann_mnist_usps trainer.steps=2000`") in out


# ------------------------------------------------------------------ carried rows and archive
def csv_records(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_csv_rows_are_carried_and_a_run_folder_replaces_its_row(outputs, tmp_path, capsys):
    old = tmp_path / "old.csv"
    assert main([str(outputs), "--csv", str(old)]) == 0
    before = {(r["method"], r["variant"]): r for r in csv_records(old)}
    new = tmp_path / "new"
    make_run(new / "0", method="bnm", target=0.7)
    make_run(new / "1", method="dann", seed=0, target=0.5)  # replaces the carried dann row
    capsys.readouterr()
    merged = tmp_path / "merged.csv"
    assert main([str(old), str(new), "--csv", str(merged)]) == 0
    out = capsys.readouterr().out
    after = {(r["method"], r["variant"]): r for r in csv_records(merged)}
    assert set(after) == set(before) | {("bnm", "")}
    for key in set(before) - {("dann", "")}:
        assert after[key] == before[key]  # carried exactly, every column
    assert after[("dann", "")]["seeds"] == "1"
    assert after[("dann", "")]["target_acc_mean"] == "0.5000"
    ddc_line = next(line for line in out.splitlines() if "| ddc | method.lam=0.3 |" in line)
    assert "| 2† | 0.7100 ± 0.0141 |" in ddc_line
    assert f"† carried from {old}" in out
    dann_line = next(line for line in out.splitlines()
                     if line.startswith("| mnist_mnistm | dann |"))
    assert "| 1 | 0.5000 |" in dann_line and "†" not in dann_line
    per_seed = out.split("## Per seed")[1].split("##")[0]
    assert "ddc" not in per_seed and "bnm" in per_seed  # carried rows have no per-seed data


def test_a_csv_that_is_not_a_results_table_is_one_clear_error(tmp_path, capsys):
    bad = tmp_path / "scores.csv"
    bad.write_text("name,score\na,1\n")
    assert main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"da-report: error: {bad} is not a results CSV")
    assert "target_acc_mean" in err and "Traceback" not in err
    other = tmp_path / "notes.txt"
    other.write_text("x")
    assert main([str(other)]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_archive_rebuilds_the_same_report_without_the_run_folders(outputs, tmp_path, capsys):
    archive, first, second = tmp_path / "archive", tmp_path / "a.csv", tmp_path / "b.csv"
    assert main([str(outputs), "--archive", str(archive), "--csv", str(first)]) == 0
    from_folders = capsys.readouterr()
    assert "archived the records of 8 run(s)" in from_folders.err
    records = sorted(p.relative_to(archive) for p in archive.rglob("results.json"))
    assert len(records) == 8 and all(p.parts[0] == "mnist_mnistm" for p in records)
    assert not list(archive.rglob("config.yaml"))  # records only, no configs or checkpoints
    assert main([str(archive), "--csv", str(second)]) == 0
    from_archive = capsys.readouterr().out
    assert second.read_text() == first.read_text()
    section = "## Per seed"
    assert from_archive.split(section)[1].split("## Failed")[0] == \
        from_folders.out.split(section)[1].split("## Failed")[0]
    # the folders and their archived copies together still count each run once
    assert main([str(outputs), str(archive), "--archive", str(archive)]) == 0
    both = capsys.readouterr()
    assert "appears in more than one folder" not in both.err
    assert "| mnist_mnistm | dann |  | 3 | " in both.out
    assert len(list(archive.rglob("results.json"))) == 8


def test_the_results_page_is_what_its_documented_command_writes(tmp_path, monkeypatch):
    """docs/results.md and docs/results.csv must be exactly what the da-report command that
    docs/results-notes.md documents writes from the committed records (docs/runs/ and the
    carried CSV rows): no hand edits, no record left uncommitted."""
    root = Path(__file__).resolve().parents[1]
    notes = (root / "docs" / "results-notes.md").read_text()
    [command] = [line.strip().strip("`") for line in notes.splitlines()
                 if line.strip().startswith("`da-report docs/results.csv docs/runs ")]
    argv = shlex.split(command)[1:]
    md, table = tmp_path / "results.md", tmp_path / "results.csv"
    argv[argv.index("--md") + 1], argv[argv.index("--csv") + 1] = str(md), str(table)
    monkeypatch.chdir(root)
    assert main(argv) == 0
    stale = f"out of date: regenerate it with `{command}` (from the repository root)"
    assert table.read_text() == (root / "docs" / "results.csv").read_text(), \
        f"docs/results.csv is {stale}"
    assert md.read_text() == (root / "docs" / "results.md").read_text(), \
        f"docs/results.md is {stale}"


def test_archiving_a_rerun_keeps_both_records(tmp_path, capsys):
    archive = tmp_path / "archive"
    make_run(tmp_path / "first", seed=0, target=0.8)
    make_run(tmp_path / "again", seed=0, target=0.9)  # same row and seed, another run
    for folder in ("first", "first", "again"):
        assert main([str(tmp_path / folder), "--archive", str(archive)]) == 0
    slots = sorted(p.parent.name for p in archive.rglob("results.json"))
    assert slots == ["seed_0", "seed_0-2"]
    capsys.readouterr()
    assert main([str(archive)]) == 0
    assert "| 2 | 0.8500 ± " in capsys.readouterr().out


def test_the_console_script_entry_point_is_the_report_cli():
    """pyproject's ``da-report = "da_train.report:cli"`` must survive the package layout."""
    import importlib
    import re

    from da_train.report.command import cli

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    [target] = re.findall(r'^da-report\s*=\s*"([^"]+)"', pyproject, flags=re.M)
    module, _, name = target.partition(":")
    assert getattr(importlib.import_module(module), name) is cli


def test_the_command_spells_out_the_data_and_cache_roots_the_run_read(tmp_path):
    from da_train.report.group import command_for

    folder = tmp_path / "r"
    make_run(folder, extra=["data.root=/x"])
    results = json.loads((folder / "results.json").read_text())
    results["data_roots"] = {"data.root": "/x", "data.cache_root": "/home/u/.cache/da-train"}
    (folder / "results.json").write_text(json.dumps(results))
    runs, _ = load_runs([folder])
    command = command_for(runs)
    assert command.count("data.root=") == 1  # given on the command line: not repeated
    assert "data.cache_root=/home/u/.cache/da-train" in command
