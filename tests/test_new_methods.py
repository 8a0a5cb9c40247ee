"""SHOT, self-ensembling (mean teacher), MCD, MDD and DIRT-T (issue 33): their losses against
hand-computed references, the source-free guarantees, the source checkpoint checks, the
on-device augmentation, each method against source-only on the rotated two moons, and every
preset through the CLI."""

import json
import math

import pytest
import torch
import yaml
from cli_helpers import da_train
from omegaconf import OmegaConf
from toy import (
    compose_config,
    method_config,
    moons_pair,
    run_steps,
    toy_batch,
    toy_config,
    toy_trainer,
)

from da_train.data import DomainPair, Split
from da_train.data.tensor_augment import AugmentSettings, augment
from da_train.errors import ConfigError
from da_train.losses.consistency import (
    class_balance,
    confidence_mask,
    ema_update,
    kl_to_teacher,
    masked_consistency,
)
from da_train.losses.mcd import classifier_discrepancy
from da_train.losses.mdd import margin_disparity_loss
from da_train.losses.shot import centroid_pseudo_labels, information_maximisation
from da_train.methods import build_method
from da_train.models import build_backbone
from da_train.runtime import flatten

NEW = ["shot", "mean_teacher", "mcd", "mdd", "dirtt"]
PAIRS = ["mnist_mnistm", "mnist_usps", "usps_mnist"]
STEPS = 600  # toy runs: enough for every method to separate from source-only, ~2 s each


# ---------------------------------------------------------------------------- the losses
def test_information_maximisation_by_hand():
    # p1 = (1/2, 1/2), p2 = (1, 0) (up to e^-30): mean entropy log(2) / 2;
    # mean prediction (3/4, 1/4), its entropy -(3/4 log 3/4 + 1/4 log 1/4)
    logits = torch.tensor([[0.0, 0.0], [30.0, 0.0]])
    loss, parts = information_maximisation(logits)
    mean_ent = math.log(2) / 2
    div = -(0.75 * math.log(0.75 + 1e-5) + 0.25 * math.log(0.25 + 1e-5))
    assert parts["entropy"].item() == pytest.approx(mean_ent, abs=1e-6)
    assert parts["diversity"].item() == pytest.approx(div, abs=1e-6)
    assert loss.item() == pytest.approx(mean_ent - div, abs=1e-6)


def test_centroid_pseudo_labels_recover_separable_clusters():
    # two tight clusters along the axes; the classifier is confidently wrong on one point of
    # each cluster, right (less confidently) on the rest: the centroids put them back
    feats = torch.tensor([[5.0, 0.1], [5.0, -0.1], [5.0, 0.0], [0.1, 5.0], [-0.1, 5.0],
                          [0.0, 5.0]])
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 2.0], [0.0, 2.0],
                           [4.0, 0.0]])
    assert logits.argmax(1).tolist() == [0, 0, 1, 1, 1, 0]
    assert centroid_pseudo_labels(feats, logits).tolist() == [0, 0, 0, 1, 1, 1]


def test_centroid_pseudo_labels_follow_the_cosine_distance_of_the_recipe():
    # by hand: rows with a 1 appended, normalised; softmax-weighted centroids; nearest by
    # cosine; one hard round
    feats = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    logits = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    f = torch.cat([feats, torch.ones(3, 1)], 1)
    f = f / f.norm(dim=1, keepdim=True)
    w = logits.softmax(1)
    labels = None
    for _ in range(2):
        c = (w.T @ f) / w.sum(0)[:, None]
        labels = torch.nn.functional.cosine_similarity(f[:, None], c[None], dim=2).argmax(1)
        w = torch.nn.functional.one_hot(labels, 2).float()
    assert centroid_pseudo_labels(feats, logits).tolist() == labels.tolist()


