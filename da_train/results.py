"""What a run writes when training ends: results.json and the end-of-run outputs.

This module owns the contents of ``results.json`` (:func:`results_record`: the run's record
and its last evaluation, read by ``da-report``, the sweeps and the figures), the TensorBoard
HParams entry (:func:`hparams`), and :func:`finish`, the end of a run: the final test
features (the proxy A-distance, the projector, ``embeddings.npz``), the figures, the
objective, the HParams entry, then results.json. It takes the
:class:`~da_train.trainer.Trainer` and reads its config, step, phases, ``last_eval`` and its
``evaluator`` (da_train/evaluation.py); it changes no training state.
"""

from __future__ import annotations

import math

from omegaconf import OmegaConf

from .errors import override_key
from .evaluation import SELECT_SAMPLES
from .runfiles import RESULTS
from .runtime import device_name, package_versions, write_json
from .selection import is_oracle, objective, proxy_a_distance


def finish(trainer, writer, wall: float) -> dict:
    """results.json, the projector, the figures and the HParams entry (closes ``writer``);
    returns what results.json holds. ``wall``: the run's wall time in seconds."""
    cfg, tcfg, evaluator = trainer.cfg, trainer.tcfg, trainer.evaluator
    trainer.method.eval()
    features = evaluator.test_features(SELECT_SAMPLES)
    trainer.method.train()
    results = results_record(trainer, wall)
    results["proxy_a_distance"] = proxy_a_distance(features["source"][0],
                                                   features["target"][0], seed=cfg.seed)
    if tcfg.embed_samples:
        n = tcfg.embed_samples // 2
        last = {d: (f[:n], y[:n]) for d, (f, y) in features.items()}
        evaluator.add_embedding(writer, last, trainer.step)
        evaluator.save_embeddings(last=last)
    if tcfg.figures:
        evaluator.add_figures(writer, trainer.step)
    value, raw = objective(results, cfg.objective)
    results["objective"] = {"name": cfg.objective, "score": raw, "maximised": value}
    if is_oracle(cfg.objective):
        results["oracle_selection"] = True  # chosen by target labels: da-report says so
    writer.add_hparams(hparams(cfg, trainer.overrides),
                       {"hparam/target_acc": results["target_acc"],
                        "hparam/source_acc": results["source_acc"]},
                       run_name=".", global_step=trainer.step)
    writer.close()
    write_json(trainer.run_dir / RESULTS, results)
    return results


def hparams(cfg, overrides: list[str]) -> dict:
    """Method, pair and seed first, then every key the command line set (the swept keys
    of a sweep); keys left at their defaults are the same in every run, so left out."""
    chosen = {"method.name": cfg.method.name, "data.name": cfg.data.name, "seed": cfg.seed}
    for key in (override_key(o) for o in overrides):
        value = OmegaConf.select(cfg, key, default=None)
        if key not in chosen and not key.startswith("hydra") and value is not None:
            chosen[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return chosen


def results_record(trainer, wall: float) -> dict:
    """results.json without the end-of-run additions of :func:`finish` (proxy A-distance,
    objective)."""
    cfg, data, evaluator = trainer.cfg, trainer.data, trainer.evaluator
    step, last_eval, confusion = trainer.step, trainer.last_eval, evaluator.target_confusion
    return {
        "status": "completed",
        "method": cfg.method.name,
        "data": cfg.data.name,
        "seed": cfg.seed,
        "oracle": trainer.method.needs_target_labels,
        "source_acc": last_eval["source_acc"],
        "target_acc": last_eval["target_acc"],
        **{k: v for k, v in last_eval.items() if k not in ("source_acc", "target_acc")},
        **({"target_confusion": confusion.tolist()} if confusion is not None else {}),
        "class_names": data.names(),
        "sizes": data.sizes(),
        "source_val": cfg.data.source_val,
        "selection": evaluator.last_selection,
        "steps": step,
        "phases": {p.name: p.steps for p in trainer.phases},
        "wall_time_s": wall,
        "eval_time_s": evaluator.eval_seconds,
        "steps_per_s": step / wall if wall > 0 else math.nan,
        "device": str(trainer.device),
        "device_name": device_name(trainer.device),
        "versions": package_versions(),
        "overrides": trainer.overrides,
        "run_dir": str(trainer.run_dir),
        # data_roots (resolved data/cache folders), skipped_images: set by data.load_pair
        **getattr(data, "records", {}),
    }
