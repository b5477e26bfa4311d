"""RolloutDataModule: on-policy rollouts from the current student, every k epochs (or once).

Lightning calls `train_dataloader()` again every `every_n_epochs` epochs
(`Trainer(reload_dataloaders_every_n_epochs=k)`, 0 = once, the offline mode). Each call draws
this epoch's prompts; iterating the loader then generates responses with the student as it is
*now*, scores them with the frozen teacher (plus MCQ calibration), and serves batches of whole
prompts. With `rounds > 1` (decomposition=iterative) one epoch is `rounds` successive rollouts of
the same prompts, each sampled after the optimizer steps on the previous one. A reused loader
(every_n_epochs 0 or > 1) replays its cached rollouts in a fresh order.
Under DDP every rank rolls out its own shard of the round's prompts.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from pad_lightning.data.answers import quality_matrix
from pad_lightning.lm.generation import SamplingConfig
from pad_lightning.ranking.agreement import distinct_fraction, kendall_tau, nanmean
from pad_lightning.ranking.plackett_luce import ranking_entropy
from pad_lightning.runtime.interrupts import fault
from pad_lightning.training.rollout import CalibrationConfig, Rollout, collect


@dataclass
class RolloutConfig:
    n: int = 4
    prompts_per_epoch: int = 64
    batch_size: int = 64  # prompts per forward/backward pass (each with n responses)
    every_n_epochs: int = 1  # 0: generate once (offline, like the paper's public code)
    max_tokens: int = 16384  # padded tokens per teacher forward pass
    sample_log_prompts: int = 8  # prompts per rollout sample table logged to MLflow
    rounds: int = 1  # decomposition=iterative: n / k on-policy rounds of n = k samples per epoch


class RolloutDataModule(L.LightningDataModule):
    """Prompts from a problem source; rollouts regenerated on policy."""

    def __init__(
        self,
        train_problems: list,
        val_problems: list,
        test_problems: list,
        rollout: RolloutConfig,
        sampling: SamplingConfig,
        calibration: CalibrationConfig,
        seed: int,
        eval_batch_size: int = 256,
    ):
        super().__init__()
        self.train_problems, self.val_problems = train_problems, val_problems
        self.test_problems = test_problems
        self.cfg, self.sampling, self.calibration = rollout, sampling, calibration
        self.seed, self.eval_batch_size = seed, eval_batch_size
        self.last_rollout: Rollout | None = None
        self.last_problems: list = []  # the problems of last_rollout (references, for tables)
        self.epoch_stats: list[dict[str, float]] = []  # one entry per fresh rollout this epoch
        self._order: tuple[int, list[int]] | None = None  # (pass index, shuffled pool order)

    def round_problems(self, epoch: int, rank: int = 0, world_size: int = 1) -> list:
        """The prompts of the round starting at `epoch`, sharded by rank.

        Rounds take consecutive windows of a seeded shuffle of the training pool, reshuffled for
        every pass, so every prompt is used once before any is used again.
        """
        pool = len(self.train_problems)
        total = min(self.cfg.prompts_per_epoch * world_size, pool)
        round_index = epoch // max(self.cfg.every_n_epochs, 1)
        chosen = [
            self._pass_order(i // pool)[i % pool]
            for i in range(round_index * total, (round_index + 1) * total)
        ]
        return [self.train_problems[i] for i in chosen[rank::world_size]]

    def _pass_order(self, index: int) -> list[int]:
        if self._order is None or self._order[0] != index:
            order = list(range(len(self.train_problems)))
            random.Random(f"{self.seed}-pass-{index}").shuffle(order)
            self._order = (index, order)
        return self._order[1]

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        problems = self.round_problems(
            trainer.current_epoch, trainer.global_rank, trainer.world_size
        )
        return DataLoader(_EpochRounds(self, problems), batch_size=None)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        return batch.resolve() if isinstance(batch, _PendingBatch) else batch

    def rollout(self, problems: list) -> Rollout:
        """Sample, score and calibrate one round with the module's current student."""
        fault("rollout")
        module = self.trainer.lightning_module
        with module.gathered():  # FSDP: weights gathered once for the whole rollout
            roll = collect(
                module.sampler(),
                module.student_tokenizer,
                module.teacher,
                module.teacher_tokenizer,
                [p.prompt for p in problems],
                self.cfg.n,
                self.sampling,
                self.calibration,
                self.cfg.max_tokens,
                module._autocast_dtype(),
                module.extras([getattr(p, "reference", None) for p in problems]),
            )
        if module.rollout_engine is not None:
            roll.seconds["weight_sync"] = module.last_sync_seconds
        self.last_rollout, self.last_problems = roll, problems
        self.epoch_stats.append(rollout_stats(roll, problems, module.loss_cfg.beta_teacher))
        return roll

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_problems)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_problems)

    def _eval_loader(self, problems: list) -> DataLoader:
        # A DataLoader draws a seed for its workers from the global torch RNG each time it is
        # iterated; with its own generator, evaluating leaves the training run's random stream
        # untouched (how often one validates never changes the rollouts).
        return DataLoader(
            problems,
            batch_size=self.eval_batch_size,
            collate_fn=list,
            generator=torch.Generator(),
        )