def test_mcd_discrepancy_by_hand():
    # softmax(0, 0) = (1/2, 1/2); softmax(log 3, 0) = (3/4, 1/4): |diff| = 1/4 per class
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[math.log(3), 0.0], [0.0, 0.0]])
    assert classifier_discrepancy(a, b).item() == pytest.approx(0.25 / 2, abs=1e-7)


def test_mdd_margin_loss_by_hand():
    # f' probabilities: source (3/4, 1/4) with y_hat 0 -> CE = -log 3/4;
    # target (1/4, 3/4) with y_hat 1 -> -log(1 - 3/4 + 1e-6)
    adv_s = torch.tensor([[math.log(3), 0.0]])
    adv_t = torch.tensor([[0.0, math.log(3)]])
    loss = margin_disparity_loss(adv_s, adv_t, torch.tensor([0]), torch.tensor([1]), 4.0)
    expected = 4.0 * -math.log(0.75) - math.log(0.25 + 1e-6)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # a fully confident f' on the target stays finite (the offset)
    far = margin_disparity_loss(adv_s, torch.tensor([[0.0, 200.0]]), torch.tensor([0]),
                                torch.tensor([1]), 4.0)
    assert torch.isfinite(far) and far.item() == pytest.approx(
        4.0 * -math.log(0.75) - math.log(1e-6), rel=1e-4)


def test_ema_update_by_hand():
    teacher, student = [torch.tensor([1.0, 2.0])], [torch.tensor([3.0, 0.0])]
    ema_update(teacher, student, 0.9)
    assert teacher[0].tolist() == pytest.approx([0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * 0])


def test_dirtt_kl_to_teacher_by_hand():
    # KL((3/4, 1/4) || (1/2, 1/2)) = 3/4 log 3/2 + 1/4 log 1/2
    kl = kl_to_teacher(torch.tensor([[math.log(3), 0.0]]), torch.tensor([[0.0, 0.0]]))
    assert kl.item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), abs=1e-6)
    same = torch.randn(5, 3)
    assert kl_to_teacher(same, same).item() == pytest.approx(0.0, abs=1e-6)


def test_mean_teacher_consistency_mask_and_class_balance_by_hand():
    teacher = torch.tensor([[math.log(99), 0.0], [0.0, 0.0]])  # confident (0.99) / not (0.5)
    student = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    mask = confidence_mask(teacher, 0.968)
    assert mask.tolist() == [1.0, 0.0]
    # sample 1: mean_k (0.5 - q_k)^2 = 0.49^2; sample 2 masked; mean over the whole batch
    assert masked_consistency(student, teacher, mask).item() == pytest.approx(
        0.49 ** 2 / 2, rel=1e-5)
    # balanced predictions (1/2, 1/2) at target 1/2: 2 x the binary entropy of 1/2
    assert class_balance(student).item() == pytest.approx(2 * math.log(2), rel=1e-5)


# ---------------------------------------------------------------------------- augmentation
def _devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices())
def test_augmentation_is_on_the_device_and_deterministic_for_a_seed(device):
    x = torch.randn(6, 3, 16, 16, device=device)
    settings = AugmentSettings(hflip=True, intensity_flip=True, scale=(0.5, 1.5),
                               offset=(-0.2, 0.2))
    torch.manual_seed(3)
    a = augment(x, settings)
    torch.manual_seed(3)
    b = augment(x, settings)
    torch.manual_seed(4)
    c = augment(x, settings)
    assert a.device == x.device and a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x)


def test_augmentation_parts():
    x = torch.randn(4, 1, 8, 8)
    nothing = AugmentSettings(translate=0.0, affine_std=0.0, noise_std=0.0)
    assert torch.equal(augment(x, nothing), x)
    # a flip-only warp gives each image either itself or its mirror image
    torch.manual_seed(0)
    flipped = augment(x, AugmentSettings(translate=0.0, affine_std=0.0, noise_std=0.0,
                                         hflip=True))
    for img, out in zip(x, flipped, strict=True):
        assert torch.allclose(out, img, atol=1e-5) or torch.allclose(out, img.flip(-1),
                                                                    atol=1e-5)
    # vectors only get the noise
    v = torch.zeros(1000, 2)
    torch.manual_seed(0)
    noisy = augment(v, AugmentSettings(noise_std=0.1))
    assert noisy.std().item() == pytest.approx(0.1, rel=0.1)


