"""Run-folder file names live in da_train.runfiles, and report -> plots is one-way."""

from __future__ import annotations

import ast
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
    assert (runfiles.HYDRA_DIR, runfiles.HYDRA_CONFIG, runfiles.HYDRA_OVERRIDES) == (
        ".hydra", ".hydra/config.yaml", ".hydra/overrides.yaml")
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


def test_report_and_plots_name_run_files_through_the_constants():
    sources = sorted((PACKAGE / "report").glob("*.py")) + [PACKAGE / "plots.py"]
    literals = [f"{path.relative_to(PACKAGE)}:{line}: {value!r}" for path in sources
                for line, value in code_strings(path) if value in RUN_FILE_NAMES]
    assert literals == []
