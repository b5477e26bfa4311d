"""The Hydra configs, shipped inside the package as `pad_lightning.conf` (see pyproject.toml)."""
