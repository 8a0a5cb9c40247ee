"""Batch sampling by index on the training device.

Why not a ``DataLoader``: the digit datasets are uint8 tensors already on the device, so a
batch is one gather (``images[idx]``). The sampler only produces ``idx``.

:class:`EpochSampler` draws shuffled epochs: every index appears exactly once per epoch
(balanced: no sample is seen more often than another), a batch that crosses the end of an
epoch takes the rest from the next epoch's permutation, and each epoch's permutation is a
pure function of ``(seed, stream, epoch)``. Its whole state is therefore three integers,
which is what makes checkpoint/resume bit-identical and cheap.
"""

from __future__ import annotations

import numpy as np
import torch


def _epoch_seed(seed: int, stream: int, epoch: int) -> int:
    """A well-mixed 63-bit seed for one epoch of one stream (source, target, ...)."""
    state = np.random.SeedSequence([seed, stream, epoch]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


class EpochSampler:
    """Indices ``0..n-1`` in shuffled epochs, ``batch_size`` at a time, on ``device``."""

    def __init__(self, n: int, batch_size: int, device: torch.device | str, seed: int,
                 stream: int = 0):
        if n < 1:
            raise ValueError("EpochSampler needs at least one sample")
        self.n, self.batch_size = n, batch_size
        self.device = torch.device(device)
        self.seed, self.stream = seed, stream
        self.epoch, self.pos = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(_epoch_seed(self.seed, self.stream, epoch))
        return torch.randperm(self.n, generator=generator, device=self.device)

    def __call__(self) -> torch.Tensor:
        parts, need = [], self.batch_size
        while need > 0:
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
            take = min(need, self.n - self.pos)
            parts.append(self._perm[self.pos: self.pos + take])
            self.pos += take
            need -= take
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def state_dict(self) -> dict:
        return {"n": self.n, "seed": self.seed, "stream": self.stream,
                "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n:
            raise ValueError(f"sampler state is for {state['n']} samples, not {self.n}")
        self.seed, self.stream = state["seed"], state["stream"]
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._perm = self._permutation(self.epoch)
