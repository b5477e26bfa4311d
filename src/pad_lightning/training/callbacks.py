"""Callbacks: per-round rollout statistics, time breakdown, memory and rollout sample tables."""

from __future__ import annotations

import time

import lightning as L
import torch

from pad_lightning.data.answers import quality_matrix
from pad_lightning.lm.chat import pad_id
from pad_lightning.lm.scoring import score_pairs
from pad_lightning.runtime.memory import (
    interval_peak_mb,
    process_peak_mb,
    release_free_heap,
    resident_mb,
)
from pad_lightning.training.datamodule import combine_rounds


def per_rank(values: dict[str, float]) -> dict[str, float]:
    """`values` of every rank, as `<key>/rank<r>` (a collective)."""
    from pad_lightning.runtime.collectives import all_ranks

    return {f"{k}/rank{r}": v for r, row in enumerate(all_ranks(values)) for k, v in row.items()}


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process, and peak CUDA allocation when on a GPU."""
    out = {"memory/peak_rss_mb": process_peak_mb()}
    if torch.cuda.is_available():
        out["memory/peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


ROLLOUT_TABLE = "rollouts.json"
# prompt first and response second: MLflow's evaluation view groups a table by its first column
# and compares the next, i.e. the responses to each prompt across epochs and runs
TABLE_COLUMNS = (
    "prompt",
    "response",
    "epoch",
    "reference",
    "q",
    "teacher_reward",
    "log_p_sel",
    "teacher_score",
    "student_score",
    "teacher_rank",
    "student_rank",
)


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """1-based rank of each entry of the rows of `scores` [P, n] (1 = highest; ties keep order)."""
    order = scores.argsort(dim=-1, descending=True, stable=True)
    out = torch.empty_like(order)
    out.scatter_(-1, order, torch.arange(1, scores.shape[-1] + 1).expand_as(order).contiguous())
    return out


def student_scores(module, pairs: list, max_tokens: int) -> torch.Tensor:
    """The student's length-normalised log-likelihood of each (prompt, response) pair, [len],
    scored like the teacher's rewards (token-budget chunks, the inference autocast dtype)."""
    was_training = module.student.training
    module.student.eval()
    try:
        return score_pairs(
            module.student,
            pairs,
            pad_id(module.student_tokenizer),
            max_tokens,
            module.device,
            module._autocast_dtype(),
        )
    finally:
        module.student.train(was_training)


def rollout_rows(
    roll, problems: list, module, epoch: int, prompts: int, max_tokens: int = 16384
) -> dict[str, list]:
    """Columns of the rollout table for the first `prompts` prompts of a rollout: what each
    response got from the teacher (reward r_T, log p_sel, calibrated score t, rank by t), its
    true quality q and the reference (toy world; None elsewhere), and the student's score
    (length-normalised log-likelihood under the student at the end of the epoch) and rank."""
    k = min(prompts, len(roll.prompts))
    n = roll.lengths.shape[1]
    student = student_scores(module, roll.student_pairs[: k * n], max_tokens).view(k, n)
    scored = roll.teacher_scores is not None  # objectives that need no teacher scores: None
    teacher = roll.teacher_scores[:k].float() if scored else None
    q = quality_matrix(roll.texts[:k], problems[:k]) if problems else None
    t_rank, s_rank = ranks(teacher) if scored else None, ranks(student)
    rows: dict[str, list] = {c: [] for c in TABLE_COLUMNS}
    for i in range(k):
        reference = getattr(problems[i], "reference", None) if problems else None
        for j, text in enumerate(roll.texts[i]):
            rows["epoch"].append(epoch)
            rows["prompt"].append(str(roll.prompts[i]))
            rows["reference"].append(reference)
            rows["response"].append(text)
            rows["q"].append(float(q[i, j]) if q is not None else None)
            rows["teacher_reward"].append(float(roll.teacher_rewards[i, j]) if scored else None)
            rows["log_p_sel"].append(
                float(roll.log_p_sel[i, j]) if roll.log_p_sel is not None else None
            )
            rows["teacher_score"].append(float(teacher[i, j]) if scored else None)
            rows["student_score"].append(float(student[i, j]))
            rows["teacher_rank"].append(int(t_rank[i, j]) if scored else None)
            rows["student_rank"].append(int(s_rank[i, j]))
    return rows


# The time breakdown, tokens, throughput and memory go to MLflow under system/ (MLflow's System
# metrics tab), which leaves the model-metrics tab to learning: rollout/, test/, train/, val/.
SYSTEM_PREFIXES = ("time/", "tokens/", "throughput/", "memory/")


def mlflow_key(key: str) -> str:
    """The MLflow name of a per-epoch statistic (`time/generation_s` -> `system/time/...`)."""
    return f"system/{key}" if key.startswith(SYSTEM_PREFIXES) else key


PARTS = (
    "generation",
    "teacher_scoring",
    "calibration",
    "reference",
    "teacher_generation",
    "training",
    "validation",
    "other",
)


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