class _EpochRounds(IterableDataset):
    """The batches of one epoch: `rounds` rollouts of `problems`, each made when first needed.

    The loader yields `_PendingBatch` references; the DataModule's `on_before_batch_transfer`
    turns them into tensors right before their optimizer step. Lightning fetches one batch
    ahead, so making a round's rollout while iterating would sample it before the last step of
    the previous round; resolving it in the hook keeps every round on the latest weights.
    """

    def __init__(self, dm: RolloutDataModule, problems: list):
        self.dm, self.problems = dm, problems
        self.rollouts: list[Rollout] = []  # cached for loaders reused across epochs

    def __len__(self) -> int:
        return self.dm.cfg.rounds * math.ceil(len(self.problems) / self.dm.cfg.batch_size)

    def __iter__(self) -> Iterator[_PendingBatch]:
        dm = self.dm
        dm.epoch_stats = []
        size = dm.cfg.batch_size
        for r in range(dm.cfg.rounds):
            seed = (dm.seed * 1_000_003 + dm.trainer.current_epoch) * 97 + r
            order = torch.randperm(
                len(self.problems), generator=torch.Generator().manual_seed(seed)
            )
            for start in range(0, len(order), size):
                yield _PendingBatch(self, r, order[start : start + size].tolist())

    def rollout(self, r: int) -> Rollout:
        """Round r's rollout, made now (from the current student) on first use."""
        while len(self.rollouts) <= r:
            self.rollouts.append(self.dm.rollout(self.problems))
        return self.rollouts[r]


@dataclass
class _PendingBatch:
    """Prompts `indices` of round `r` of an epoch; resolved to tensors just before their step."""

    rounds: _EpochRounds
    r: int
    indices: list[int]

    def resolve(self) -> dict[str, torch.Tensor]:
        roll = self.rounds.rollout(self.r)
        module = self.rounds.dm.trainer.lightning_module
        return module.batch(roll, self.indices)


def rollout_stats(roll: Rollout, problems: list, beta_teacher: float = 1.0) -> dict[str, float]:
    """Per-round statistics: lengths, diversity, teacher ranking entropy, seconds and tokens."""
    distinct = distinct_fraction(roll.texts)
    stats = {
        "rollout/response_length": float(roll.lengths.mean()),
        "rollout/truncated_fraction": float(roll.truncated.float().mean()),
        "rollout/distinct_fraction": float(distinct.mean()),
        "rollout/all_identical_fraction": float(
            (distinct * len(roll.texts[0]) <= 1).float().mean()
        ),
    }
    if roll.teacher_scores is not None:  # objectives without teacher scores do not pay for them
        stats["rollout/teacher_score_mean"] = float(roll.teacher_scores.mean())
        stats["rollout/teacher_ranking_entropy"] = float(
            ranking_entropy(beta_teacher * roll.teacher_scores).mean()
        )
    for part, seconds in roll.seconds.items():
        stats[f"time/{part}_s"] = seconds
        tokens = roll.tokens.get("generated" if part == "generation" else part)
        if tokens:  # throughput: see combine_rounds
            stats[f"tokens/{part}"] = tokens
    if "teacher_tokens" in roll.tokens:  # GKD: the teacher's pass runs with the training step
        stats["tokens/teacher_tokens"] = roll.tokens["teacher_tokens"]
    q = quality_matrix(roll.texts, problems)
    if q is not None:
        stats["rollout/sample_quality"] = float(q.mean())
        if roll.teacher_scores is not None:
            stats["rollout/teacher_q_tau"] = nanmean(kendall_tau(roll.teacher_scores, q))
    return stats


def combine_rounds(rounds: list[dict[str, float]]) -> dict[str, float]:
    """One epoch's statistics from its rounds: times and tokens add up, the rest is averaged."""
    out: dict[str, float] = {}
    for key in {k for r in rounds for k in r}:
        values = [r[key] for r in rounds if key in r]
        if key.startswith(("time/", "tokens/")):
            out[key] = sum(values)
        else:
            out[key] = sum(values) / len(values)
    for key in [k for k in out if k.startswith("tokens/")]:
        part = key[len("tokens/") :]
        if f"time/{part}_s" in out:
            out[f"throughput/{part}_tokens_per_s"] = out[key] / max(out[f"time/{part}_s"], 1e-9)
    return out
