"""The shape of the code (issue: a codebase a newcomer can see and change): a method is one
module + one YAML, the trainer names no method, and every config key is read by the code."""

import contextlib
import dataclasses
import io
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


# ---------------------------------------------------------------------------- every key is read
# Every key of the config schemas must be read by the code of some run: a key nobody reads is
# a setting that silently does nothing. The check watches real runs (da-train in this process,
# on tiny data written here) and records each key the package reads (tests/key_access.py);
# each schema key must then be read in at least one run that has it: a method's keys in a run
# of that method, a data family's keys in a run of that family, a backbone's in a run of that
# backbone; the trainer, optim, debug, top-level and reg=[...] keys in any run.

#: Reads inside these functions do not count: they check or record a value, not use it.
NOT_USES = {
    "da_train.config.validate": "checks values against the rules, moves renamed keys",
    "da_train.regularizers._check": "a regulariser's value rules (called while building it)",
    "da_train.data.pairs.data_records": "lists the data and cache folders in results.json",
    "da_train.results.hparams": "copies the command line's keys to TensorBoard's HParams",
    "da_train.results.results_record": "results.json's record of what the run was",
}

#: Plain dicts the package reads a group from after a merge the recorder cannot follow:
#: Trainer.build_optimizers merges ``to_container(cfg.optim)`` with the method's
#: optim_overrides into a new dict, which these functions read (function: (argument, group)).
HANDOFFS = {
    "da_train.optim.build_optimizer": ("settings", "optim"),
    "da_train.optim.build_scheduler": ("settings", "optim"),
}

#: Schema keys no training run reads, and why (any choice of the key's group). Not listed, as
#: no key needs it: keys of download-only data (data=svhn_mnist has the schema of mnist_usps,
#: whose run reads every key), hydra.* (Hydra's, not in these schemas), and the renamed method
#: keys (config.migrate moves them to their new names; tests/test_composed_core.py).
NOT_READ_AT_RUN_TIME = {
    # a record in the run's config (.hydra/config.yaml) of the module that trains a preset:
    # the registry takes it from the YAML's `core:` line (methods/__init__._discover_presets)
    "method.core": "set by config.register_schema as a record; the registry reads the YAML",
}

KEY_CHECK_SETTINGS = ["trainer.steps=4", "trainer.batch_size=8",
                      "trainer.embed_samples=0", "trainer.threads=1",
                      "hydra/job_logging=none", "hydra/hydra_logging=none"]


def write_key_check_data(base: Path) -> dict[str, Path]:
    """Tiny offline data for every family that needs no download: the MNIST / USPS / BSDS
    root of conftest, a released-layout MNIST-M, image folders and lists, .npz arrays."""
    import numpy as np
    from conftest import make_tiny_root
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = {"root": make_tiny_root(base / "root"), "mnistm": base / "released"}
    for split, n in (("train", 20), ("test", 10)):
        folder = paths["mnistm"] / "mnist_m" / f"mnist_m_{split}"
        folder.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(folder / f"{i}.png")
        (folder.parent / f"mnist_m_{split}_labels.txt").write_text(
            "".join(f"{i}.png {i % 10}\n" for i in range(n)))
    for domain, count in (("src", 4), ("src_test", 2), ("tgt", 4), ("tgt_test", 2)):
        for c, name in enumerate(("a", "b")):
            (base / domain / name).mkdir(parents=True)
            for i in range(count):
                img = rng.integers(0, 9, (30, 40, 3), np.uint8) + np.uint8(60 * c + 30)
                Image.fromarray(img).save(base / domain / name / f"{i}.png")
    for domain in ("src", "tgt", "tgt_test"):  # as lists too, paths relative to list_root
        (base / f"{domain}.txt").write_text("".join(
            f"{domain}/{name}/{i}.png {c}\n" for c, name in enumerate(("a", "b"))
            for i in range(2 if domain.endswith("test") else 4)))
    for name, shape in (("signals", (2, 32)), ("vectors", (6,))):
        for domain, shift in (("s", 0.0), ("t", 0.5)):
            x = rng.normal(shift, 1, (60, *shape)).astype(np.float32)
            y = np.arange(60) % 3
            paths[f"{name}_{domain}"] = base / f"{name}_{domain}.npz"
            np.savez(paths[f"{name}_{domain}"], x_train=x[:40], y_train=y[:40], x_test=x[40:],
                     y_test=y[40:])
    paths["base"] = base
    return paths


