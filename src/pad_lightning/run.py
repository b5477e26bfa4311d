"""Entry point: `python -m pad_lightning.run [hydra overrides]`.

compose config -> check it -> build models, DataModule, PADModule, Trainer, MLflow logger ->
evaluate on the test set (before) -> fit (on-policy PAD) -> evaluate (after) -> report.
Resume a stopped run with `python -m pad_lightning.run resume=<its output directory>`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import warnings  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from .validation import ConfigError, check  # noqa: E402

warnings.filterwarnings(
    "ignore",
    message=r".*(LeafSpec|litlogger|does not have many workers|in eval mode at the start|`IterableDataset` has `__len__`).*",
)
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    overrides = list(HydraConfig.get().overrides.task)
    try:
        if cfg.resume:
            cfg, overrides = _resumed_config(Path(cfg.resume))
        check(cfg)
    except ConfigError as err:
        sys.exit(f"config error: {err}")
    from .experiment import run_experiment
    from .prompts import DataError

    try:
        summary_path = run_experiment(cfg, overrides)
    except DataError as err:
        sys.exit(f"data error: {err}")
    except ConfigError as err:  # found while loading (e.g. a model without a chat template)
        sys.exit(f"config error: {err}")
    if summary_path is not None:  # global rank 0
        print(summary_path)


def _resumed_config(run_dir: Path) -> tuple[DictConfig, list[str]]:
    """The saved config of a run directory, pointed at its last checkpoint."""
    config_file = run_dir / "config.yaml"
    if not config_file.exists() or not (run_dir / "checkpoints" / "last.ckpt").exists():
        raise ConfigError(
            f"resume={str(run_dir)!r}: needs a run directory written by "
            "pad_lightning.run with config.yaml and checkpoints/last.ckpt"
        )
    cfg = OmegaConf.load(config_file)
    cfg.resume = str(run_dir)
    cfg.output_dir = str(run_dir)
    state = json.loads((run_dir / "run_state.json").read_text())
    return cfg, state.get("overrides", [])


if __name__ == "__main__":
    main()
