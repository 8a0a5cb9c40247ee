"""The CUDA-graph step's CPU side (da_train/graph.py): device-tensor schedules equal the Python
formulas at every step (also after resume), the host-sync guard catches every kind of read
back to the host, and ``trainer.cuda_graph`` says clearly when it cannot capture. The graph
itself needs a GPU: tests/test_graph_gpu.py (skipped without CUDA)."""

import math

import pytest
import torch
from omegaconf import OmegaConf
from toy import moons_pair, toy_config, toy_trainer

from da_train.errors import ConfigError
from da_train.graph import GraphedStep, HostSyncError, no_host_sync, resolve
from da_train.losses import sigmoid_ramp
from da_train.methods import CHOICES
from da_train.optim import build_optimizer, build_scheduler, lr_factor
from da_train.regularizers import Regularizer

CPU = torch.device("cpu")
STEPS = 200


def settings(**kw):
    base = {"type": "sgd", "lr": 0.01, "momentum": 0.9, "betas": [0.9, 0.999],
            "weight_decay": 5e-4, "schedule": "dann", "anneal_alpha": 10.0,
            "anneal_beta": 0.75, "step_every": 30, "step_factor": 0.5,
            "pretrained_lr_mult": 0.1}
    return base | kw


@pytest.mark.parametrize("lam,gamma", [(1.0, 10.0), (0.1, 10.0), (0.3, 20.0)])
def test_sigmoid_ramp_on_a_device_tensor_equals_the_float_formula_at_every_step(lam, gamma):
    progress = torch.zeros((), dtype=torch.float64)
    for t in range(STEPS):
        p = t / STEPS
        progress.fill_(p)
        on_device = sigmoid_ramp(progress, lam, gamma)
        assert torch.is_tensor(on_device)
        # a float32 0-d tensor: the value the eager step's float32 loss or gradient is
        # multiplied by (the Python float rounded to float32), bit for bit
        assert on_device.dtype == torch.float32
        assert on_device == torch.tensor(sigmoid_ramp(p, lam, gamma), dtype=torch.float32)
        assert on_device.item() == pytest.approx(lam * (2 / (1 + math.exp(-gamma * p)) - 1),
                                                 rel=1e-7, abs=1e-30)


@pytest.mark.parametrize("ramp,start", [("sigmoid", 0.0), ("sigmoid", 0.25), ("none", 0.5)])
def test_regulariser_weight_on_a_device_tensor_equals_the_float_weight(ramp, start):
    reg = Regularizer("entropy", OmegaConf.create(
        {"weight": 0.3, "start": start, "ramp": ramp, "gamma": 10.0}))
    progress = torch.zeros((), dtype=torch.float64)
    for t in range(STEPS):
        p = t / STEPS
        progress.fill_(p)
        for final in (None, 1.0):
            on_device = reg.weight(progress, final)
            assert on_device.dtype == torch.float32
            assert on_device == torch.tensor(reg.weight(p, final), dtype=torch.float32)
            if p < start:  # nothing before the term starts
                assert reg.weight(progress, final).item() == 0.0


@pytest.mark.parametrize("kw", [{}, {"schedule": "step"}, {"schedule": "constant"},
                                {"type": "adam", "schedule": "dann"}])
def test_device_lr_tensors_equal_the_python_schedule_at_every_step_and_after_resume(kw):
    cfg = settings(**kw)
    p_host = torch.nn.Parameter(torch.ones(4))
    p_dev = torch.nn.Parameter(torch.ones(4))
    host = build_optimizer([p_host], cfg)
    dev = build_optimizer([p_dev], cfg, device_lr=True)
    sched_host, sched_dev = build_scheduler(host, cfg, STEPS), build_scheduler(dev, cfg, STEPS)
    lr_tensor = dev.param_groups[0]["lr"]
    assert torch.is_tensor(lr_tensor) and not torch.is_tensor(host.param_groups[0]["lr"])
    factor = lr_factor(cfg, STEPS)
    for t in range(STEPS):
        expected = cfg["lr"] * factor(t)
        assert host.param_groups[0]["lr"] == expected
        assert dev.param_groups[0]["lr"] is lr_tensor  # updated in place, never replaced
        assert lr_tensor.item() == torch.tensor(expected, dtype=lr_tensor.dtype).item()
        if t == STEPS // 2:  # resume both from their state dicts
            state = sched_dev.state_dict()
            sched_dev = build_scheduler(dev, cfg, STEPS)
            sched_dev.load_state_dict(state)
            assert lr_tensor.item() == torch.tensor(expected, dtype=lr_tensor.dtype).item()
        sched_host.step()
        sched_dev.step()


