"""PADModule: the trainable student, the frozen teacher, the PAD loss and its evaluation."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import lightning as L
import torch

from pad_lightning.lm.adapters import is_lora
from pad_lightning.lm.chat import pad_id
from pad_lightning.lm.loading import merged_state_dict
from pad_lightning.lm.sharding import ShardingConfig, gathered, local_numel, shard
from pad_lightning.ranking import losses
from pad_lightning.runtime.collectives import all_ranks, rng_states, set_rng_states
from pad_lightning.runtime.errors import TrainingDiverged
from pad_lightning.runtime.interrupts import fault
from pad_lightning.runtime.nonfinite import first_nonfinite, lr_hint
from pad_lightning.training.evaluation import EvalConfig, evaluate
from pad_lightning.training.objectives import LossConfig, StudentView, build_batch, objective
from pad_lightning.training.rollout import Extras, Rollout
from pad_lightning.training.sft import adamw_cosine

INFERENCE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": None}


def fast_bf16(device_type: str) -> bool:
    """Whether bf16 autocast speeds up this device: GPUs with bf16, and CPUs with native bf16
    instructions (AVX512-BF16 / AMX). Without them (e.g. AVX2-only CPUs) bf16 matmuls are
    emulated: measured 4.6-5.1x slower than float32 for teacher scoring on an AVX2 AMD EPYC
    (experiments/bench_scoring.py)."""
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_inference_dtype(name: str, device_type: str) -> torch.dtype | None:
    """`trainer.inference_dtype` as an autocast dtype (None: float32); `auto` picks bfloat16
    where it is fast (see `fast_bf16`), else float32."""
    if name == "auto":
        return torch.bfloat16 if fast_bf16(device_type) else None
    return INFERENCE_DTYPES[name]


@dataclass
class OptimConfig:
    """AdamW and its warm-up + cosine schedule; these defaults are the `trainer.optim` config
    group's (app.schema.trainer reads them; conf/trainer/default.yaml repeats them)."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)


