"""Callbacks: per-round rollout statistics, time breakdown, memory and rollout sample tables."""

from __future__ import annotations

import resource
import time

import lightning as L
import torch


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process, and peak CUDA allocation when on a GPU."""
    out = {"memory/peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["memory/peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


class RolloutLogger(L.Callback):
    """Logs each new rollout's statistics and the epoch's time breakdown to the logger.

    time/*_s per epoch: generation, teacher_scoring, calibration (from the rollout),
    training (student forward/backward/step) and other (the rest of the epoch).
    """

    def __init__(self, table_every: int = 25, table_prompts: int = 8):
        self.table_every, self.table_prompts = table_every, table_prompts
        self.history: list[dict[str, float]] = []
        self._seen_rollout = None
        self._epoch_start = self._batch_start = 0.0
        self._training = 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        self._epoch_start, self._training = time.perf_counter(), 0.0
        dm = trainer.datamodule
        if dm.last_rollout is not None and dm.last_rollout is not self._seen_rollout:
            self._seen_rollout = dm.last_rollout
            stats = dict(dm.last_stats)
            pl_module.log(
                "gen_s",
                stats.get("time/generation_s", 0.0),
                prog_bar=True,
                on_epoch=True,
                on_step=False,
                sync_dist=True,
            )
            self._pending = stats
            epoch = trainer.current_epoch
            last = epoch + 1 >= trainer.max_epochs
            if self.table_every and (epoch % self.table_every == 0 or last):
                self._log_table(trainer, epoch)
        else:
            self._pending = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._training += time.perf_counter() - self._batch_start

    def on_train_epoch_end(self, trainer, pl_module):
        stats = dict(self._pending)
        elapsed = time.perf_counter() - self._epoch_start
        stats["time/training_s"] = self._training
        stats["time/other_s"] = max(0.0, elapsed - self._training)
        stats.update(peak_memory_mb())
        stats["epoch"] = trainer.current_epoch
        self.history.append(stats)
        if trainer.logger is not None and trainer.is_global_zero:
            trainer.logger.log_metrics(
                {k: v for k, v in stats.items() if k != "epoch"}, step=trainer.global_step
            )

    def _log_table(self, trainer, epoch: int) -> None:
        logger = trainer.logger
        roll = trainer.datamodule.last_rollout
        if logger is None or not trainer.is_global_zero or not hasattr(logger, "experiment"):
            return
        rows: dict[str, list] = {
            "prompt": [],
            "response": [],
            "teacher_reward": [],
            "teacher_score": [],
            "log_p_sel": [],
        }
        for i in range(min(self.table_prompts, len(roll.prompts))):
            for j, text in enumerate(roll.texts[i]):
                rows["prompt"].append(str(roll.prompts[i]))
                rows["response"].append(text)
                rows["teacher_reward"].append(float(roll.teacher_rewards[i, j]))
                rows["teacher_score"].append(float(roll.teacher_scores[i, j]))
                rows["log_p_sel"].append(
                    float(roll.log_p_sel[i, j]) if roll.log_p_sel is not None else None
                )
        logger.experiment.log_table(
            logger.run_id, data=rows, artifact_file=f"rollouts/epoch_{epoch:04d}.json"
        )

    def summary(self) -> dict[str, float]:
        """Mean per-epoch seconds of each part over the run (rollout epochs only for rollout parts)."""
        out: dict[str, float] = {}
        for key in {k for h in self.history for k in h if k.startswith("time/")}:
            values = [h[key] for h in self.history if key in h]
            out[key.replace("time/", "mean_")] = sum(values) / len(values)
        out["epochs"] = len(self.history)
        return out
