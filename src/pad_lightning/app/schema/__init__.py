"""The run config's schema: one dataclass per config group, owning its keys' defaults and checks
(`root.RunConfig` holds them all; `root.validated` checks a composed config and fills it in)."""

from pad_lightning.app.schema.root import RunConfig, validated

__all__ = ["RunConfig", "validated"]
