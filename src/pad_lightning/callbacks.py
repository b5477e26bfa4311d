"""Callbacks: per-round rollout statistics, time breakdown, memory and rollout sample tables."""

from __future__ import annotations

import resource
import time

import lightning as L
import torch

from .datamodule import combine_rounds


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process, and peak CUDA allocation when on a GPU."""
    out = {"memory/peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["memory/peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


PARTS = ("generation", "teacher_scoring", "calibration", "training", "validation", "other")


def parts_text(
    values: dict[str, float], seconds_key: str, rate_key: str, omit_zero: tuple[str, ...] = ()
) -> str:
    """ "generation 0.13s (14.3k tok/s), ..." for the parts of `PARTS` present in `values`,
    read at `seconds_key.format(part)` and `rate_key.format(part)`; parts in `omit_zero` are
    left out when their seconds are 0."""
    parts = []
    for part in PARTS:
        seconds = values.get(seconds_key.format(part))
        if seconds is None or (part in omit_zero and seconds == 0):
            continue
        rate = values.get(rate_key.format(part))
        parts.append(f"{part} {seconds:.2f}s" + (f" ({rate / 1000:.1f}k tok/s)" if rate else ""))
    return ", ".join(parts)


def time_line(epoch: int, max_epochs: int, stats: dict[str, float]) -> str:
    """One terminal line: seconds (and tokens/s) of each part of an epoch, and peak memory."""
    parts = parts_text(stats, "time/{}_s", "throughput/{}_tokens_per_s", ("validation",))
    memory = f"peak RSS {stats['memory/peak_rss_mb']:.0f} MB"
    if "memory/peak_cuda_mb" in stats:
        memory += f", CUDA {stats['memory/peak_cuda_mb']:.0f} MB"
    return f"epoch {epoch + 1}/{max_epochs}: {parts}; {memory}"


class RolloutLogger(L.Callback):
    """Logs each epoch's rollout statistics and time breakdown (MLflow and the terminal).

    time/*_s per epoch: generation, teacher_scoring, calibration (summed over the epoch's fresh
    rollout rounds), training (student forward/backward/step), validation, and other (the rest
    of the epoch); throughput/*_tokens_per_s for the parts that process tokens; peak memory.
    A line with the breakdown is printed every `print_every` epochs (0: never).
    """

    def __init__(self, table_every: int = 25, table_prompts: int = 8, print_every: int = 10):
        self.table_every, self.table_prompts = table_every, table_prompts
        self.print_every = print_every
        self.history: list[dict[str, float]] = []
        self._epoch_start = self._batch_start = self._val_start = 0.0
        self._training = self._validation = 0.0
        self._training_tokens = 0

    def on_train_epoch_start(self, trainer, pl_module):
        self._epoch_start = time.perf_counter()
        self._training = self._validation = 0.0
        self._training_tokens = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._batch_start = time.perf_counter()
        self._training_tokens += int(batch["attention_mask"].sum())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._training += time.perf_counter() - self._batch_start

    def on_validation_start(self, trainer, pl_module):
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        self._validation += time.perf_counter() - self._val_start

    def on_train_epoch_end(self, trainer, pl_module):
        elapsed = time.perf_counter() - self._epoch_start
        dm = trainer.datamodule
        stats = combine_rounds(dm.epoch_stats)  # empty when the loader replays old rollouts
        rollout_s = sum(v for k, v in stats.items() if k.startswith("time/"))
        stats["time/training_s"] = self._training
        stats["tokens/training"] = self._training_tokens
        stats["throughput/training_tokens_per_s"] = self._training_tokens / max(
            self._training, 1e-9
        )
        stats["time/validation_s"] = self._validation
        stats["time/other_s"] = max(0.0, elapsed - self._training - self._validation - rollout_s)
        stats.update(peak_memory_mb())
        epoch = trainer.current_epoch
        stats["epoch"] = epoch
        self.history.append(stats)
        if not trainer.is_global_zero:
            return
        if trainer.logger is not None:
            trainer.logger.log_metrics(
                {k: v for k, v in stats.items() if k != "epoch"}, step=trainer.global_step
            )
        last = epoch + 1 >= trainer.max_epochs
        if dm.epoch_stats and self.table_every and (epoch % self.table_every == 0 or last):
            self._log_table(trainer, epoch)
        if self.print_every and ((epoch + 1) % self.print_every == 0 or epoch == 0 or last):
            print(time_line(epoch, trainer.max_epochs, stats), flush=True)

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
        """Mean per-epoch seconds (and tokens/s) of each part over the run.

        Rollout parts are averaged over the epochs that made a fresh rollout; `mean_epoch_s` is
        the mean wall time of an epoch (all parts).
        """
        out: dict[str, float] = {}
        for key in {k for h in self.history for k in h if k.startswith(("time/", "throughput/"))}:
            values = [h[key] for h in self.history if key in h]
            name = key.replace("time/", "mean_").replace("throughput/", "mean_")
            out[name] = sum(values) / len(values)
        if self.history:
            out["mean_epoch_s"] = sum(
                sum(v for k, v in h.items() if k.startswith("time/")) for h in self.history
            ) / len(self.history)
        out["epochs"] = len(self.history)
        return out