def key_check_runs(d: dict[str, Path]) -> list[list[str]]:
    """The runs: every method and preset, data family, backbone and regulariser, with the
    settings under which a key is read only in some cases (e.g. optim.betas only with Adam,
    a term's gamma only with ramp=sigmoid, mnistm_dir only for the released MNIST-M)."""
    def sigmoid(prefix, *names):  # a term's gamma is read only with its sigmoid ramp
        return [f"{prefix}.{name}.ramp=sigmoid" for name in names]

    base = d["base"]
    sig = [f"data.source.path={d['signals_s']}", f"data.target.path={d['signals_t']}"]
    vec = [f"data.source.path={d['vectors_s']}", f"data.target.path={d['vectors_t']}"]
    root = [f"data.root={d['root']}", "data.download=false"]
    released = ["data.mnistm=released", f"data.mnistm_dir={d['mnistm']}"]
    folders = ["data=folders", "data.image_size=32", f"data.cache_root={base / 'cache'}"]
    return [
        # the step schedule (step_every, step_factor) and Adam (betas); the collapse detector
        # fires in this run (see test_every_schema_key_is_read_at_run_time)
        ["method=dann", *root, "data=mnist_mnistm", "backbone=dann_digits", "optim=adam",
         "optim.schedule=step", "optim.step_every=1"],
        ["method=target_only", *root, "data=mnist_mnistm", *released, "backbone=dann_digits_bn"],
        ["method=adda", *root, "data=mnist01_23", "backbone=lenet", "method.pretrain_steps=2",
         "method.adapt_steps=2", "method.disc_hidden=[8]", "method.disc_input=logits"],
        ["method=cdan", *root, "data=mnist_usps", "backbone=lenet", "method.entropy=true",
         "method.disc_hidden=[8]", "method.max_dim=16", "method.random_dim=16",
         "data.source.limit=30", "data.target.limit=30"],
        ["method=coral", *root, "data=digits", "data.source.name=usps", "data.target.name=mnistm",
         "method.ramp=sigmoid"],
        ["method=ddc", *root, "data=digits", "data.source.name=mnist", "data.target.name=mnistm",
         *released, "method.ramp=sigmoid"],
        ["method=dirtt", *root, "data=mnist01_23", "backbone=dirtt_digits"],
        ["method=mcd", *root, "data=usps_mnist", "method.num_k=1"],
        # list_root is read for a list only: a source list here, a target list below
        ["method=mdd", *folders, f"data.source.list={base / 'src.txt'}",
         f"data.source.list_root={base}", f"data.target.root={base / 'tgt'}",
         "backbone=resnet18", "backbone.pretrained=false", "method.bottleneck=16",
         "method.width=16"],
        ["method=mean_teacher", *folders, "data.test=separate", f"data.source.root={base / 'src'}",
         f"data.source.test_root={base / 'src_test'}", f"data.target.list={base / 'tgt.txt'}",
         f"data.target.test_list={base / 'tgt_test.txt'}", f"data.target.list_root={base}",
         "backbone=resnet50", "backbone.pretrained=false"],
        ["method=self_training", "data=arrays", *sig, "backbone=cnn1d"],
        # 10 steps: the first evaluation point after step 1 (log_every is read between them)
        ["method=shot", "data=arrays", *vec, "backbone=mlp", "method.bottleneck=16",
         "trainer.steps=10"],
        ["method=source_only", *root, "data=mnist01_23", "backbone=mlp",
         "reg=[entropy,vat,mcc,bnm,pl]", *sigmoid("reg", "entropy", "vat", "mcc", "bnm", "pl")],
        ["method=bnm", *root, "data=mnist01_23", "backbone=mlp", *sigmoid("method.reg", "bnm")],
        ["method=mcc", *root, "data=mnist01_23", "backbone=mlp", *sigmoid("method.reg", "mcc")],
        ["method=dann_ent", *root, "data=mnist01_23", "backbone=mlp"],
        ["method=dann_pl", *root, "data=mnist01_23", "backbone=mlp",
         *sigmoid("method.reg", "entropy", "pl")],
        ["method=vada", *root, "data=mnist01_23", "backbone=mlp",
         *sigmoid("method.reg", "entropy", "vat")],
    ]