# (each beats source-only on the toy shift: tests/test_adaptation.py's harness)


# ---------------------------------------------------------------------------- SHOT
def poisoned(pair: DomainPair) -> DomainPair:
    """The same pair with every source *training* image NaN."""
    nan = Split(torch.full_like(pair.source_train.images, float("nan")),
                pair.source_train.labels)
    return DomainPair(nan, pair.target_train_images, pair.source_test, pair.target_test,
                      pair.num_classes)


@pytest.fixture(scope="module")
def shot_source(tmp_path_factory):
    """A SHOT source model on the toy pair (method.source_share=1: no adaptation phase)."""
    run = tmp_path_factory.mktemp("shot_source")
    results = toy_trainer(toy_config("shot", steps=300, source_share=1.0), run).fit()
    assert results["phases"] == {"source": 300}
    return run


def test_shot_adapts_a_saved_source_model_without_reading_a_source_image(shot_source,
                                                                          tmp_path):
    cfg = toy_config("shot", steps=200, source_ckpt=str(shot_source))
    trainer = toy_trainer(cfg, tmp_path, poisoned(moons_pair()))
    before = trainer.source_sampler.state_dict()
    results = trainer.fit()  # a NaN loss would stop it (NonFiniteLossError)
    assert results["phases"] == {"adapt": 200}
    assert math.isfinite(results["target_acc"]) and results["target_acc"] > 0.9
    assert results["source_model_step"] == 300
    assert trainer.source_sampler.state_dict() == before  # never sampled
    # the pseudo-labels cover the target training set, the hypothesis did not move
    assert len(trainer.method.pseudo_labels) == 600


def test_shot_two_phases_freeze_the_classifier_and_refresh_once_per_epoch(tmp_path):
    trainer = toy_trainer(toy_config("shot", steps=40), tmp_path)
    run_steps(trainer, 20)  # the source phase
    shot = trainer.method
    fc = {k: v.clone() for k, v in shot.backbone.classifier.fc.state_dict().items()}
    trainer.data.source_train.images.fill_(float("nan"))  # phase 2 must not read these
    calls = []
    compute = shot._compute_labels
    shot._compute_labels = lambda target: (calls.append(trainer.step), compute(target))
    run_steps(trainer, 20)
    # 600 target images at batch 64: an epoch is 10 steps -> at phase steps 0 and 10
    assert calls == [20, 30]
    for key, value in shot.backbone.classifier.fc.state_dict().items():
        assert torch.equal(value, fc[key]), key
    assert all(torch.isfinite(p).all() for p in shot.parameters())


def _saved_checkpoint(source_dir, tmp_path, edit):
    state = torch.load(source_dir / "checkpoint.pt", weights_only=True)
    edit(state)
    path = tmp_path / "edited.pt"
    torch.save(state, path)
    return str(path)


def test_shot_source_ckpt_refuses_another_backbone_class_count_or_method(shot_source, tmp_path):
    def other_backbone(state):
        state["config"]["backbone"]["name"] = "lenet"

    def other_method(state):
        state["config"]["method"]["name"] = "dann"

    def adapted(state):
        state["method"]["adapted"] = torch.tensor(True)

    cases = [(other_backbone, 2, ["backbone=lenet", "backbone=mlp"]),
             (None, 3, ["2 classes", "has 3"]),
             (other_method, 2, ["method=dann"]),
             (adapted, 2, ["already adapted"])]
    for edit, classes, words in cases:
        path = str(shot_source) if edit is None else _saved_checkpoint(shot_source, tmp_path,
                                                                        edit)
        cfg = method_config("shot", source_ckpt=path)
        with pytest.raises(ConfigError) as err:
            build_method(cfg, build_backbone("mlp", classes, (2,)), classes)
        message = str(err.value)
        assert all(w in message for w in words), message
        assert "\n" not in message and "source_share=1" in message
    with pytest.raises(ConfigError, match="does not exist"):
        build_method(method_config("shot", source_ckpt=str(tmp_path / "nowhere")),
                     build_backbone("mlp", 2, (2,)), 2)


