"""Evaluation of a method on its domain pair, between training steps and at the end.

:class:`Evaluator` owns everything a run measures about its model, none of which changes the
model or any random state the training reads:

- source and target test accuracy, the method's and the regularisers' extra target metrics,
  and the final target confusion matrix (:meth:`Evaluator.evaluate`);
- the label-free validators of :mod:`da_train.selection` (:meth:`Evaluator.validators`) on a
  fixed, seeded subset of the unlabelled target training images and on the held-out source
  validation split;
- test features (:meth:`Evaluator.test_features`): the proxy A-distance's input and the
  before/after embeddings (``embeddings.npz``, the TensorBoard projector, the figures).

The trainer (da_train/trainer.py) decides *when* to evaluate; the checkpoint
(da_train/checkpoints.py) and results.json (da_train/results.py) store what was measured.
Everything runs in large batches on the training device, without host syncs until the
metrics are read back as floats.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .errors import ConfigError
from .regularizers import regularizer_eval_metrics
from .runfiles import EMBEDDINGS
from .selection import compute_validators

#: Images per domain for the validators and the proxy A-distance (a fixed, seeded subset).
SELECT_SAMPLES = 2000


class Evaluator:
    """Evaluates ``method`` on ``data`` (a :class:`~da_train.data.DomainPair` on the training
    device). Keeps what the checkpoint and results.json need besides the accuracies:
    ``last_selection`` (the validators of the last evaluation), ``target_confusion`` (of the
    last full evaluation, rows: true target class, columns: predicted class) and
    ``eval_seconds`` (time spent evaluating)."""

    def __init__(self, method, data, tcfg, seed: int, regs, run_dir: Path):
        self.method, self.data, self.tcfg = method, data, tcfg
        self.seed, self.regs, self.run_dir = seed, regs, Path(run_dir)
        self.select_idx = torch.randperm(
            len(data.target_train_images), generator=torch.Generator().manual_seed(seed)
        )[:SELECT_SAMPLES].to(data.target_train_images.device)
        self.last_selection: dict[str, float] = {}
        self.target_confusion: torch.Tensor | None = None
        self.eval_seconds = 0.0

    def evaluate(self, full: bool = True) -> dict[str, float]:
        """Source and target test accuracy (+ the method's extra target metrics).

        ``full=False`` (intermediate curves) uses the first ``trainer.eval_samples`` test
        images of each domain, so evaluation stays a small share of the run; the final
        evaluation, the one in results.json, always uses the full test splits.
        """
        start = time.perf_counter()
        was_training = self.method.training
        self.method.eval()
        n = None if full or self.tcfg.eval_samples == 0 else self.tcfg.eval_samples
        src, tgt = self.data.source_test, self.data.target_test
        src_logits = self.predict_all(self.method.predict, src.images[:n])
        tgt_logits = self.predict_all(self.method.predict_target, tgt.images[:n])
        tgt_pred = tgt_logits.argmax(1)
        metrics = {
            "source_acc": (src_logits.argmax(1) == src.labels[:n]).float().mean(),
            "target_acc": (tgt_pred == tgt.labels[:n]).float().mean(),
            **self.method.eval_metrics(tgt_logits, tgt.labels[:n]),
            **regularizer_eval_metrics(self.regs, tgt_logits, tgt.labels[:n]),
        }
        if full:
            self.target_confusion = confusion_matrix(tgt_pred, tgt.labels, tgt_logits.shape[1])
        self.last_selection = self.validators()
        if self.tcfg.embed_samples and not (self.run_dir / EMBEDDINGS).exists():
            self.save_embeddings(first=self.test_features(self.tcfg.embed_samples // 2))
        self.method.train(was_training)
        self.eval_seconds += time.perf_counter() - start
        return {k: float(v) for k, v in metrics.items()}

    @torch.no_grad()
    def validators(self) -> dict[str, float]:
        """The label-free scores of :mod:`da_train.selection` (``select/`` in TensorBoard,
        ``selection`` in results.json) on a fixed subset of the unlabelled target *training*
        images and on the held-out source validation split: no target label is read."""
        method, data = self.method, self.data
        images = data.target_train_images.index_select(0, self.select_idx)
        target_logits = self.predict_all(method.predict_target, images)
        target_feats = self.predict_all(lambda x: method.embed(x, "target"), images)
        source = [None, None, None]
        if data.source_val is not None:
            val = data.source_val
            source = [self.predict_all(method.predict, val.images[:SELECT_SAMPLES]),
                      val.labels[:SELECT_SAMPLES],
                      self.predict_all(lambda x: method.embed(x, "source"),
                                       val.images[:SELECT_SAMPLES])]
        return compute_validators(*source, target_logits, target_feats, seed=self.seed)

    @torch.no_grad()
    def test_features(self, n: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{domain: (features, labels)} of the first ``n`` test images of each domain."""
        out = {}
        for domain, split in (("source", self.data.source_test),
                              ("target", self.data.target_test)):
            feats = self.predict_all(lambda x, d=domain: self.method.embed(x, d),
                                     split.images[:n])
            out[domain] = (feats.flatten(1).cpu(), split.labels[:n].cpu())
        return out

    @torch.no_grad()
    def predict_all(self, predict, images: torch.Tensor) -> torch.Tensor:
        """Logits for a whole split in large batches (no host sync)."""
        bs = self.tcfg.eval_batch_size
        return torch.cat([predict(self.data.eval_view(images[i: i + bs])).float()
                          for i in range(0, len(images), bs)])

    # ------------------------------------------------------------------ features out
    def save_embeddings(self, first=None, last=None) -> None:
        """embeddings.npz for the before/after feature figure (da_train/plots.py); written at
        the first evaluation (first = last) and rewritten at the end, so a resumed run keeps
        its "before" without storing it in the checkpoint."""
        from .plots import load_embeddings, save_embeddings

        path = self.run_dir / EMBEDDINGS
        if first is None:
            old = load_embeddings(path) if path.exists() else None
            first = {d: (old[f"first_{d}"], old[f"first_{d}_labels"]) for d in last} \
                if old is not None else last
        last = last or first
        save_embeddings(path, **{f"{when}_{d}{suffix}": pair[d][i]
                                 for when, pair in (("first", first), ("last", last))
                                 for d in ("source", "target")
                                 for i, suffix in ((0, ""), (1, "_labels"))})

    def add_embedding(self, writer, features: dict, step: int) -> None:
        """Source + target test features in the TensorBoard projector (domain, class, image),
        reduced to 32 dimensions by PCA so the run folder stays small."""
        feats = torch.cat([features["source"][0], features["target"][0]])
        meta = [[domain, str(int(y))] for domain in ("source", "target")
                for y in features[domain][1]]
        n = len(features["source"][0])
        images = [thumbnails(split.images[:n]) for split in (self.data.source_test,
                                                             self.data.target_test)]
        if feats.shape[1] > 32 and feats.shape[0] > 32:
            u, s, _ = torch.pca_lowrank(feats, q=32)
            feats = u * s
        label_img = torch.cat(images) if images[0] is not None else None
        writer.add_embedding(feats, metadata=meta, label_img=label_img,
                             metadata_header=["domain", "class"], global_step=step,
                             tag="features")

    def add_figures(self, writer, step: int) -> None:
        """Accuracy curves, the confusion matrix and the before/after feature scatter in
        TensorBoard's Images tab (``trainer.figures=true``)."""
        from .plots import run_figures

        for tag, fig in run_figures(self.run_dir, self.target_confusion.numpy(),
                                    self.data.names()).items():
            writer.add_figure(tag, fig, step)


def require_plots() -> None:
    """``trainer.figures=true`` needs matplotlib: fail before training, not at the end."""
    from .plots import PlotsUnavailable, require_matplotlib

    try:
        require_matplotlib()
    except PlotsUnavailable as err:
        raise ConfigError(f"trainer.figures=true: {err}") from err


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor,
                     num_classes: int) -> torch.Tensor:
    """Counts[true, predicted]: shows *which* classes a method confuses, e.g. a target class
    mapped onto the wrong source class by domain alignment (see docs/results.md)."""
    flat = labels.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes ** 2).view(num_classes, num_classes).cpu()


def thumbnails(images: torch.Tensor) -> torch.Tensor | None:
    """uint8 N x C x H x W images -> float RGB in [0, 1] for the projector's sprite (None for
    inputs that are not images, e.g. vectors or signals)."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        return None
    img = images.float().cpu() / 255.0
    return img.expand(-1, 3, -1, -1) if img.shape[1] == 1 else img
