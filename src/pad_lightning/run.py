"""Entry point: `python -m pad_lightning.run [hydra overrides]` (and the `pad-lightning` command).

compose config -> check it -> build models, DataModule, PADModule, Trainer, MLflow logger ->
evaluate on the test set (before) -> fit (on-policy PAD) -> evaluate (after) -> report.
Resume a stopped run with `python -m pad_lightning.run resume=<its output directory>`.

Every expected failure ends the process with one line on stderr and a non-zero status,
`<kind> error: <message>` (`runtime.errors.PadError`): `config error:` (a bad config value or
override, or a model folder that cannot be used, found before anything is built), `data error:`
(a prompt file), `checkpoint error:` (an unreadable checkpoint on resume),
`training error:` (non-finite loss, gradients, weights or scores), and `error:` (a file that
cannot be written). A run stopped by SIGTERM or Ctrl-C exits with 128 + the signal number and
prints how to resume it. The job itself is `app.main.run_job`.
"""

from __future__ import annotations

import os

from pad_lightning.runtime.memory import bound_compute_cache

bound_compute_cache()  # before torch's first oneDNN computation (runtime.memory)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# MLflow draws a download bar each time a rollout table grows; the run has its own display
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from pad_lightning.app.configs import CONFIG_PATH  # noqa: E402
from pad_lightning.app.main import one_line_config_errors, run_job  # noqa: E402


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> float | None:
    return run_job(cfg)


def cli() -> None:
    """The `pad-lightning` console command: `python -m pad_lightning.run`."""
    one_line_config_errors()
    main()


if __name__ == "__main__":
    cli()
