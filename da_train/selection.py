"""Validators: scores that choose a checkpoint, a lambda or a method without target labels.

In unsupervised domain adaptation nobody has target labels, so choosing by target test
accuracy (what many libraries do) is an oracle. Each validator here is a small pure function
of what a run does have at an evaluation: the logits/labels/features of a held-out *source
validation* split (see :mod:`da_train.data.source_val`) and the logits/features of
*unlabelled* target images. Each has an explicit direction in :data:`VALIDATORS`
(``"max"``: higher is better, ``"min"``: lower is better); da-report uses it to say which
configuration a validator would have picked and what that pick would have cost.

The trainer calls :func:`compute_validators` at every evaluation and at the end; no function
here takes target labels. Costs are capped: every input is subsampled (seeded) to at most
``max_points`` rows, so one call stays well under a second on a CPU.

:func:`proxy_a_distance` (Ben-David et al.) measures how separable the two domains' features
are: ``2 (1 - 2 err)`` of a linear domain classifier, 0 for indistinguishable features, 2 for
perfectly separable ones.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import ConfigError
from .losses.bnm import nuclear_norm
from .losses.target import entropy

MAX_POINTS = 2000
SND_TEMPERATURE = 0.05
# Logistic regression for the domain classifiers (DEV, proxy A-distance): L-BFGS on
# standardised features with a small L2 penalty, full batch, a fixed number of iterations.
L2 = 1e-3
LBFGS_ITERS = 50


# ------------------------------------------------------------------------ prediction based
def _probs(logits: torch.Tensor) -> torch.Tensor:
    return F.softmax(logits.float(), dim=1)


def _row_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each row of a probability matrix (the shared function, eps 1e-12)."""
    return entropy(p, 1e-12)


def source_val_accuracy(source_val_logits: torch.Tensor,
                        source_val_labels: torch.Tensor) -> float:
    """Accuracy on the held-out source validation split; higher is better.

    The classic choice: labelled, but from the wrong domain, so it rewards source fit and is
    blind to how well features transfer.
    """
    pred = source_val_logits.argmax(dim=1)
    return float((pred == source_val_labels.to(pred.device)).float().mean())


def prediction_entropy(target_logits: torch.Tensor) -> float:
    """Mean entropy (nats) of the target predictions; lower is better (Morerio et al. 2018).

    Confident target predictions are taken as a sign of adaptation; a collapsed model that
    predicts one class with certainty also scores well, which IM and BNM guard against.
    """
    return float(_row_entropy(_probs(target_logits)).mean())


def information_maximisation(target_logits: torch.Tensor) -> float:
    """IM = H(mean prediction) - mean H(prediction), in nats; higher is better.

    Sign convention of Musgrave et al. 2022 (and the method notes): the diversity term (the
    entropy of the class marginal) minus the mean per-sample entropy. It is the negative of
    "mean entropy minus entropy of the mean", so it is maximised. Its maximum, log(K), is
    reached by confident predictions spread evenly over the K classes; a collapse onto one
    class scores 0.
    """
    p = _probs(target_logits)
    marginal = p.mean(dim=0, keepdim=True)
    return float(_row_entropy(marginal)[0] - _row_entropy(p).mean())


def batch_nuclear_norm(target_logits: torch.Tensor) -> float:
    """Nuclear norm of the N x K target prediction matrix divided by N; higher is better.

    BNM (Cui et al. 2020): a large nuclear norm needs confident *and* diverse predictions.
    The value depends on N, so compare runs evaluated on the same number of points (the
    cap in :func:`compute_validators` keeps that fixed).
    """
    p = _probs(target_logits)
    return float(nuclear_norm(p))


# ------------------------------------------------------------------------ feature based
def soft_neighbourhood_density(target_feats: torch.Tensor,
                               temperature: float = SND_TEMPERATURE) -> float:
    """SND (Saito et al., ICCV 2021); higher is better.

    L2-normalise the target features, take pairwise cosine similarities without the
    diagonal, softmax each row with temperature 0.05 and average the rows' entropies. Target
    points that sit in dense clusters have many similar neighbours (high entropy); features
    scattered like noise have one nearest neighbour that dominates (low entropy).
    """
    f = F.normalize(target_feats.float().flatten(1), dim=1)
    sim = f @ f.T
    sim.fill_diagonal_(-math.inf)
    p = F.softmax(sim / temperature, dim=1)
    return float(_row_entropy(p).mean())


