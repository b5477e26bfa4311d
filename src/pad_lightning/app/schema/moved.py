"""Keys that moved: refused by name on the command line (pointing to the new key), translated in
a run config saved by an older version (`resume=`), so that the saved run still loads."""

from __future__ import annotations

from omegaconf import DictConfig, open_dict

MOVED = {
    "trainer.strategy": "strategy=<auto|ddp|fsdp> (the strategy group, conf/strategy/)",
    "objective": "optimized_metric=<val|after|delta>/<metric> (renamed; same values)",
}


def upgraded(saved: DictConfig) -> DictConfig:
    """`saved` (a resolved config.yaml) with the keys older versions wrote moved to their new
    place: `objective` -> `optimized_metric`, `trainer.strategy` -> `strategy.name`."""
    with open_dict(saved):
        if "objective" in saved:
            metric = saved.pop("objective")
            if "optimized_metric" not in saved:
                saved.optimized_metric = metric
        trainer = saved.trainer if "trainer" in saved else None
        if isinstance(trainer, DictConfig) and "strategy" in trainer:
            name = trainer.pop("strategy")
            if "strategy" not in saved or saved.strategy is None:
                saved.strategy = {"name": name}
    return saved