def time_line(
    epoch: int, max_epochs: int, stats: dict[str, float], eta_s: float | None = None
) -> str:
    """One terminal line: seconds (and tokens/s) of each part of an epoch, peak memory, and the
    estimated time to the end of the fit."""
    from pad_lightning.training.progress import eta_text

    parts = parts_text(stats, "time/{}_s", "throughput/{}_tokens_per_s", ("validation",))
    memory = f"peak RSS {stats['memory/peak_rss_mb']:.0f} MB"
    if "memory/epoch_peak_rss_mb" in stats:
        memory += f" (this epoch {stats['memory/epoch_peak_rss_mb']:.0f} MB)"
    if "memory/peak_cuda_mb" in stats:
        memory += f", CUDA {stats['memory/peak_cuda_mb']:.0f} MB"
    eta = f"; ETA {eta_text(eta_s)}" if eta_s is not None and epoch + 1 < max_epochs else ""
    return f"epoch {epoch + 1}/{max_epochs}: {parts}; {memory}{eta}"


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
        self._elapsed: list[float] = []  # wall seconds of each epoch (for the ETA)
        self._epoch_start = self._batch_start = self._val_start = 0.0
        self._training = self._validation = 0.0
        self._training_tokens = 0

    def on_train_start(self, trainer, pl_module):
        if trainer.current_epoch > 0 and trainer.is_global_zero:  # resumed from a checkpoint
            self._drop_table_rows_from(trainer, trainer.current_epoch)

    def _drop_table_rows_from(self, trainer, epoch: int) -> None:
        """Rows a stopped process logged for epochs that the resumed run makes again."""
        from pad_lightning.reporting.figures import rollouts_from_mlflow

        logger = trainer.logger
        if logger is None or not hasattr(logger, "experiment"):
            return
        rows = rollouts_from_mlflow(logger.experiment, logger.run_id, ROLLOUT_TABLE)
        if rows is None or all(r["epoch"] < epoch for r in rows):
            return
        kept = [r for r in rows if r["epoch"] < epoch]
        columns = list(rows[0])
        table = {"columns": columns, "data": [[r[c] for c in columns] for r in kept]}
        logger.experiment.log_dict(logger.run_id, table, ROLLOUT_TABLE)

    def on_train_epoch_start(self, trainer, pl_module):
        self._epoch_start = time.perf_counter()
        # Per-epoch values are logged at the step where the epoch began: the rollout statistics
        # describe samples of the weights after that many optimizer steps (the axis of
        # train/loss, val/* and test/*).
        self._epoch_start_step = trainer.global_step
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
        epoch_peak = interval_peak_mb(reset=False)  # this epoch's own peak (reset at its start)
        if epoch_peak is not None:
            stats["memory/epoch_peak_rss_mb"] = epoch_peak
        stats.update(peak_memory_mb())
        if trainer.world_size > 1:  # every rank's peak (a collective: all ranks are here)
            stats.update(per_rank(peak_memory_mb()))
        epoch = trainer.current_epoch
        stats["epoch"] = epoch
        self.history.append(stats)
        last = epoch + 1 >= trainer.max_epochs
        table_due = (
            bool(dm.epoch_stats) and self.table_every and (epoch % self.table_every == 0 or last)
        )
        if table_due:  # the table scores with the student: under FSDP every rank gathers it
            with pl_module.gathered():
                if trainer.is_global_zero:
                    self._log_table(trainer, epoch)
        release_free_heap()  # the epoch's freed tensors leave the resident set (runtime.memory)
        after = resident_mb()
        if after is not None:
            stats["memory/rss_after_epoch_mb"] = after
        interval_peak_mb()  # the next epoch's peak starts from here
        if not trainer.is_global_zero:
            return
        if trainer.logger is not None:
            trainer.logger.log_metrics(
                {mlflow_key(k): v for k, v in stats.items() if k != "epoch"},
                step=self._epoch_start_step,
            )
        self._elapsed.append(elapsed)
        if self.print_every and ((epoch + 1) % self.print_every == 0 or epoch == 0 or last):
            recent = self._elapsed[-20:]
            eta = sum(recent) / len(recent) * (trainer.max_epochs - epoch - 1)
            print(time_line(epoch, trainer.max_epochs, stats, eta), flush=True)

    def _log_table(self, trainer, epoch: int) -> None:
        logger = trainer.logger
        dm = trainer.datamodule
        if logger is None or not trainer.is_global_zero or not hasattr(logger, "experiment"):
            return
        rows = rollout_rows(
            dm.last_rollout,
            dm.last_problems,
            trainer.lightning_module,
            epoch,
            self.table_prompts,
            dm.cfg.max_tokens,
        )
        # one growing table: MLflow appends rows logged to an existing table file
        logger.experiment.log_table(logger.run_id, data=rows, artifact_file=ROLLOUT_TABLE)

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
        for key in {k for h in self.history for k in h if k.startswith("tokens/")}:
            out[f"total_{key[len('tokens/') :]}_tokens"] = sum(h.get(key, 0) for h in self.history)
        out["epochs"] = len(self.history)
        if self.history:  # peaks are running maxima: the last epoch's are the run's
            out.update({k: v for k, v in self.history[-1].items() if k.startswith("memory/")})
        return out
