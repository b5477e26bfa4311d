"""Where the shipped Hydra configs are: the repository's top-level `conf/`, installed as the
subpackage `pad_lightning.conf` (pyproject.toml maps it), so a wheel or `pip install .` carries
them and an editable install reads the repository's files (edits apply without reinstalling)."""

from __future__ import annotations

from importlib import resources

from omegaconf import DictConfig

CONF_PACKAGE = "pad_lightning.conf"
# what `@hydra.main(config_path=...)` and `hydra.initialize_config_module` take
CONFIG_PATH = f"pkg://{CONF_PACKAGE}"


def config_dir() -> str:
    """The folder holding config.yaml and the config groups, for `initialize_config_dir`."""
    return str(resources.files(CONF_PACKAGE))


# The config key naming the metric a run returns to Hydra, i.e. what a sweeper optimises
# (`val/<m>`, `after/<m>` or `delta/<m>`); the first of these keys that the config has is read.
OPTIMIZED_METRIC_KEYS = ("optimized_metric", "objective")


def optimized_metric(cfg: DictConfig) -> str | None:
    """The metric a run returns to Hydra (what a sweeper optimises), None when unset."""
    for key in OPTIMIZED_METRIC_KEYS:
        if key in cfg:
            value = cfg.get(key)
            return None if value is None else str(value)
    return None
