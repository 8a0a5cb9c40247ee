"""The training step as one CUDA graph (``trainer.cuda_graph``), and the host-sync guard.

Why: a digit step is about a hundred small kernels. Launched one by one from Python the GPU
idles between them (on an H200 the eager trainer ran 190 steps/s where the same step
captured once and replayed ran 1,736). A CUDA graph records the kernels of one step once and
replays them with one launch.

What a replay may not contain is anything the host decides per step. So the step is split:

* **outside the graph, on the host, no device read**: the samplers pick the batch indices
  and copy them into fixed index tensors; the phase's progress and the step number are
  written into 0-d device tensors (``fill_``); after the replay the lr schedule writes each
  optimiser's lr tensor (:class:`da_train.optim.LrSchedule`) and the meter counts the step;
* **inside the graph**: the gather of the uint8 images by those indices, normalisation and
  augmentation, the method's forward and losses for every update of the phase, backward,
  the fused optimiser steps (tensor lr), the method's after-update hook (EMA teachers), the
  metric sums that logging reads (accumulated in place), the collapse detector's counters.

Everything that changes from step to step is therefore a device tensor updated in place:
progress (GRL coefficient, every ramp: :func:`da_train.losses.sigmoid_ramp` and
:meth:`da_train.regularizers.Regularizer.weight` accept it), learning rates, step number.
Random numbers (dropout, augmentation) come from the CUDA generator, which graphs advance
per replay. One graph per training phase, captured after ``WARMUP`` eager steps of that
phase on a side stream (the steps count: they are real training steps), rebuilt after a
resume. Logging, evaluation, checkpoints, the method's target refresh (SHOT's pseudo-labels,
DIRT-T's teacher, which copy into their tensors in place) and signals run between replays.

``trainer.cuda_graph``: ``true`` captures (an error if it cannot: CPU, or a method that says
``capturable = False``); ``false`` never; ``auto`` captures on CUDA when the method is
capturable and nothing on the run needs host logic in the step (``debug.inject_nan_at``,
``trainer.detect_anomaly``, ``trainer.compile``). Until the graph path has been checked
against the eager path on a GPU (``scripts/gpu_check.py``; see docs/performance.md), ``auto``
stays eager: see :data:`AUTO_CAPTURES`.

:func:`no_host_sync` is the guard the tests put around the step: on CUDA torch's own sync
debug mode set to "error"; on CPU (no device to wait for) the Tensor methods that would wait
for a GPU raise :class:`HostSyncError`.
"""

from __future__ import annotations

import contextlib
import logging

import torch

log = logging.getLogger(__name__)

#: ``trainer.cuda_graph=auto`` captures when True. False until scripts/gpu_check.py has shown
#: graph and eager curves agree for every built-in method on a GPU (docs/performance.md).
AUTO_CAPTURES = False
#: eager steps of each phase (on a side stream) before its graph is captured
WARMUP = 3


class HostSyncError(RuntimeError):
    """A value was read back to the host inside the training step."""


# Tensor methods that make the host wait for the device (on a GPU), and why each matters.
_SYNCING_METHODS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__",
                    "__index__", "nonzero", "masked_select", "unique")
_SYNCING_FUNCTIONS = ("nonzero", "masked_select", "unique", "argwhere")


def _refuse(name: str):
    def refuse(*args, **kwargs):
        raise HostSyncError(
            f"{name} inside the training step reads a value back to the host: on a GPU the "
            "host waits for the device there, and a CUDA graph cannot capture it. Keep the "
            "value on the device (torch.where, a masked mean instead of boolean indexing, a "
            "0-d tensor instead of a Python number) or read it at logging time.")
    return refuse


def _is_mask(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


@contextlib.contextmanager
def no_host_sync(device: torch.device):
    """Fail on any read back to the host inside the block (see the module docstring)."""
    if device.type == "cuda":
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(previous)
        return
    saved = {name: getattr(torch.Tensor, name) for name in _SYNCING_METHODS}
    saved_functions = {name: getattr(torch, name) for name in _SYNCING_FUNCTIONS}
    getitem = torch.Tensor.__getitem__

    def guarded_getitem(self, index):
        if _is_mask(index):
            _refuse("indexing with a boolean mask (a data-dependent shape)")()
        return getitem(self, index)

    try:
        for name in _SYNCING_METHODS:
            setattr(torch.Tensor, name, _refuse(f"Tensor.{name}()"))
        for name in _SYNCING_FUNCTIONS:
            setattr(torch, name, _refuse(f"torch.{name}()"))
        torch.Tensor.__getitem__ = guarded_getitem
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)
        for name, fn in saved_functions.items():
            setattr(torch, name, fn)
        torch.Tensor.__getitem__ = getitem