def test_lr_schedule_equals_torch_lambdalr_bit_for_bit():
    """LrSchedule replaced LambdaLR (which reads a tensor lr back to the host): the CPU
    numbers must not change."""
    cfg = settings(weight_decay=1e-3)
    results = []
    for ours in (False, True):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(6))
        opt = build_optimizer([p], cfg)
        sched = build_scheduler(opt, cfg, 100) if ours else \
            torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, 100))
        for i in range(60):
            p.grad = torch.sin(p.detach() * i)
            opt.step()
            sched.step()
        results.append(p.detach().clone())
    assert torch.equal(*results)


def test_lr_schedule_resumes_a_lambdalr_checkpoint():
    """A checkpoint written before LrSchedule (LambdaLR's state dict) still resumes."""
    cfg = settings()
    opt = build_optimizer([torch.nn.Parameter(torch.ones(2))], cfg)
    old = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, 100))
    for _ in range(37):
        opt.step()  # no gradients: a no-op, in the order torch expects
        old.step()
    lr_then = opt.param_groups[0]["lr"]
    new = build_scheduler(build_optimizer([torch.nn.Parameter(torch.ones(2))], cfg), cfg, 100)
    new.load_state_dict(old.state_dict())
    assert new.last_epoch == 37 and new.optimizer.param_groups[0]["lr"] == lr_then


@pytest.mark.parametrize("read", [
    lambda x: x.sum().item(),
    lambda x: bool(x.sum() > 0),
    lambda x: float(x.mean()),
    lambda x: x.tolist(),
    lambda x: x.cpu(),
    lambda x: x[x > 0],
    lambda x: torch.nonzero(x),
    lambda x: x.nonzero(),
    lambda x: torch.unique(x),
    lambda x: int(x.argmax()),
    lambda x: [0, 1, 2][x.argmax()],
])
def test_host_sync_guard_refuses_every_read_back(read):
    x = torch.randn(5)
    with no_host_sync(CPU), pytest.raises(HostSyncError, match="reads a value back to the host"):
        read(x)
    read(x)  # the guard is gone afterwards


def test_host_sync_guard_lets_device_work_through():
    x = torch.randn(8, 3, requires_grad=True)
    with no_host_sync(CPU):
        y = torch.where(x > 0, x, 0.1 * x)
        mask = (y.detach() > 0).float()
        loss = (y.pow(2).sum(1) * mask.mean(1)).sum() / mask.sum().clamp_min(1)
        loss.backward()
        opt = build_optimizer([x], settings(), device_lr=True)
        opt.step()


def _cfg(**trainer):
    return OmegaConf.create({"method": {"name": "dann"}, "debug": {"inject_nan_at": 0},
                             "trainer": {"detect_anomaly": False, "compile": False} | trainer})


class _Method:
    capturable = True


def test_cuda_graph_setting_says_why_it_stays_eager():
    on, why = resolve("auto", CPU, _Method(), _cfg())
    assert not on and "the device is cpu" in why
    on, why = resolve("false", torch.device("cuda"), _Method(), _cfg())
    assert not on and "cuda_graph=false" in why
    uncapturable = type("M", (), {"capturable": False})()
    on, why = resolve("auto", torch.device("cuda"), uncapturable, _cfg())
    assert not on and "capturable = False" in why
    with pytest.raises(ConfigError, match=r"cuda_graph=true, but the step cannot be captured: "
                                          r"the device is cpu"):
        resolve("true", CPU, _Method(), _cfg())
    cfg = _cfg(detect_anomaly=True)
    with pytest.raises(ConfigError, match="trainer.detect_anomaly=true"):
        resolve("true", torch.device("cuda"), _Method(), cfg)
    on, why = resolve("true", torch.device("cuda"), _Method(), _cfg())
    assert on and "CUDA graph" in why


# ------------------------------------------------------------ the graph path's body on CPU

BODY_STEPS = 16


