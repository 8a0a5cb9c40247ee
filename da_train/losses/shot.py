"""SHOT's target losses (Liang, Hu & Feng, ICML 2020): information maximisation and the
self-supervised pseudo-labels from class centroids of the target features.

Pure tensor functions, no config objects; :mod:`da_train.methods.shot` uses them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: inside the log of the mean prediction, as the authors' code (log(p + 1e-5))
MEAN_EPS = 1e-5


def information_maximisation(logits: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """``mean_i H(p_i) - H(mean_i p_i)`` (nats), to be minimised: each prediction confident,
    the batch's predictions spread over the classes. Returns the loss and its two parts
    (``entropy``: mean per-sample entropy; ``diversity``: entropy of the mean prediction).

    The per-sample entropy uses ``log_softmax`` (exact); the mean prediction's entropy uses
    ``log(p + 1e-5)`` as the authors' code does, so its gradient stays finite at p = 0."""
    log_p = F.log_softmax(logits.float(), dim=1)
    p = log_p.exp()
    entropy = -(p * log_p).sum(1).mean()
    mean_p = p.mean(0)
    diversity = -(mean_p * torch.log(mean_p + MEAN_EPS)).sum()
    return entropy - diversity, {"entropy": entropy.detach(), "diversity": diversity.detach()}


def _cosine_nearest(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the centroid at the smallest cosine distance from each (unit-norm) row."""
    centroids = centroids / centroids.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (features @ centroids.T).argmax(1)


def centroid_pseudo_labels(features: torch.Tensor, logits: torch.Tensor,
                           rounds: int = 1) -> torch.Tensor:
    """SHOT's pseudo-labels for a whole target set (``obtain_label`` of the authors' code).

    1. Append a constant 1 to each feature vector and L2-normalise the rows.
    2. Class centroids = softmax-weighted means of the features
       (``c_k = sum_i p_ik f_i / (1e-8 + sum_i p_ik)``); each sample takes the label of the
       centroid at the smallest cosine distance.
    3. ``rounds`` times: centroids = means of the samples that took each label (hard
       weights), labels reassigned the same way (the paper: one round).
    """
    feats = torch.cat([features.float(), features.new_ones(len(features), 1).float()], 1)
    feats = feats / feats.norm(dim=1, keepdim=True).clamp_min(1e-12)
    weights = F.softmax(logits.float(), dim=1)
    labels = None
    for _ in range(rounds + 1):
        centroids = weights.T @ feats / (1e-8 + weights.sum(0)[:, None])
        labels = _cosine_nearest(feats, centroids)
        weights = F.one_hot(labels, logits.shape[1]).float()
    return labels
