"""The composed core: former method modules are presets of a core method plus regularisers,
renamed keys keep working for one release, the package has no import circle, and the one
training step is the one every caller runs."""

import ast
import json
import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from toy import compose_config, toy_config, toy_trainer

import da_train
from da_train.config import validate
from da_train.methods import CHOICES, METHODS, PRESETS

PACKAGE = Path(da_train.__file__).parent

FORMER_MODULES = {"dann_ent": "dann", "dann_pl": "dann", "vada": "dann", "mcc": "source_only",
                  "bnm": "source_only"}


def test_former_method_modules_are_presets_of_a_core():
    assert {k: PRESETS[k] for k in FORMER_MODULES} == FORMER_MODULES
    assert not set(FORMER_MODULES) & set(METHODS)  # no module of their own
    assert set(CHOICES) == set(METHODS) | set(PRESETS)
    cfg = compose_config(["method=vada"])
    assert cfg.method.core == "dann" and list(cfg.method.reg) == ["entropy", "vat"]
    assert (cfg.method.reg.entropy.weight, cfg.method.reg.entropy.ramp) == (0.01, "none")
    assert (cfg.method.reg.vat.weight, cfg.method.reg.vat.source_weight) == (0.01, 1.0)


@pytest.mark.parametrize("preset", sorted(FORMER_MODULES))
def test_each_preset_equals_its_core_with_the_same_terms_on_the_command_line(tmp_path, preset):
    """Same seed, same numbers, bit for bit: ``method=vada`` trains exactly what
    ``method=dann reg=[entropy,vat]`` with vada's values does."""
    cfg_preset = toy_config(preset, steps=200)
    core = OmegaConf.to_container(cfg_preset.method.reg)
    if preset == "vada":  # VAT radius scaled to the toy inputs, in both runs
        core["vat"]["eps"] = 0.3
        cfg_preset.method.reg.vat.eps = 0.3
    cfg_core = OmegaConf.merge(toy_config(FORMER_MODULES[preset], steps=200), {"reg": core})
    cfg_core.method.name = preset  # only the run's label differs
    states = []
    for i, cfg in enumerate((cfg_preset, cfg_core)):
        trainer = toy_trainer(cfg, tmp_path / str(i))
        results = trainer.fit()
        states.append((results["target_acc"], trainer.method.state_dict()))
    assert states[0][0] == states[1][0]
    for key, value in states[0][1].items():
        assert torch.equal(value, states[1][1][key]), key


def test_a_top_level_term_replaces_the_presets_term_of_the_same_name():
    from da_train.regularizers import build_regularizers, merged_reg_config

    cfg = compose_config(["method=vada", "reg=[vat,mcc]", "reg.vat.weight=0.5"])
    regs = {r.name: r.cfg for r in build_regularizers(merged_reg_config(cfg))}
    assert list(regs) == ["entropy", "vat", "mcc"]
    assert regs["entropy"].weight == 0.01 and regs["vat"].weight == 0.5


def test_renamed_keys_still_work_with_one_deprecation_line(caplog):
    cfg = compose_config(["method=vada", "method.lam=0.5", "method.eps=2.0",
                          "method.vat_source=0.5"])
    with caplog.at_level(logging.WARNING):
        validate(cfg)
    assert cfg.method.weight == 0.5 and cfg.method.reg.vat.eps == 2.0
    assert cfg.method.reg.vat.source_weight == 0.5
    lines = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(lines) == 3 and all(len(line.splitlines()) == 1 for line in lines)
    assert any("method.lam" in line and "method.weight" in line for line in lines)
    ddc = compose_config(["method=ddc", "method.ramp=true", "method.lam=3"])
    validate(ddc)
    assert (ddc.method.ramp, ddc.method.weight) == ("sigmoid", 3.0)


def test_self_trainings_warmup_steps_moves_to_start_as_a_fraction_of_training(caplog):
    """warmup_steps counted steps; start, as the regularisers' start, is a fraction."""
    cfg = compose_config(["method=self_training", "method.warmup_steps=2000",
                          "trainer.steps=8000"])
    with caplog.at_level(logging.WARNING):
        validate(cfg)
    assert cfg.method.start == 0.25 and cfg.method.warmup_steps is None
    [line] = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert "method.warmup_steps" in line and "method.start" in line
    assert "2000 / trainer.steps 8000 = 0.25" in line and "\n" not in line
    with pytest.raises(da_train.errors.ConfigError, match=r"method\.warmup_steps=-5"):
        validate(compose_config(["method=self_training", "method.warmup_steps=-5"]))


def test_a_bad_value_in_a_presets_term_is_refused_naming_its_key():
    with pytest.raises(da_train.errors.ConfigError, match=r"method\.reg\.vat.*eps=-1"):
        validate(compose_config(["method=vada", "method.reg.vat.eps=-1"]))


def _import_graph() -> dict[str, set[str]]:
    """module -> the da_train modules it imports (at the top or inside functions)."""
    mods = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = f
    graph = {}
    for name, f in mods.items():
        pkg = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    deps.add(full if full in mods else target)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def _cycle(graph):
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            # a package importing its own submodules (registries) is not a circle back
            if w.startswith(v + "."):
                continue
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_the_package_has_no_import_circle():
    graph = _import_graph()
    assert "da_train.errors" in graph["da_train.config"]  # the graph sees real imports
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    assert not graph["da_train.errors"] and not graph["da_train.runfiles"]  # ground floor


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_fit_bench_and_tests_share_one_train_step():
    """No copy of the step body: callers go through Trainer.train_step."""
    for path in (PACKAGE.parent / "scripts" / "bench.py", Path(__file__).parent / "toy.py"):
        text = path.read_text()
        assert "train_step(" in text and ".optimise(" not in text, path
    trainer = (PACKAGE / "trainer.py").read_text()
    assert trainer.count(".optimise(") == 1  # inside train_step only


def test_a_source_free_phase_never_samples_the_source(tmp_path):
    """Phase(source=False): no source batch, the source sampler does not advance."""
    from da_train.methods import Phase

    trainer = toy_trainer(toy_config("source_only", steps=4), tmp_path)
    state = json.dumps(trainer.source_sampler.state_dict(), default=str)
    batch = trainer.sample(Phase("adapt", 4, source=False))
    assert batch.xs is None and batch.ys is None and len(batch.xt) == 64
    assert json.dumps(trainer.source_sampler.state_dict(), default=str) == state