def test_shot_pseudo_labels_survive_a_resume(tmp_path):
    cfg = toy_config("shot", steps=40)
    straight = toy_trainer(cfg, tmp_path / "a")
    run_steps(straight, 40)
    (tmp_path / "b").mkdir()
    half = toy_trainer(cfg, tmp_path / "b")
    run_steps(half, 25)
    half.save_checkpoint()
    resumed = toy_trainer(cfg, tmp_path / "c")
    resumed.load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    run_steps(resumed, 15)
    assert torch.equal(straight.method.pseudo_labels, resumed.method.pseudo_labels)
    for (key, a), b in zip(straight.method.state_dict().items(),
                           resumed.method.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), key


# ---------------------------------------------------------------------------- the others
def test_mean_teacher_follows_the_student_by_ema_and_is_never_optimised(tmp_path):
    trainer = toy_trainer(toy_config("mean_teacher", steps=5, ema_decay=0.9), tmp_path)
    run_steps(trainer, 1)
    mt = trainer.method
    teacher_ids = {id(p) for p in mt.teacher.parameters()}
    optimised = {id(p) for o in trainer.optimizers.values() for g in o.param_groups
                 for p in g["params"]}
    assert not teacher_ids & optimised
    before = [p.clone() for p in mt.teacher.parameters()]
    run_steps(trainer, 1)
    for t0, t1, s in zip(before, mt.teacher.parameters(), mt.backbone.parameters(),
                         strict=True):
        assert torch.allclose(t1, 0.9 * t0 + 0.1 * s, atol=1e-6)


def test_mcd_updates_step_the_right_networks():
    torch.manual_seed(0)
    mcd = build_method(method_config("mcd"), build_backbone("mlp", 2, (2,)), 2)
    batch = toy_batch()
    [phase] = mcd.phases(10)
    assert phase.updates == ("source", "discrepancy") + ("generator",) * 4
    for update, trained in (("discrepancy", "classifiers"), ("generator", "features")):
        mcd.zero_grad()
        mcd.training_step(update, batch, 0.5).loss.backward()
        feature_grad = any(p.grad is not None and p.grad.abs().sum() > 0
                           for p in mcd.backbone.features.parameters())
        assert feature_grad == (trained == "features"), update
    # the second classifier starts from its own initialisation
    assert not torch.equal(mcd.classifier2.weight, mcd.backbone.classifier.weight)


def test_mcd_shares_one_adam_per_network_between_its_updates(tmp_path):
    """As in the authors' code: update A steps the extractor's and the classifiers' Adam,
    B the classifiers', C (num_k times) the extractor's, so one step moves the extractor's
    Adam 1 + num_k times and the classifiers' twice (an Adam per update would count 1 each)."""
    cfg = toy_config("mcd", steps=10, num_k=3)
    cfg.optim.type = "adam"
    trainer = toy_trainer(cfg, tmp_path)
    run_steps(trainer, 2)
    assert set(trainer.optimizers) == {"generator", "classifiers"}
    generator, classifiers = trainer.optimizers["generator"], trainer.optimizers["classifiers"]
    assert trainer.update_optimizers == {"source": [generator, classifiers],
                                         "discrepancy": [classifiers],
                                         "generator": [generator]}
    mcd = trainer.method
    owned = {name: {id(p) for g in opt.param_groups for p in g["params"]}
             for name, opt in trainer.optimizers.items()}
    assert owned["generator"] == {id(p) for p in mcd.backbone.features.parameters()}
    assert id(mcd.classifier2.weight) in owned["classifiers"]
    assert not owned["generator"] & owned["classifiers"]
    feature_weight = mcd.backbone.features[1].weight
    assert int(generator.state[feature_weight]["step"]) == 2 * (1 + 3)
    assert int(classifiers.state[mcd.classifier2.weight]["step"]) == 2 * 2
    # one learning rate logged per optimiser, one loss per update
    assert set(trainer.lr_record()) == {"train/lr_generator", "train/lr_classifiers"}
    assert trainer._loss_key("generator") == "loss_generator"


