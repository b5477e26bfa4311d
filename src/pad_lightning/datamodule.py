"""RolloutDataModule: on-policy rollouts from the current student, every k epochs (or once).

Lightning calls `train_dataloader()` again every `every_n_epochs` epochs
(`Trainer(reload_dataloaders_every_n_epochs=k)`, 0 = once, the offline mode). Each call samples
this round's prompts, generates n responses per prompt with the student as it is *now*, scores
them with the frozen teacher (plus MCQ calibration), and serves batches of whole prompts.
Under DDP every rank rolls out its own shard of the round's prompts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import lightning as L
import torch
from torch.utils.data import DataLoader

from .chat import pad_id
from .metrics import distinct_fraction, kendall_tau, nanmean, quality_matrix
from .preference import ranking_entropy
from .rewards import pad_pairs
from .rollout import CalibrationConfig, Rollout, SamplingConfig, collect


@dataclass
class RolloutConfig:
    n: int = 4
    prompts_per_epoch: int = 64
    batch_size: int = 64  # prompts per optimizer step (each with n responses)
    every_n_epochs: int = 1  # 0: generate once (offline, like the paper's public code)
    max_tokens: int = 16384  # padded tokens per teacher forward pass
    sample_log_prompts: int = 8  # prompts per rollout sample table logged to MLflow


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
        self.last_stats: dict[str, float] = {}

    def round_problems(self, epoch: int, rank: int = 0, world_size: int = 1) -> list:
        """The prompts of the round starting at `epoch`: a seeded draw, sharded by rank."""
        rng = random.Random(f"{self.seed}-round-{epoch}")
        total = min(self.cfg.prompts_per_epoch * world_size, len(self.train_problems))
        chosen = rng.sample(range(len(self.train_problems)), total)
        return [self.train_problems[i] for i in chosen[rank::world_size]]

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        module = trainer.lightning_module
        problems = self.round_problems(
            trainer.current_epoch, trainer.global_rank, trainer.world_size
        )
        roll = collect(
            module.student,
            module.student_tokenizer,
            module.teacher,
            module.teacher_tokenizer,
            [p.prompt for p in problems],
            self.cfg.n,
            self.sampling,
            self.calibration,
            self.cfg.max_tokens,
            module._autocast_dtype(),
        )
        self.last_rollout = roll
        self.last_stats = rollout_stats(roll, problems, module.loss_cfg.beta_teacher)
        items = [
            (roll.student_pairs[i * self.cfg.n : (i + 1) * self.cfg.n], roll.teacher_scores[i])
            for i in range(len(problems))
        ]
        padding = pad_id(module.student_tokenizer)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + trainer.current_epoch)
        return DataLoader(
            items,
            batch_size=self.cfg.batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=lambda b: collate(b, padding),
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_problems, batch_size=self.eval_batch_size, collate_fn=list)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_problems, batch_size=self.eval_batch_size, collate_fn=list)


def collate(items: list, pad_id: int) -> dict[str, torch.Tensor]:
    """Prompts with their n responses -> one padded batch of P*n rows and scores [P, n]."""
    padded = pad_pairs([pair for pairs, _ in items for pair in pairs], pad_id)
    return {
        "input_ids": padded.input_ids,
        "attention_mask": padded.attention_mask,
        "score_mask": padded.score_mask,
        "teacher_scores": torch.stack([scores for _, scores in items]),
    }


def rollout_stats(roll: Rollout, problems: list, beta_teacher: float = 1.0) -> dict[str, float]:
    """Per-round statistics: lengths, diversity, teacher ranking entropy, time and tokens/s."""
    distinct = distinct_fraction(roll.texts)
    stats = {
        "rollout/response_length": float(roll.lengths.mean()),
        "rollout/truncated_fraction": float(roll.truncated.float().mean()),
        "rollout/distinct_fraction": float(distinct.mean()),
        "rollout/all_identical_fraction": float(
            (distinct * len(roll.texts[0]) <= 1).float().mean()
        ),
        "rollout/teacher_score_mean": float(roll.teacher_scores.mean()),
        "rollout/teacher_ranking_entropy": float(
            ranking_entropy(beta_teacher * roll.teacher_scores).mean()
        ),
    }
    for part, seconds in roll.seconds.items():
        stats[f"time/{part}_s"] = seconds
        tokens = roll.tokens.get("generated" if part == "generation" else part)
        if tokens:
            stats[f"throughput/{part}_tokens_per_s"] = tokens / max(seconds, 1e-9)
    q = quality_matrix(roll.texts, problems)
    if q is not None:
        stats["rollout/sample_quality"] = float(q.mean())
        stats["rollout/teacher_q_tau"] = nanmean(kendall_tau(roll.teacher_scores, q))
    return stats
