"""Where the shipped Hydra configs are: the repository's top-level `conf/`, installed as the
subpackage `pad_lightning.conf` (pyproject.toml maps it), so a wheel or `pip install .` carries
them and an editable install reads the repository's files (edits apply without reinstalling)."""

from __future__ import annotations

from importlib import resources

CONF_PACKAGE = "pad_lightning.conf"
# what `@hydra.main(config_path=...)` and `hydra.initialize_config_module` take
CONFIG_PATH = f"pkg://{CONF_PACKAGE}"


def config_dir() -> str:
    """The folder holding config.yaml and the config groups, for `initialize_config_dir`."""
    return str(resources.files(CONF_PACKAGE))
