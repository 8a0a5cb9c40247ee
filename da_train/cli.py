"""The ``da-train`` command: compose the Hydra config, validate it, load data, train.

Errors a user can fix (bad values, missing data files, NaN losses) end with one clear
paragraph on stderr and exit code 2 (no stack trace unless ``HYDRA_FULL_ERROR=1``);
``status.json`` in the run folder records them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .config import ConfigError, register_schema, validate
from .data import DataError, load_pair
from .methods import build_method
from .models import build_backbone
from .trainer import NonFiniteLossError, Trainer, pick_device, seed_everything, write_json

register_schema()

# Only errors a user can fix are shortened to one message; a bug keeps its stack trace.
USER_ERRORS = (ConfigError, DataError, NonFiniteLossError)


def run(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict:
    """Train one run described by ``cfg`` into ``run_dir``; returns the results dict."""
    validate(cfg)
    device = pick_device(cfg.trainer.device)
    seed_everything(cfg.seed)
    data = load_pair(cfg.data)
    backbone = build_backbone(cfg.backbone.name, data.num_classes)
    method = build_method(cfg.method, backbone)
    return Trainer(cfg, method, data, run_dir, device, overrides).fit()


@hydra.main(version_base="1.3", config_path="pkg://da_train.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        results = run(cfg, run_dir, list(hc.overrides.task))
    except USER_ERRORS as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "status.json", {"status": "failed", "error": str(err)})
        print(f"da-train: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"da-train: target_acc={results['target_acc']:.4f} "
          f"source_acc={results['source_acc']:.4f} -> {run_dir}")


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