def schema_keys_by_choice() -> dict[tuple[str, str], set[str]]:
    """{(group, choice): leaf keys} of the schemas Hydra checks a composed config against
    (config.register_schema's store): ("top", "") for the keys every run has; a method's
    keys without the renamed ones (config.migrate moves those to their new name)."""
    from hydra.core.config_store import ConfigStore
    from key_access import leaf_keys

    from da_train.methods import renamed_keys

    repo = ConfigStore.instance().repo
    if "schema.yaml" not in repo:  # (registered when da_train.cli is imported)
        config.register_schema()
    keys = {("top", ""): leaf_keys(repo["schema.yaml"].node) - {"method", "data", "backbone"}}
    for group in ("method", "data", "backbone", "reg"):
        for file, node in repo[f"{group}_schema"].items():
            name = file.removesuffix(".yaml")
            keys[group, name] = leaf_keys(node.node, f"{group}.{name}." if group == "reg"
                                          else f"{group}.")
    for name in list(k for g, k in keys if g == "method"):
        keys["method", name] -= {f"method.{old}" for old in renamed_keys(name)}
    return keys


def run_choices(cfg) -> list[tuple[str, str]]:
    """The schema choices of a composed config: (group, name); a data family by its schema."""
    from da_train.data.schemas import PAIR_SCHEMAS, SCHEMAS

    family = {schema: name for name, schema in SCHEMAS.items()}[PAIR_SCHEMAS[cfg.data.name]]
    return [("method", cfg.method.name), ("data", family), ("backbone", cfg.backbone.name)]


def unread_keys(runs, allowed=NOT_READ_AT_RUN_TIME) -> list[str]:
    """One line per schema key that no run having it read, and per schema no run used.
    ``runs``: (the run's composed config, the keys it read)."""
    expected = schema_keys_by_choice()
    reads: dict[tuple[str, str], set[str]] = {}
    everywhere: set[str] = set()
    for cfg, keys in runs:
        everywhere |= keys
        for choice in run_choices(cfg):
            reads.setdefault(choice, set()).update(keys)
        for reg in cfg.method.get("reg") or {}:  # a preset's own terms: method.reg.<name>.*
            expected["method", cfg.method.name] |= {f"method.{k}" for k in expected["reg", reg]}
    lines = []
    for (group, name), keys in sorted(expected.items()):
        if group in ("top", "reg"):
            seen, where = everywhere, ""
        elif (group, name) in reads:
            seen, where = reads[group, name], f" ({group}={name})"
        else:
            lines.append(f"no run uses {group}={name}")
            continue
        lines += [f"{key}{where} is in the schema but no run read it"
                  for key in sorted(keys - seen - set(allowed))]
    return lines


def record_runs(runs: list[list[str]], out: Path, settings=KEY_CHECK_SETTINGS):
    """Run ``da-train`` in this process for each argument list, recording the keys read:
    [(the run's composed config, the keys it read)]."""
    from key_access import KeyRecorder, resolve, run_in_process
    from omegaconf import OmegaConf

    recorder = KeyRecorder([PACKAGE], [resolve(name) for name in NOT_USES], HANDOFFS)
    recorded = []
    with recorder:
        for i, args in enumerate(runs):
            run_dir = out / f"run{i}"
            with contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()) as err:
                code = run_in_process([*settings, *args, f"hydra.run.dir={run_dir}"])
            assert code == 0, f"da-train {' '.join(args)} exited with {code}: {err.getvalue()}"
            recorded.append((OmegaConf.load(run_dir / ".hydra" / "config.yaml"),
                             recorder.reads))
            recorder.reads = set()
    return recorded