def test_a_checkpoint_with_other_optimisers_is_refused_in_one_paragraph(tmp_path):
    """An MCD checkpoint written when every update had its own Adam cannot resume silently
    with half of its optimiser state: the error says why and what to do."""
    cfg = toy_config("mcd", steps=10)
    trainer = toy_trainer(cfg, tmp_path)
    run_steps(trainer, 1)
    trainer.save_checkpoint()
    path = tmp_path / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    for key in ("optimizers", "schedulers"):
        old = state[key]
        state[key] = {"source": old["generator"], "discrepancy": old["classifiers"],
                      "generator": old["generator"]}
    torch.save(state, path)
    with pytest.raises(ConfigError, match=r"holds the optimisers \['discrepancy', 'generator', "
                       r"'source'\].*builds \['classifiers', 'generator'\].*Start the run "
                       r"afresh"):
        toy_trainer(cfg, tmp_path / "resumed").load_checkpoint(path)


def test_dirtt_refines_on_target_only_against_a_periodically_refreshed_teacher(tmp_path):
    cfg = toy_config("dirtt", steps=20, eps=0.3, teacher_every=4)
    trainer = toy_trainer(cfg, tmp_path)
    assert [(p.name, p.steps, p.source) for p in trainer.phases] == [
        ("vada", 10, True), ("refine", 10, False)]
    run_steps(trainer, 10)
    trainer.data.source_train.images.fill_(float("nan"))  # phase 2 must not read these
    dirtt = trainer.method
    calls = []
    refresh = dirtt.refresh

    def spy(phase, target):
        refresh(phase, target)
        calls.append(trainer.step)
        for key, value in dirtt.backbone.state_dict().items():  # the current network
            assert torch.equal(value, dirtt.teacher.state_dict()[key]), key

    dirtt.refresh = spy
    run_steps(trainer, 10)
    assert calls == [10, 14, 18]  # the phase's start, then every 4 steps
    assert not dirtt.teacher.training and all(not p.requires_grad
                                              for p in dirtt.teacher.parameters())
    assert all(torch.isfinite(p).all() for p in dirtt.parameters())
    assert not torch.equal(dirtt.teacher.classifier.weight, dirtt.backbone.classifier.weight)


