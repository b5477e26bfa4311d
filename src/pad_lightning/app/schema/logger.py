"""The `logger` group (conf/logger/): MLflow tracking and what the run logs."""

from __future__ import annotations

from dataclasses import dataclass

from pad_lightning.app.schema.values import flag, number, require
from pad_lightning.tracking.mlflow_run import tracking_problem


@dataclass
class LoggerGroup:
    """conf/logger/mlflow.yaml explains each key."""

    tracking_uri: str = "sqlite:///mlflow.db"
    experiment_name: str = "pad-lightning"
    run_name: str | None = None  # null: named by the run's overrides
    parent_run_id: str | None = None  # nest the run under an existing MLflow run
    log_rollouts_every: int = 25
    log_student: bool = True
    print_time_every: int = 10

    def check(self) -> None:
        """Each key's type and range (the tracking store is checked by `check_store`)."""
        for key in ("print_time_every", "log_rollouts_every"):
            number(getattr(self, key), f"logger.{key}", integer=True, low=0, note=" (0 = never)")
        flag(self.log_student, "logger.log_student")

    def check_store(self) -> None:
        """The tracking URI names a store this run can write."""
        problem = tracking_problem(str(self.tracking_uri))
        require(problem is None, f"logger.tracking_uri={problem}")