def test_every_schema_key_is_read_at_run_time(tmp_path, monkeypatch):
    from da_train.collapse import CollapseDetector

    # trainer.stop_on_collapse is read when the collapse detector fires: make it fire at the
    # first check of the first run (stop_on_collapse=false: a warning, the run goes on)
    check, fired = CollapseDetector.check, []

    def fire_once(self, step, record):
        if not fired:
            fired.append(step)
            return "Training looks collapsed (forced by test_layout.py)."
        return check(self, step, record)

    monkeypatch.setattr(CollapseDetector, "check", fire_once)
    runs = record_runs(key_check_runs(write_key_check_data(tmp_path / "data")), tmp_path / "runs")
    assert fired
    unread = unread_keys(runs)
    assert not unread, "config keys no run reads (a setting that does nothing?): read them, " \
        "add a run that does to key_check_runs (also for a new choice), or list them in " \
        "NOT_READ_AT_RUN_TIME with the reason:\n  " + "\n  ".join(unread)


def test_a_schema_key_no_run_reads_is_reported(tmp_path, monkeypatch):
    """The check can fail: DANN's registered schema gets a field the module never reads; one
    DANN run then reads all of DANN's keys but that one."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    import da_train.cli  # noqa: F401  (registers the schemas, as the CLI does)

    store = ConfigStore.instance().repo["method_schema"]
    schema = dataclasses.make_dataclass("DannConfig", [("dummy_unread", int, 0)],
                                        bases=(METHODS["dann"].Config,))
    node = OmegaConf.structured(schema(name="dann", core="dann"))
    monkeypatch.setitem(store, "dann.yaml", dataclasses.replace(store["dann.yaml"], node=node))
    data = write_key_check_data(tmp_path / "data")
    runs = record_runs([["method=dann", "data=arrays", f"data.source.path={data['vectors_s']}",
                         f"data.target.path={data['vectors_t']}", "backbone=mlp",
                         "trainer.steps=2"]], tmp_path / "runs")
    assert runs[0][0].method.dummy_unread == 0  # the composed config has it
    dann = [line for line in unread_keys(runs) if "(method=dann)" in line]
    assert dann == ["method.dummy_unread (method=dann) is in the schema but no run read it"]


def _only_checks(node) -> bool:
    return node.b > 0


def test_the_recorder_names_what_code_reads(tmp_path):
    """How a read is counted (tests/key_access.py), on a config read by this file's code:
    attributes, items, select, merged copies, containers and dataclass objects."""
    from key_access import KeyRecorder
    from omegaconf import DictConfig, OmegaConf

    @dataclasses.dataclass
    class Inner:
        a: int = 1
        b: int = 2

    @dataclasses.dataclass
    class Outer:
        inner: Inner = dataclasses.field(default_factory=Inner)
        c: str = "x"
        d: dict = dataclasses.field(default_factory=lambda: {"e": 3, "f": 4})

    cfg = OmegaConf.create({"top": OmegaConf.structured(Outer), "g": 5, "h": 6})
    getattr_before = DictConfig.__getattr__
    recorder = KeyRecorder([Path(__file__)], [_only_checks])
    with recorder:
        assert DictConfig.__getattr__ is not getattr_before
        assert cfg.g == 5 and OmegaConf.select(cfg, "top.c") == "x"
        _only_checks(cfg.top.inner)  # reads b, but only to check it: not counted
        obj = OmegaConf.to_object(cfg.top)  # a dataclass object: its field reads count
        assert obj.inner.a == 1 and obj.d["e"] == 3
        merged = OmegaConf.merge(OmegaConf.structured(Inner), cfg.top.inner)
        assert merged.b == 2  # named after the node it was merged from
        settings = OmegaConf.to_container(cfg.top)
        assert settings["d"]["f"] == 4
        assert OmegaConf.to_container(cfg)["h"] == 6  # a copy of the whole config: no read
    assert DictConfig.__getattr__ is getattr_before
    leaves = {"g", "h", "top.c", "top.inner.a", "top.inner.b", "top.d.e", "top.d.f"}
    assert recorder.reads & leaves == {"g", "top.c", "top.inner.a", "top.d.e", "top.inner.b",
                                       "top.d.f"}
    recorder.reads.clear()
    with recorder:
        _only_checks(cfg.top.inner)
        merged.a  # noqa: B018
    assert recorder.reads & leaves == {"top.inner.a"}
