"""The shape of the code (issue: a codebase a newcomer can see and change): a method is one
module + one YAML, the trainer names no method, and every config key is read by the code."""

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import da_train_env, small

import da_train
from da_train import config
from da_train.methods import METHODS

PACKAGE = Path(da_train.__file__).parent
README = PACKAGE.parent / "README.md"


def readme_example_method() -> str:
    """The code block under the README's "Example: entropy minimisation" heading."""
    text = README.read_text()
    section = text[text.index("#### Example: entropy minimisation"):]
    return section[section.index("```python") + len("```python"): section.index("\n```\n")]


def run_copied_package(tmp_path, name, module_source, yaml_source, root, extra=()):
    """Copy da_train to a temporary path, add a method module + YAML, run it via the CLI."""
    pkg = tmp_path / "pkg"
    shutil.copytree(PACKAGE, pkg / "da_train", ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "da_train" / "methods" / f"{name}.py").write_text(module_source)
    (pkg / "da_train" / "conf" / "method" / f"{name}.yaml").write_text(yaml_source)
    out = tmp_path / "run"
    env = da_train_env({"PYTHONPATH": str(pkg)})
    args = [*small(root, steps=10, method=name), f"hydra.run.dir={out}", *extra]
    proc = subprocess.run([sys.executable, "-m", "da_train.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "results.json").read_text()), proc


def test_a_copied_method_module_and_yaml_run_under_the_new_name(tiny_root, tmp_path):
    source = (PACKAGE / "methods" / "dann.py").read_text()
    yaml = (PACKAGE / "conf" / "method" / "dann.yaml").read_text()
    results, _ = run_copied_package(tmp_path, "my_dann", source, yaml, tiny_root,
                                    ["method.weight=0.5"])
    assert results["method"] == "my_dann" and results["steps"] == 10
    # and --help lists it, with no list kept by hand
    env = da_train_env({"PYTHONPATH": str(tmp_path / "pkg")})
    proc = subprocess.run([sys.executable, "-m", "da_train.cli", "--help"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "my_dann" in proc.stdout, proc.stdout + proc.stderr


def test_the_readme_example_method_runs_and_its_option_is_checked(tiny_root, tmp_path):
    source = readme_example_method()
    assert len(source.strip().splitlines()) < 30
    results, _ = run_copied_package(tmp_path, "entmin", source, "# example\n", tiny_root,
                                    ["method.weight=0.3"])
    assert results["method"] == "entmin"
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert '"train/entropy"' in metrics and '"train/source_acc"' in metrics
    with pytest.raises(AssertionError, match="method.weight"):
        run_copied_package(tmp_path / "bad", "entmin", source, "# example\n", tiny_root,
                           ["method.weight=-1"])


def test_the_trainer_names_no_method():
    trainer = (PACKAGE / "trainer.py").read_text()
    for name in METHODS:
        assert not re.search(rf"[\"']{name}[\"']", trainer), name


def fields(schema) -> list[str]:
    """The keys a module must read: not the base ones every method has (``name``; ``core``
    and ``reg``, read by the registry and the trainer, tested in test_presets.py)."""
    return [f.name for f in dataclasses.fields(schema) if f.name not in ("name", "core", "reg")]


def module_sources(cls) -> str:
    """The source of ``cls``'s module and of the modules of the classes it builds on."""
    return "\n".join(Path(sys.modules[c.__module__].__file__).read_text()
                     for c in cls.__mro__ if c.__module__.startswith("da_train.methods"))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_option_is_read_by_its_module(name):
    method = METHODS[name]
    code = module_sources(method)
    for key in fields(method.Config):
        assert re.search(rf"cfg\.{key}\b", code), f"method.{key} of {name} is never read"


READERS = {  # schema -> (the files that read it, how they read a key)
    config.TrainerConfig: (["trainer.py", "cli.py"], r"(tcfg|trainer)\.{key}\b"),
    config.OptimConfig: (["optim.py", "methods/adda.py"],
                         r"settings(\[\"{key}\"\]|\.get\(\"{key}\")"),
    config.DebugConfig: (["trainer.py"], r"debug\.{key}\b"),
    config.Config: (["cli.py", "trainer.py"], r"cfg\.{key}\b"),
}


@pytest.mark.parametrize("schema", list(READERS), ids=lambda s: s.__name__)
def test_every_shared_config_key_is_read(schema):
    files, pattern = READERS[schema]
    code = "\n".join((PACKAGE / f).read_text() for f in files)
    nested = {"method", "data", "backbone", "optim", "trainer", "debug"}
    for key in fields(schema):
        if schema is config.Config and key in nested:
            continue
        assert re.search(pattern.format(key=key), code), f"{schema.__name__}.{key} is never read"


def _schemas_with_nested(schemas):
    """Each schema and the nested dataclasses of its fields (e.g. data.source)."""
    seen = []
    for schema in schemas:
        stack = [schema]
        while stack:
            cls = stack.pop()
            if cls not in seen:
                seen.append(cls)
                stack += [f.default_factory().__class__ for f in dataclasses.fields(cls)
                          if f.default_factory is not dataclasses.MISSING
                          and dataclasses.is_dataclass(f.default_factory())]
    return seen


def test_every_data_and_backbone_key_is_read():
    from da_train.data.schemas import SCHEMAS
    from da_train.models import BACKBONE_SCHEMAS

    read = r"(\.{key}\b|\[\"{key}\"\]|get\(\"{key}\")"
    groups = {"data": (_schemas_with_nested(SCHEMAS.values()),
                       list((PACKAGE / "data").glob("*.py")) + [PACKAGE / "trainer.py"], read),
              # backbone options reach the network's constructor as keyword arguments
              "backbone": (_schemas_with_nested(BACKBONE_SCHEMAS.values()),
                           [PACKAGE / "models.py"], read + r"|\b{key}: \w+ = ")}
    for group, (schemas, files, pattern) in groups.items():
        code = "\n".join(f.read_text() for f in files if f.name != "schemas.py")
        for schema in schemas:
            for key in fields(schema):
                assert re.search(pattern.format(key=key), code), \
                    f"{group} schema {schema.__name__}.{key} is never read"


def test_presets_state_only_what_differs_from_the_defaults():
    import yaml
    from omegaconf import OmegaConf
    from toy import compose_config

    from da_train.runtime import flatten

    for path in sorted((PACKAGE / "conf" / "experiment").glob("*.yaml")):
        preset = yaml.safe_load(path.read_text())
        choices = [f"{k.split('/')[-1]}={v}" for d in preset.pop("defaults") for k, v in d.items()
                   if not isinstance(v, list)]
        base = flatten(OmegaConf.to_container(compose_config(choices), resolve=True))
        for key, value in flatten(preset).items():
            assert base.get(key) != value, f"{path.name}: {key}={value} is already the default"