def test_dirtt_weights_carry_the_regularisers_names_and_weight_their_terms():
    """entropy_weight, vat_weight, vat_source_weight (reg.entropy.weight, reg.vat.weight,
    reg.vat.source_weight); the 0.1 names of VADA's weights are not DIRT-T keys."""
    from hydra.errors import ConfigCompositionException

    torch.manual_seed(0)
    cfg = method_config("dirtt", entropy_weight=0.5, vat_weight=0.25, vat_source_weight=2.0,
                        beta=4.0, eps=0.3)
    dirtt = build_method(cfg, build_backbone("mlp", 2, (2,)), 2)
    batch = toy_batch()
    out = dirtt.training_step("model", batch, 0.5)  # phase 1: VADA
    logs = out.logs
    expected = (logs["loss_cls"] + logs["loss_transfer"] + 0.5 * logs["entropy"]
                + 0.25 * logs["loss_vat_target"] + 2.0 * logs["loss_vat_source"])
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert logs["loss_vat_source"] > 0 and logs["loss_vat_target"] > 0
    for param in dirtt.teacher.parameters():  # a teacher that disagrees: KL > 0
        param.data.mul_(0.5)
    refine = dirtt.training_step("model", type(batch)(None, None, batch.xt), 0.5)  # phase 2
    logs = refine.logs
    assert logs["loss_kl_teacher"] > 0
    expected = (0.5 * logs["entropy"] + 0.25 * logs["loss_vat_target"]
                + 4.0 * logs["loss_kl_teacher"])
    assert refine.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    for old in ("ent_weight", "vat_target", "vat_source"):
        with pytest.raises(ConfigCompositionException, match=old):
            compose_config(["method=dirtt", f"method.{old}=0.1"])


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
def test_dirtt_digits_backbone(shape):
    net = build_backbone("dirtt_digits", 10, shape)
    net.eval()
    x = torch.randn(2, *shape)
    assert net.feature_dim == 64
    assert net.classifier(net.features(x)).shape == (2, 10)
    # instance normalisation on the input: a per-image change of contrast and offset does
    # not change the output
    assert torch.allclose(net.features(x), net.features(3 * x + 1), atol=1e-4)


# ---------------------------------------------------------------------------- presets, CLI
def test_presets_compose_with_their_protocol_and_state_only_what_differs():
    from pathlib import Path

    from da_train.conf import __file__ as conf_init
    folder = Path(conf_init).parent / "experiment"
    for method in NEW:
        for pair in PAIRS:
            path = folder / f"{method}_{pair}.yaml"
            cfg = compose_config([f"experiment={method}_{pair}"])
            assert cfg.method.name == method and cfg.data.name == pair
            if pair == "mnist_mnistm":
                assert cfg.trainer.steps == 10000
            preset = yaml.safe_load(path.read_text())
            choices = [f"{k.split('/')[-1]}={v}" for d in preset.pop("defaults")
                       for k, v in d.items()]
            base = flatten(OmegaConf.to_container(compose_config(choices), resolve=True))
            for key, value in flatten(preset).items():
                assert base.get(key) != value, f"{path.name}: {key}={value} is the default"
    assert compose_config(["experiment=dirtt_mnist_mnistm"]).backbone.name == "dirtt_digits"
    assert compose_config(["experiment=shot_mnist_usps"]).backbone.name == "lenet"


def _sweep(root, tmp_path, extra=(), pairs=PAIRS):
    presets = ",".join(f"{m}_{p}" for m in NEW for p in pairs)
    out = tmp_path / "sweep"
    proc = da_train(["-m", f"experiment={presets}", f"data.root={root}", "data.download=false",
                     "trainer.steps=2", "trainer.batch_size=8", "trainer.eval_samples=8",
                     "trainer.embed_samples=0", f"hydra.sweep.dir={out}", *extra], tmp_path,
                    timeout=600)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(p.read_text()) for p in out.glob("*/results.json")]


def test_every_preset_runs_through_the_cli(tiny_root, tmp_path):
    done = _sweep(tiny_root, tmp_path)
    assert sorted((r["method"], r["data"]) for r in done) == sorted(
        (m, p) for m in NEW for p in PAIRS)
    for r in done:
        assert r["steps"] == 2 and math.isfinite(r["target_acc"]), r
        if r["method"] in ("shot", "dirtt"):
            assert len(r["phases"]) == 2 and sum(r["phases"].values()) == 2, r


def test_every_preset_runs_on_the_real_data(real_root, tmp_path):
    # the real USPS pair per method (the tiny root above covers every pair of every preset;
    # building the real MNIST-M twin in a fresh cache takes minutes, too long for the suite)
    done = _sweep(real_root, tmp_path, pairs=("mnist_usps",))
    assert len(done) == len(NEW)