class PADModule(L.LightningModule):
    """Student trainable; teacher frozen (eval, no grad, outside optimizer and checkpoints).

    `loss.name` picks an objective (`objectives.OBJECTIVES`); one that needs reference log-probs
    gets `reference`, a frozen copy of the initial student (outside checkpoints too: a resume
    rebuilds it from the student's model path before the checkpoint's weights are loaded)."""

    def __init__(
        self,
        student,
        teacher,
        student_tokenizer,
        teacher_tokenizer,
        loss: LossConfig,
        optim: OptimConfig,
        evaluation: EvalConfig,
        total_steps: int,
        inference_dtype: str = "auto",
        sharding: ShardingConfig | None = None,
    ):
        super().__init__()
        self.student = student
        self.teacher = teacher.eval().requires_grad_(False)
        self.student_tokenizer, self.teacher_tokenizer = student_tokenizer, teacher_tokenizer
        self.loss_cfg, self.optim_cfg, self.eval_cfg = loss, optim, evaluation
        self.objective = objective(loss.name)
        if loss.name in ("ppd", "vpd"):  # an unknown divergence fails here, not at step 1
            losses.loss_function(loss.name, loss.divergence)
        self.reference = (
            copy.deepcopy(student).eval().requires_grad_(False)
            if "reference" in self.objective.needs
            else None
        )
        self.total_steps = total_steps
        self.inference_dtype = inference_dtype
        self.eval_tag = "val"  # "val" (periodic validation) or "test" (before / after training)
        self.test_answers: list[dict] = []  # the last test's greedy answers (answer_rows)
        self.strict_loading = False  # checkpoints hold the student only
        self.sharding = sharding  # strategy=fsdp's options (None: not sharded)
        self.local_params: dict[str, list[int]] = {}  # per rank, once sharded (logged)
        self.rollout_engine = None  # rollout.sampler=vllm: engines.vllm_rollout.RolloutEngine
        self.last_sync_seconds = 0.0  # its last weight sync

    # -- sharding (strategy=fsdp) ---------------------------------------------------------
    def configure_model(self) -> None:
        """Shard the student (and a `sharded` teacher and reference) over the data-parallel
        mesh; Lightning calls this before every fit/validate/test, so it acts once."""
        if self.sharding is None or self.local_params:
            return
        mesh = self.device_mesh["data_parallel"]
        shard(self.student, mesh, self.sharding, self.sharding.reshard_after_forward)
        frozen = [
            m
            for m in (self.teacher, self.reference)
            if m is not None and next(m.parameters()).numel()
        ]  # a served teacher's weights are on its server
        for model in frozen:
            if self.sharding.teacher == "sharded":
                shard(model, mesh, self.sharding, reshard=True)
            else:
                model.to(self.trainer.strategy.root_device)
        counts = all_ranks((local_numel(self.student), local_numel(self.teacher)))
        self.local_params = {"student": [c[0] for c in counts], "teacher": [c[1] for c in counts]}

    def gathered(self):
        """Context in which the sharded models' weights are whole (one all-gather each): the
        rollouts and evaluations decode step by step inside it. A no-op when not sharded."""
        return gathered(self.student, self.teacher, self.reference)

    # -- training -------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher never leaves eval mode (no dropout, no BN updates)
        if self.reference is not None:
            self.reference.eval()
        return self

    def sampler(self) -> torch.nn.Module:
        """The model a rollout samples from: the student, or (rollout.sampler=vllm) the vLLM
        engine, first given the student's current weights (once per optimizer step)."""
        if self.rollout_engine is None:
            return self.student
        state = (
            merged_state_dict(self.student) if is_lora(self.student) else self.student.state_dict()
        )
        step = self.trainer.global_step if self._trainer is not None else None
        self.last_sync_seconds = self.rollout_engine.sync(state, step)
        return self.rollout_engine.served

    def extras(self, references: list | None = None) -> Extras:
        """What this run's rollouts must provide besides the student's samples: the reference
        answers go to gold targets and to the synthetic judge."""
        keep = "gold" in self.objective.needs or self.eval_cfg.calibration.needs_references()
        return Extras(self.objective.needs, self.reference, references if keep else None)

    def batch(self, roll: Rollout, indices: list[int]) -> dict:
        """The batch of prompts `indices` of a rollout, with what the objective needs."""
        return build_batch(
            roll,
            indices,
            pad_id(self.student_tokenizer),
            self.objective.needs,
            self.teacher,
            self._autocast_dtype(),
        )

    def objective_loss(self, batch: dict) -> tuple[torch.Tensor, StudentView]:
        """Per-prompt loss [P] of the objective on a batch, and the student view it used."""
        view = StudentView(self.student, batch)
        try:
            return self.objective.loss(view, batch, self.loss_cfg), view
        except losses.NonFiniteScoresError as err:
            self._diverged(str(err))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        fault("step")
        per_prompt, view = self.objective_loss(batch)
        loss = per_prompt.mean()
        if not bool(torch.isfinite(loss)):
            self._diverged(f"loss is {float(loss)}")
        prompts = batch["shape"][0]
        # the loss of the whole (all-rank) batch: under DDP/FSDP the mean of the ranks' losses
        distributed = self._trainer is not None and self.trainer.world_size > 1
        self.log("train/loss", loss, prog_bar=True, batch_size=prompts, sync_dist=distributed)
        if "rewards" in view.__dict__:  # computed by the objective (never an extra pass)
            self.log("train/student_reward", view.rewards.mean(), batch_size=prompts)
        if self._trainer is not None:  # the learning rate of this step's update
            lr = self._trainer.optimizers[0].param_groups[0]["lr"]
            self.log("train/lr", lr, batch_size=prompts)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        """Refuse a step on non-finite gradients (clipping would spread NaN to every weight)."""
        bad = first_nonfinite([(n, p.grad) for n, p in self.student.named_parameters()])
        if self.sharding is not None:  # each rank checked its own shards: every rank must agree
            bad = next((b for b in all_ranks(bad) if b), None)
        if bad is not None:
            self._diverged(f"gradient of {bad} is not finite")

    def _diverged(self, what: str) -> None:
        raise TrainingDiverged(
            f"step {self.global_step} (epoch {self.current_epoch}): {what}; "
            f"{lr_hint(self.optim_cfg.lr)}"
        )

    def configure_optimizers(self):
        cfg = self.optim_cfg
        return adamw_cosine(
            self.student.parameters(),
            cfg.lr,
            cfg.weight_decay,
            cfg.betas,
            cfg.warmup_steps,
            self.total_steps,
            cfg.min_lr_ratio,
        )

    # -- evaluation -----------------------------------------------------------------------
    def _eval_step(self, problems: list, batch_idx: int) -> None:
        # Evaluation samples from its own seeded stream: before/after/val compare like with like,
        # and how often one validates never changes the training run's random numbers.
        device = self.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.eval_cfg.seed * 1_000_003 + batch_idx)
            answers = self.test_answers if self.eval_tag == "test" else None
            with self.gathered():
                metrics = evaluate(self, problems, self.eval_cfg, self._autocast_dtype(), answers)
        for name, value in metrics.items():
            self.log(
                f"{self.eval_tag}/{name}",
                value,
                batch_size=len(problems),
                sync_dist=True,
                prog_bar=name == "exact_match",
            )
        # One x-axis for every metric: the number of optimizer steps the weights have had when
        # the value was measured (Lightning would log validation one step early, and tests at a
        # running count of evaluation calls).
        self.log("step", float(self.global_step), batch_size=len(problems))

    def validation_step(self, problems: list, batch_idx: int) -> None:
        self._eval_step(problems, batch_idx)

    def on_test_epoch_start(self) -> None:
        self.test_answers = []

    def test_step(self, problems: list, batch_idx: int) -> None:
        self._eval_step(problems, batch_idx)

    def _autocast_dtype(self) -> torch.dtype | None:
        """Autocast dtype of the no-grad passes: generation, teacher scoring, calibration."""
        return resolve_inference_dtype(self.inference_dtype, self.device.type)

    # -- checkpoints ----------------------------------------------------------------------
    def _frozen_student_keys(self) -> set[str]:
        """State-dict keys of frozen student weights (a LoRA student's base model)."""
        return {f"student.{n}" for n, p in self.student.named_parameters() if not p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep what training changes: the teacher and a LoRA student's frozen base weights are
        reloaded from their model paths on resume, so a checkpoint holds adapters, not 2.6B
        frozen parameters."""
        state = checkpoint["state_dict"]
        frozen = self._frozen_student_keys()
        for key in [k for k in state if k.startswith(("teacher.", "reference.")) or k in frozen]:
            del state[key]
        # Resuming continues the same random stream (rollout sampling), so a resumed run gives
        # the metrics of an uninterrupted one.
        # Every rank's: under DDP/FSDP each rank samples its own prompts, so their streams differ.
        checkpoint["rng_states"] = rng_states()
        checkpoint["rng_states_by_rank"] = all_ranks(checkpoint["rng_states"])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        frozen = self._frozen_student_keys()
        missing = [
            k
            for k in self.student.state_dict()
            if f"student.{k}" not in checkpoint["state_dict"] and f"student.{k}" not in frozen
        ]
        if missing:
            raise ValueError(
                f"checkpoint lacks student weights (e.g. {missing[0]!r}); "
                "was it written by a different student model?"
            )
        by_rank = checkpoint.get("rng_states_by_rank") or []
        rank = self.global_rank if self._trainer is not None else 0
        if len(by_rank) > 1 and len(by_rank) == self.trainer.world_size:
            set_rng_states(by_rank[rank])
        elif "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])
