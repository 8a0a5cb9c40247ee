"""Composable target regularisers: building from the ``reg`` config, weights and ramps, the
loss they add, and the command line."""

import json
import math

import pytest
import torch
from cli_helpers import da_train, small
from omegaconf import OmegaConf
from toy import compose_config

from da_train.config import ConfigError
from da_train.losses import mean_entropy
from da_train.losses.bnm import bnm_loss
from da_train.losses.mcc import mcc_loss
from da_train.methods.base import Batch, StepOutput
from da_train.models import build_backbone
from da_train.regularizers import REGULARIZERS, apply_regularizers, build_regularizers

#: each regulariser as ``reg=[name]`` composes it (the schema's defaults)
DEFAULTS = {name: OmegaConf.to_container(compose_config([f"reg=[{name}]"]).reg[name])
            for name in REGULARIZERS}


def reg_cfg(*names, **overrides):
    node = {n: dict(DEFAULTS[n]) for n in names}
    for key, value in overrides.items():
        name, field = key.split("__")
        node[name][field] = value
    return OmegaConf.create(node)


class Tiny(torch.nn.Module):
    """predict / predict_target like a Method, on the toy MLP backbone."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = build_backbone("mlp", 3, (2,))

    def predict(self, x):
        return self.backbone.classifier(self.backbone.features(x))

    predict_target = predict


def test_yaml_files_hold_no_values_and_every_name_builds():
    regs = build_regularizers(reg_cfg(*REGULARIZERS))
    assert [r.name for r in regs] == list(REGULARIZERS)
    for reg in regs:  # the schema is the one home of the defaults; the YAML attaches it
        yaml = OmegaConf.load(f"da_train/conf/reg/{reg.name}.yaml")
        assert set(yaml) == {"defaults"}, reg.name
        assert DEFAULTS[reg.name] == OmegaConf.to_container(
            OmegaConf.structured(REGULARIZERS[reg.name][0])), reg.name
    assert build_regularizers(None) == [] and build_regularizers(OmegaConf.create({})) == []


def test_order_is_fixed_whatever_the_selection_order():
    a = build_regularizers(OmegaConf.create({"vat": DEFAULTS["vat"],
                                             "entropy": DEFAULTS["entropy"]}))
    assert [r.name for r in a] == ["entropy", "vat"]


@pytest.mark.parametrize("node, words", [
    ({"entropi": {}}, ["Unknown regulariser 'entropi'", "entropy, vat, mcc, bnm, pl",
                       "'reg=[entropy,vat]'"]),
    ({"entropy": {"weight": -1.0}}, ["reg.entropy", "weight=-1.0", ">= 0"]),
    ({"vat": {"eps": 0.0}}, ["reg.vat", "eps=0.0", "> 0"]),
    ({"pl": {"threshold": 1.5}}, ["reg.pl", "threshold=1.5", "[0, 1]"]),
    ({"mcc": {"ramp": "linear"}}, ["reg.mcc", "ramp='linear'", "none or sigmoid"]),
    ({"bnm": {"wieght": 1.0}}, ["reg.bnm", "wieght", "reg.<name>.<key>=<value>"]),
    ({"bnm": {"start": 2}}, ["reg.bnm", "start=2", "[0, 1]"]),
])
def test_bad_config_is_one_clear_error(node, words):
    with pytest.raises(ConfigError) as err:
        build_regularizers(OmegaConf.create(node))
    for word in words:
        assert word in str(err.value), str(err.value)


def test_weights_follow_their_ramps():
    ent, pl = build_regularizers(reg_cfg("entropy", "pl"))
    assert ent.weight(0.0) == 0.0
    assert ent.weight(0.5) == pytest.approx(0.1 * (2 / (1 + math.exp(-5)) - 1))
    assert pl.weight(0.29) == 0.0 and pl.weight(0.3) == 1.0 and pl.weight(0.9) == 1.0
    (mcc,) = build_regularizers(reg_cfg("mcc", mcc__start=0.5, mcc__ramp="sigmoid",
                                        mcc__weight=2.0))
    assert mcc.weight(0.4) == 0.0
    assert mcc.weight(0.6) == pytest.approx(2.0 * (2 / (1 + math.exp(-6)) - 1))


def test_added_loss_is_the_weighted_sum_of_the_terms():
    method = Tiny()
    torch.manual_seed(1)
    batch = Batch(torch.randn(8, 2), torch.randint(0, 3, (8,)), torch.randn(8, 2) * 3)
    target_logits = method.predict(batch.xt)
    out = StepOutput(torch.tensor(1.5), {})
    out.target_logits = target_logits  # what methods return after issue 13
    regs = build_regularizers(reg_cfg("entropy", "mcc", "bnm", "pl", pl__threshold=0.0))
    loss, logs = apply_regularizers(regs, out, batch, method, 0.5)
    w_ent = 0.1 * (2 / (1 + math.exp(-5)) - 1)
    labels = target_logits.argmax(1)
    ce = torch.nn.functional.cross_entropy(target_logits, labels)
    expected = (1.5 + w_ent * mean_entropy(target_logits) + mcc_loss(target_logits)
                + bnm_loss(target_logits) + ce)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(logs) == {"entropy", "ent_weight", "loss_mcc", "mcc_weight", "loss_bnm",
                         "bnm_weight", "loss_pl", "pl_share", "pl_weight"}
    assert logs["pl_share"].item() == 1.0 and logs["ent_weight"] == pytest.approx(w_ent)
    assert all(not torch.is_tensor(v) or not v.requires_grad for v in logs.values())
    # without target_logits in the step's output the terms predict them themselves
    loss2, _ = apply_regularizers(regs, StepOutput(torch.tensor(1.5)), batch, method, 0.5)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-6)
    # none selected: the step's loss unchanged
    assert apply_regularizers([], out, batch, method, 0.5) == (out.loss, {})


def test_vat_reaches_the_parameters_and_weighs_source_separately():
    method = Tiny()
    torch.manual_seed(2)
    batch = Batch(torch.randn(16, 2), torch.randint(0, 3, (16,)), torch.randn(16, 2))
    out = StepOutput(torch.zeros(()), {})
    (vat_t,) = build_regularizers(reg_cfg("vat", vat__eps=0.5))
    torch.manual_seed(3)
    loss_t, logs_t = apply_regularizers([vat_t], out, batch, method, 0.0)
    assert set(logs_t) == {"loss_vat_target", "vat_weight"} and loss_t.item() > 0
    loss_t.backward()
    assert method.backbone.classifier.weight.grad.abs().sum() > 0
    (vat_st,) = build_regularizers(reg_cfg("vat", vat__eps=0.5, vat__weight=0.5,
                                           vat__source_weight=2.0))
    torch.manual_seed(3)
    loss_st, logs = apply_regularizers([vat_st], out, batch, method, 0.0)
    expected = 0.5 * logs["loss_vat_target"] + 2.0 * logs["loss_vat_source"]
    assert loss_st.item() == pytest.approx(expected.item(), rel=1e-5)
    assert logs["loss_vat_target"].item() == pytest.approx(logs_t["loss_vat_target"].item())


# ----------------------------------------------------------------------------- with the trainer
# (presets = a core method + these terms, bit for bit: tests/test_composed_core.py)


def test_cli_composes_regularizers_and_logs_their_terms(tiny_root, tmp_path):
    out = tmp_path / "run"
    proc = da_train([*small(tiny_root, steps=4), "reg=[vat,entropy]", "reg.vat.weight=0.5",
                     "trainer.embed_samples=0", f"hydra.run.dir={out}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"train/entropy", "train/ent_weight", "train/loss_vat_target",
            "train/vat_weight"} <= set(record)
    assert record["train/vat_weight"] == 0.5
    results = json.loads((out / "results.json").read_text())
    assert "reg=[vat,entropy]" in results["overrides"]


def test_cli_rejects_an_unknown_regulariser_by_name(tmp_path):
    proc = da_train(["reg=[entropy,entropi]", "trainer.steps=1"], tmp_path)
    assert proc.returncode == 2
    assert "reg/entropi" in proc.stderr and "Traceback" not in proc.stderr


def test_any_method_takes_regularizers():
    cfg = compose_config(["method=cdan", "reg=[mcc]", "reg.mcc.temperature=3"])
    assert cfg.method.name == "cdan" and list(cfg.reg) == ["mcc"]
    (reg,) = build_regularizers(cfg.reg)
    assert reg.cfg.temperature == 3 and reg.cfg.weight == 1.0
    assert compose_config([]).reg == {}
