"""The names of the files in a run folder: one place, so that writer and readers agree.

A run folder (``outputs/runs/<date>/<time>`` or one job of a sweep) is written by the trainer
and by Hydra, and read back by ``da-report``, the figures, resume and the sweep launcher. Join
a name to the folder: ``run_dir / RESULTS``; names with a ``/`` (the Hydra files) join the same
way. This module imports nothing of the project, so any module may import it.
"""

from __future__ import annotations

#: Final metrics and the run's record (method, data, seed, accuracies, overrides, ...).
RESULTS = "results.json"
#: ``{"status": running | completed | failed | interrupted, "step": ...}``; written last.
STATUS = "status.json"
#: One JSON object per line: the step and the scalars logged at that step.
METRICS = "metrics.jsonl"
#: Model, optimiser and RNG state for ``trainer.resume``.
CHECKPOINT = "checkpoint.pt"
#: Source and target test features at the first and last evaluation (plots.save_embeddings).
EMBEDDINGS = "embeddings.npz"
#: TensorBoard event files (a folder).
TENSORBOARD = "tb"
#: The job log Hydra writes for ``da_train.cli`` (job name ``cli``).
CLI_LOG = "cli.log"
#: Hydra's folder of the run's composed config and overrides.
HYDRA_DIR = ".hydra"
#: The composed config of the run.
HYDRA_CONFIG = f"{HYDRA_DIR}/config.yaml"
#: The command-line overrides of the run, as a YAML list.
HYDRA_OVERRIDES = f"{HYDRA_DIR}/overrides.yaml"
#: Next to Hydra's config.yaml (which keeps ${oc.env:DA_DATA_ROOT,data} and null cache roots
#: as written): the config as the run used it, interpolations resolved, every folder absolute.
RESOLVED_CONFIG = f"{HYDRA_DIR}/config_resolved.yaml"
#: In a sweep folder (not a run folder): the sweep's config, written by the launcher.
MULTIRUN = "multirun.yaml"

#: Files whose presence makes a folder a run folder; every run writes one, even a failed run.
RUN_MARKERS = (STATUS, RESULTS, HYDRA_CONFIG)