def resolve(setting, device: torch.device, method, cfg) -> tuple[bool, str]:
    """Whether this run captures its step, and the reason (one log line)."""
    setting = str(setting).lower()
    if setting == "false":
        return False, "trainer.cuda_graph=false: eager steps"
    blockers = []
    if device.type != "cuda":
        blockers.append(f"the device is {device.type}, CUDA graphs need a GPU")
    if not getattr(method, "capturable", False):
        blockers.append(f"method {cfg.method.name} says its step cannot be captured "
                        "(capturable = False: host-side logic in its step)")
    if cfg.debug.inject_nan_at:
        blockers.append("debug.inject_nan_at is set")
    if cfg.trainer.detect_anomaly:
        blockers.append("trainer.detect_anomaly=true")
    if cfg.trainer.compile:
        blockers.append("trainer.compile=true")
    if setting == "true" and blockers:
        from .errors import ConfigError

        raise ConfigError(f"trainer.cuda_graph=true, but the step cannot be captured: "
                          f"{'; '.join(blockers)}. Use trainer.cuda_graph=auto (captures "
                          "where it can) or false.")
    if blockers:
        return False, "eager steps: " + "; ".join(blockers)
    if setting == "auto" and not AUTO_CAPTURES:
        return False, ("eager steps: trainer.cuda_graph=auto stays eager until the graph "
                       "path is checked on a GPU (scripts/gpu_check.py); "
                       "trainer.cuda_graph=true captures")
    return True, "the training step runs as one CUDA graph per phase"


class GraphedStep:
    """Captures the trainer's step body once per phase and replays it (CUDA only).

    The trainer supplies ``gather(phase, source_index, target_index) -> Batch`` and
    ``run_updates(phase, batch, progress, step) -> outputs``: the same code its eager step
    runs, so the graph cannot drift from it."""

    def __init__(self, trainer, capture: bool = True, guard: bool = False):
        """``capture=False`` runs the same body eagerly with the graph path's inputs (index
        buffers, device-tensor progress and lr, fused optimisers): the CPU tests' stand-in
        for a replay. ``guard=True`` runs the body inside :func:`no_host_sync`."""
        self.trainer, self.capture, self.guard = trainer, capture, guard
        device = trainer.device
        bs = trainer.tcfg.batch_size
        self.progress = torch.zeros((), dtype=torch.float64, device=device)
        self.step = torch.zeros((), dtype=torch.long, device=device)
        self.source_index = torch.zeros(bs, dtype=torch.long, device=device)
        self.target_index = torch.zeros(bs, dtype=torch.long, device=device)
        self.graphs: dict[int, tuple] = {}
        self.warm: dict[int, int] = {}
        self.stream = torch.cuda.Stream(device) if capture else None

    def reset(self) -> None:
        """Drop the graphs (after loading a checkpoint or entering a phase: new optimisers)."""
        self.graphs.clear()
        self.warm.clear()

    def __call__(self, index: int, phase, progress: float):
        t = self.trainer
        if phase.source:
            self.source_index.copy_(t.source_sampler(), non_blocking=True)
        self.target_index.copy_(t.target_sampler(), non_blocking=True)
        self.progress.fill_(progress)
        self.step.fill_(t.step + 1)
        if not self.capture:
            return self._body(phase)
        if index in self.graphs:
            graph, outs, keys = self.graphs[index]
            graph.replay()
            t.meter.count(keys)
            return outs
        current = torch.cuda.current_stream(t.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            if self.warm.get(index, 0) < WARMUP:  # real steps, eager, on the side stream
                self.warm[index] = self.warm.get(index, 0) + 1
                outs = self._body(phase)
                current.wait_stream(self.stream)
                return outs
        current.wait_stream(self.stream)
        graph = torch.cuda.CUDAGraph()
        with t.meter.recording() as keys, torch.cuda.graph(graph):
            outs = self._body(phase)
        graph.replay()  # capture records without running: this step runs here
        self.graphs[index] = (graph, outs, list(keys))
        log.info("captured the %s phase's step as a CUDA graph", phase.name)
        return outs

    def _body(self, phase):
        t = self.trainer
        with no_host_sync(t.device) if self.guard else contextlib.nullcontext():
            batch = t.gather(phase, self.source_index if phase.source else None,
                             self.target_index)
            return t.run_updates(phase, batch, self.progress, self.step)