def _standardise(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per feature using ``ref``'s statistics (stable L-BFGS).

    A feature that is constant in ``ref`` (a dead ReLU, a border pixel) is only centred:
    dividing by its near-zero std would blow up any other point that differs there.
    """
    mean, std = ref.mean(dim=0), ref.std(dim=0)
    return (x - mean) / torch.where(std > 1e-6, std, torch.ones_like(std))


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float = L2,
                 iters: int = LBFGS_ITERS) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of an L2-regularised logistic regression of y in {0, 1} on x.

    Full-batch L-BFGS from zero: deterministic, and a few hundred milliseconds for 4,000
    points of a few hundred dimensions.
    """
    # Autograd on, even when the caller evaluates under no_grad or inference_mode; clones
    # turn inference tensors into ordinary ones.
    with torch.inference_mode(False), torch.enable_grad():
        x, y = x.float().clone(), y.float().clone()
        w = torch.zeros(x.shape[1], requires_grad=True)
        b = torch.zeros(1, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
    return w.detach(), b.detach()


def density_ratio(source_feats: torch.Tensor, target_feats: torch.Tensor,
                  l2: float = L2, folds: int = 2, seed: int = 0) -> torch.Tensor:
    """Estimated p_target(x) / p_source(x) at each source point (DEV's importance weights).

    A logistic domain classifier d(x) = P(target | x) is fitted on both sets; Bayes' rule
    with the class priors n_s, n_t of that fit gives w = (n_s / n_t) d / (1 - d). Cross-
    fitted over ``folds`` (seeded) folds: each source point's weight comes from a classifier
    that did not see it, since in-sample logits of a high-dimensional fit are overconfident
    and would inflate the weights.
    """
    xs = source_feats.float().flatten(1).cpu()
    xt = target_feats.float().flatten(1).cpu()
    gen = torch.Generator().manual_seed(seed)
    fold_s = torch.randperm(len(xs), generator=gen) % folds
    fold_t = torch.randperm(len(xt), generator=gen) % folds
    weights = torch.empty(len(xs))
    for k in range(folds):
        fit_s, fit_t = xs[fold_s != k], xt[fold_t != k]
        if folds == 1:
            fit_s, fit_t = xs, xt
        both = torch.cat([fit_s, fit_t])
        y = torch.cat([torch.zeros(len(fit_s)), torch.ones(len(fit_t))])
        w, b = fit_logistic(_standardise(both, both), y, l2)
        held = fold_s == k
        logit_target = _standardise(xs[held], both) @ w + b   # log(d / (1 - d))
        weights[held] = torch.exp(logit_target) * (len(fit_s) / len(fit_t))
    return weights


def deep_embedded_validation(source_val_feats: torch.Tensor, source_val_losses: torch.Tensor,
                             target_feats: torch.Tensor, l2: float = L2) -> float:
    """DEV (You et al., ICML 2019); lower is better.

    An importance-weighted source validation loss, an estimate of the *target* loss: with
    density ratios w and per-sample losses L of the source validation points,
    DEV = mean(w L) + eta mean(w) - eta, eta = -Cov(w L, w) / Var(w). The control variate
    (mean(w) has expectation 1) cancels much of the variance the weights add.
    """
    w = density_ratio(source_val_feats, target_feats, l2)
    loss = source_val_losses.float().cpu()
    weighted = w * loss
    var = w.var()
    eta = -torch.cov(torch.stack([weighted, w]))[0, 1] / var if var > 0 else torch.tensor(0.0)
    return float(weighted.mean() + eta * w.mean() - eta)


def proxy_a_distance(source_feats: torch.Tensor, target_feats: torch.Tensor, seed: int = 0,
                     max_points: int = MAX_POINTS) -> float:
    """Proxy A-distance 2 (1 - 2 err) between two feature sets (Ben-David et al. 2007).

    Equal numbers of source and target points (at most ``max_points`` each, seeded) so that
    chance error is 0.5; a linear domain classifier is trained on one half and its error
    ``err`` measured on the other. 0 means the domains are indistinguishable by a linear
    classifier, 2 perfectly separable; a value below 0 is noise around 0.
    """
    gen = torch.Generator().manual_seed(seed)
    n = min(len(source_feats), len(target_feats), max_points)
    xs = _subsample(source_feats.float().flatten(1).cpu(), n, gen)
    xt = _subsample(target_feats.float().flatten(1).cpu(), n, gen)
    x = torch.cat([xs, xt])
    y = torch.cat([torch.zeros(n), torch.ones(n)])
    order = torch.randperm(2 * n, generator=gen)
    train, test = order[: n], order[n:]
    z = _standardise(x, x[train])
    w, b = fit_logistic(z[train], y[train])
    err = float(((z[test] @ w + b > 0).float() != y[test]).float().mean())
    return 2.0 * (1.0 - 2.0 * err)


# ------------------------------------------------------------------------ entry point
def _subsample(x: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    return x if len(x) <= n else x[torch.randperm(len(x), generator=gen)[:n].to(x.device)]


def _subsample_rows(tensors: list[torch.Tensor | None], cap: int, gen: torch.Generator):
    """The same (seeded) rows of each tensor of one domain, at most ``cap`` of them."""
    n = len(next(t for t in tensors if t is not None))
    if n <= cap:
        return tensors
    index = torch.randperm(n, generator=gen)[:cap]
    return [None if t is None else t[index.to(t.device)] for t in tensors]


# name -> (function, direction, the inputs it reads). No entry reads target labels.
VALIDATORS = {
    "source_val_acc": (source_val_accuracy, "max", ("source_val_logits", "source_val_labels")),
    "entropy": (prediction_entropy, "min", ("target_logits",)),
    "im": (information_maximisation, "max", ("target_logits",)),
    "snd": (soft_neighbourhood_density, "max", ("target_feats",)),
    "dev": (deep_embedded_validation, "min",
            ("source_val_feats", "source_val_losses", "target_feats")),
    "bnm": (batch_nuclear_norm, "max", ("target_logits",)),
}
DIRECTIONS = {name: entry[1] for name, entry in VALIDATORS.items()}


def compute_validators(source_val_logits: torch.Tensor | None,
                       source_val_labels: torch.Tensor | None,
                       source_val_feats: torch.Tensor | None,
                       target_logits: torch.Tensor, target_feats: torch.Tensor, *,
                       max_points: int = MAX_POINTS, seed: int = 0) -> dict[str, float]:
    """Every validator of :data:`VALIDATORS` whose inputs exist, as plain floats.

    Source validation inputs are ``None`` when the run held no source validation split
    (``data.source_val=0``): ``source_val_acc`` and ``dev`` are then left out rather than
    reported as NaN. Each domain is subsampled to ``max_points`` rows (the same rows of its
    logits and features, seeded), so the cost is fixed whatever the split sizes. Target
    labels are not an input: nothing here can read them.
    """
    gen = torch.Generator().manual_seed(seed)
    target_logits, target_feats = _subsample_rows([target_logits, target_feats],
                                                  max_points, gen)
    inputs = {"target_logits": target_logits.float().cpu(),
              "target_feats": target_feats.float().flatten(1).cpu()}
    if source_val_logits is not None and len(source_val_logits) > 0:
        logits, labels, feats = _subsample_rows(
            [source_val_logits, source_val_labels, source_val_feats], max_points, gen)
        logits, labels = logits.float().cpu(), labels.long().cpu()
        inputs.update(source_val_logits=logits, source_val_labels=labels,
                      source_val_losses=F.cross_entropy(logits, labels, reduction="none"))
        if feats is not None:
            inputs["source_val_feats"] = feats.float().flatten(1).cpu()
    out = {}
    for name, (fn, _, needs) in VALIDATORS.items():
        if all(key in inputs for key in needs):
            out[name] = fn(*(inputs[key] for key in needs))
    return out


def best_index(values: list[float], direction: str) -> int:
    """Index of the best value for a validator's direction (ties: the first)."""
    if direction not in ("max", "min"):
        raise ValueError(f"direction must be 'max' or 'min', got {direction!r}")
    sign = 1.0 if direction == "max" else -1.0
    return max(range(len(values)), key=lambda i: (sign * values[i], -i))


# ------------------------------------------------------------------------ objective
#: Scores where lower is better; the Optuna sweeper maximises, so these are negated.
LOWER_IS_BETTER = ("loss", "entropy", "error", "risk", "dev")


def objective(results: dict, name: str) -> tuple[float, float]:
    """(value to maximise, raw score) of ``name`` (``objective=``, what a sweep optimises),
    looked up in results.json's top level, then under ``selection`` (the validators)."""
    selection = results.get("selection") or {}
    if name in results and isinstance(results[name], (int, float)):
        raw = results[name]
    elif name in selection:
        raw = selection[name]
        raw = raw.get("score", raw.get("value")) if isinstance(raw, dict) else raw
    else:
        known = [k for k, v in results.items() if isinstance(v, float)] + list(selection)
        raise ConfigError(f"objective={name}: results.json has no such score. Choose one of "
                          f"{', '.join(known)} (e.g. `objective=source_acc`, the default).")
    lower = DIRECTIONS.get(name) == "min" or (
        name not in DIRECTIONS and any(word in name.lower() for word in LOWER_IS_BETTER))
    return (-1.0 if lower else 1.0) * float(raw), float(raw)


def is_oracle(name: str) -> bool:
    """An objective that reads target labels: model selection that cheats."""
    return name.startswith("target_")
