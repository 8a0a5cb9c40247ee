"""Run-folder file names live in da_train.runfiles, and report -> plots is one-way."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import da_train
from da_train import runfiles

PACKAGE = Path(da_train.__file__).parent
RUN_FILE_NAMES = {v for k, v in vars(runfiles).items() if k.isupper() and isinstance(v, str)}


def project_imports(path: Path) -> set[str]:
    """The da_train modules ``path`` imports, relative imports resolved, lazy ones included."""
    package = list(path.relative_to(PACKAGE.parent).parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            found.add(".".join(base + ([node.module] if node.module else [])))
    return {name for name in found if name.split(".")[0] == "da_train"}


def code_strings(path: Path) -> list[tuple[int, str]]:
    """(line, value) of every string constant in ``path`` that is not a docstring."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


def test_the_names_are_the_on_disk_contract():
    # Renaming one orphans every run folder already written: change these on purpose only.
    assert (runfiles.RESULTS, runfiles.STATUS, runfiles.METRICS) == (
        "results.json", "status.json", "metrics.jsonl")
    assert (runfiles.CHECKPOINT, runfiles.EMBEDDINGS, runfiles.TENSORBOARD,
            runfiles.CLI_LOG) == ("checkpoint.pt", "embeddings.npz", "tb", "cli.log")
    assert (runfiles.HYDRA_DIR, runfiles.HYDRA_CONFIG, runfiles.HYDRA_OVERRIDES,
            runfiles.RESOLVED_CONFIG) == (".hydra", ".hydra/config.yaml", ".hydra/overrides.yaml",
                                          ".hydra/config_resolved.yaml")
    assert runfiles.RUN_MARKERS == ("status.json", "results.json", ".hydra/config.yaml")
    assert Path("run") / runfiles.HYDRA_OVERRIDES == Path("run", ".hydra", "overrides.yaml")


def test_runfiles_imports_nothing_of_the_project():
    assert project_imports(PACKAGE / "runfiles.py") == set()


def test_plots_never_imports_report():
    assert not any(m.startswith("da_train.report")
                   for m in project_imports(PACKAGE / "plots.py"))
    code = "import sys, da_train.plots; print(any(m.startswith('da_train.report') " \
           "for m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr


def names_a_run_file(value: str) -> bool:
    """The string is a run-file name, or a path that ends in one (``f"{sweep}/*/cli.log"``)."""
    return value in RUN_FILE_NAMES or any(
        re.search(rf"/{re.escape(name)}(?![\w.-])", value) for name in RUN_FILE_NAMES)


#: Literals not yet replaced, in modules owned elsewhere: file -> names. Each must still be
#: there (the test fails once it is gone, so the entry is removed with it).
NOT_YET: dict[str, set[str]] = {}


def test_no_module_spells_a_run_file_name_but_runfiles():
    """Every module joins run-file names through the constants of da_train.runfiles: a
    literal ``"status.json"`` or ``run_dir / ".hydra" / "overrides.yaml"`` elsewhere fails."""
    found: dict[str, set[str]] = {}
    where = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = str(path.relative_to(PACKAGE))
        for line, value in code_strings(path) if name != "runfiles.py" else []:
            if names_a_run_file(value):
                found.setdefault(name, set()).add(value)
                where.append(f"{name}:{line}: {value!r}")
    new = [w for w in where if found[w.split(":")[0]] != NOT_YET.get(w.split(":")[0])]
    assert new == [], "use the constants of da_train/runfiles.py"
    assert {f: found.get(f) for f in NOT_YET} == NOT_YET, "a literal is gone: drop it from NOT_YET"


def test_the_check_sees_literals_and_paths_but_not_prose():
    assert names_a_run_file("status.json") and names_a_run_file(".hydra")
    assert names_a_run_file("/*/cli.log`).") and names_a_run_file("/<job>/checkpoint.pt ")
    assert not names_a_run_file("(it holds checkpoint.pt)")  # words in a message
    assert not names_a_run_file("/results.json.bak") and not names_a_run_file("/tbx")
