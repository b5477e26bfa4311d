"""Start-up check of a run config, before anything loads: every user error becomes one
`config error:` line naming the key, its value and what is valid. Each group's schema
(`app.schema`) owns its keys, their defaults and their checks; this is the entry point."""

from __future__ import annotations

from omegaconf import DictConfig

from pad_lightning.app.schema import validated


def check(cfg: DictConfig) -> DictConfig:
    """Raise ConfigError on an unknown key or the first invalid value of a composed (or resumed)
    run config; otherwise complete it in place with every group's defaults and return it."""
    return validated(cfg)