def toy(name, run_dir):
    """The toy trainer; the target labels too for the oracle (target_only)."""
    pair = moons_pair()
    if name == "target_only":
        from da_train.data import DomainPair

        pair = DomainPair(pair.source_train, pair.target_train_images, pair.source_test,
                          pair.target_test, 2, _target_train_labels())
    options = {"pretrain_steps": BODY_STEPS // 2, "adapt_steps": BODY_STEPS // 2} \
        if name == "adda" else {}  # ADDA's phases have their own lengths
    return toy_trainer(toy_config(name, steps=BODY_STEPS, lr=0.05, **options), run_dir, pair)


def _target_train_labels():
    import numpy as np
    from toy import two_moons

    rng = np.random.default_rng(0)
    two_moons(600, rng), two_moons(600, rng)  # the source splits, as moons_pair draws them
    return two_moons(600, rng, 35.0)[1]


def graph_body_trainer(name, run_dir, guard):
    """A toy trainer whose steps run the CUDA-graph body without capture: index buffers,
    device-tensor progress and step, tensor learning rates with fused optimisers."""
    trainer = toy(name, run_dir)
    trainer.graph = GraphedStep(trainer, capture=False, guard=guard)
    return trainer


def flushed(trainer, n):
    trainer.method.train()
    for _ in range(n):
        trainer.train_step()
    return trainer.meter.flush(trainer.run_dir / "checkpoint.pt")


@pytest.mark.parametrize("name", CHOICES)
def test_every_builtin_step_is_capturable_and_reads_nothing_back(name, tmp_path):
    """Every phase of every built-in method and preset runs the graph body under the
    host-sync guard, and says it can be captured."""
    trainer = graph_body_trainer(name, tmp_path, guard=True)
    assert trainer.method.capturable
    seen = set()
    for _ in range(trainer.total_steps):
        trainer.train_step()
        seen.add(trainer.phase_index)
    assert seen == set(range(len(trainer.phases)))
    assert torch.is_tensor(next(iter(trainer.optimizers.values())).param_groups[0]["lr"])


@pytest.mark.parametrize("name", CHOICES)
def test_the_graph_body_computes_what_the_eager_step_does(name, tmp_path):
    """Same seed, same batches: the graph path's body with device-tensor progress and step,
    index buffers and in-place metric sums gives the eager step's numbers bit for bit (with
    the eager optimisers; the fused tensor-lr ones differ at rounding: the next test)."""
    eager = toy(name, tmp_path / "eager")  # seeds the global RNG (dropout, VAT noise)
    a = flushed(eager, BODY_STEPS)
    body = toy(name, tmp_path / "body")  # seeds it again
    body.graph = GraphedStep(body, capture=False)
    build = body.build_optimizers
    body.build_optimizers = lambda index, fresh, device_lr=None: build(index, fresh, False)
    b = flushed(body, BODY_STEPS)
    for p, q in zip(eager.method.parameters(), body.method.parameters(), strict=True):
        assert torch.equal(p, q)
    # logs: equal, but a weight logged as a float32 tensor instead of a Python float
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert b[key] == pytest.approx(value, rel=1e-6, abs=1e-12), key


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_fused_tensor_lr_optimiser_steps_like_the_eager_one(kind):
    """The graph path's optimisers (fused, lr a device tensor) agree with the eager ones to
    float rounding over many steps."""
    cfg = settings(type=kind)
    torch.manual_seed(0)
    start = torch.randn(50, 20)
    params = [torch.nn.Parameter(start.clone()) for _ in range(2)]
    eager, fused = build_optimizer([params[0]], cfg), build_optimizer([params[1]], cfg, True)
    schedules = [build_scheduler(eager, cfg, 100), build_scheduler(fused, cfg, 100)]
    for i in range(100):
        grad = torch.sin(start * (i + 1))
        for p in params:
            p.grad = grad.clone()
        eager.step()
        fused.step()
        for schedule in schedules:
            schedule.step()
    torch.testing.assert_close(params[1], params[0], rtol=1e-5, atol=1e-6)
    assert not torch.equal(params[0], start)


def test_a_method_with_a_host_read_is_caught(tmp_path, monkeypatch):
    """The guard is not blind: a step that reads its loss back fails with the reason."""
    trainer = graph_body_trainer("dann", tmp_path, guard=True)
    step = trainer.method.training_step

    def reads_back(update, batch, progress):
        out = step(update, batch, progress)
        if out.loss > 0:  # an `if` on a tensor: a host read
            return out
        return out

    monkeypatch.setattr(trainer.method, "training_step", reads_back)
    with pytest.raises(HostSyncError, match=r"Tensor.__bool__\(\) inside the training step"):
        trainer.train_step()
