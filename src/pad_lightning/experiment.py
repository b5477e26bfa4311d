"""One PAD experiment, top to bottom: setup -> evaluate before -> fit -> evaluate after -> report."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from .calibration import mcq_prompt, option_token_ids
from .callbacks import RolloutLogger, parts_text
from .chat import prompt_text
from .data import build_problems
from .datamodule import RolloutConfig, RolloutDataModule
from .evaluation import EvalConfig
from .models import load_pair, save_student
from .module import LossConfig, OptimConfig, PADModule
from .rollout import CalibrationConfig, SamplingConfig
from .validation import ConfigError, responses_per_round

console = Console()
REPORTED = (
    "exact_match",
    "quality",
    "teacher_reward",
    "kendall_tau",
    "top1_agreement",
    "teacher_q_tau",
    "student_q_tau",
    "sample_quality",
    "loss",
    "answer_length",
)


def flatten(cfg: dict, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b.c": value}, values as strings (MLflow params)."""
    out: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


def _configs(cfg: DictConfig) -> tuple:
    roll = cfg.rollout
    sampling = SamplingConfig(
        roll.temperature, roll.top_p, roll.top_k, roll.max_new_tokens, roll.generation_batch_size
    )
    cal = CalibrationConfig(
        cfg.calibration.name,
        cfg.calibration.alpha,
        cfg.calibration.mode,
        cfg.calibration.debias,
        cfg.calibration.template,
    )
    dec = cfg.decomposition
    group_size = dec.group_size if dec.name in ("split", "iterative") else None
    # iterative: n / k rounds per epoch of k fresh samples each; split: one rollout of n
    per_round = responses_per_round(cfg)
    rollout = RolloutConfig(
        per_round,
        roll.prompts_per_epoch,
        roll.batch_size,
        roll.every_n_epochs,
        roll.max_tokens,
        roll.sample_log_prompts,
        rounds=cfg.n // per_round,
    )
    loss = LossConfig(
        cfg.loss.name,
        cfg.loss.beta_student,
        cfg.loss.beta_teacher,
        group_size,
        cfg.loss.get("divergence"),
    )
    optim = OptimConfig(**OmegaConf.to_container(cfg.trainer.optim))
    return sampling, cal, rollout, loss, optim


def run_experiment(cfg: DictConfig, overrides: list[str]) -> Path | None:
    """Run one configured experiment; returns the path of its summary.json (None off rank 0).

    Under DDP every rank runs this function (Lightning relaunches the command with the same
    output directory); only global rank 0 writes files, and every rank takes the same branches
    so that collective calls (test, fit) match.
    """
    started = time.perf_counter()
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resuming = bool(cfg.resume)
    is_zero = rank_zero_only.rank == 0
    if is_zero and not resuming:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    L.seed_everything(cfg.seed, verbose=False)

    student, tok_s, teacher, tok_t = load_pair(cfg.model)
    _check_option_letters(cfg, tok_t)
    train, val, test = build_problems(cfg.data, tokenizer=tok_s)
    sampling, cal, rollout, loss, optim = _configs(cfg)
    batches_per_epoch = rollout.rounds * math.ceil(rollout.prompts_per_epoch / rollout.batch_size)
    accumulate = cfg.trainer.get("accumulate_grad_batches", 1)  # configs saved before it: 1
    steps_per_epoch = math.ceil(batches_per_epoch / accumulate)  # Lightning steps at epoch end
    module = PADModule(
        student,
        teacher,
        tok_s,
        tok_t,
        loss,
        optim,
        EvalConfig(cfg.n, sampling, cal, rollout.max_tokens),
        total_steps=cfg.trainer.max_epochs * steps_per_epoch,
        inference_dtype=cfg.trainer.inference_dtype,
    )
    datamodule = RolloutDataModule(
        train, val, test, rollout, sampling, cal, cfg.seed, cfg.data.eval_batch_size
    )

    state_file = run_dir / "run_state.json"
    state = json.loads(state_file.read_text()) if resuming else {"overrides": overrides}
    logger = MLFlowLogger(
        experiment_name=cfg.logger.experiment_name,
        tracking_uri=cfg.logger.tracking_uri,
        run_name=cfg.logger.run_name,
        run_id=state.get("mlflow_run_id"),
    )
    state["mlflow_run_id"] = logger.run_id
    if is_zero:
        state_file.write_text(json.dumps(state, indent=2))
    if is_zero and not resuming:
        logger.log_hyperparams(flatten(OmegaConf.to_container(cfg, resolve=True)))
        (run_dir / "overrides.yaml").write_text("\n".join(overrides) + "\n")
        for name in ("config.yaml", "overrides.yaml"):
            logger.experiment.log_artifact(logger.run_id, str(run_dir / name))

    rollout_logger = RolloutLogger(
        cfg.logger.log_rollouts_every,
        rollout.sample_log_prompts,
        cfg.logger.get("print_time_every", 10),
    )
    # The newest epoch checkpoint is kept, and checkpoints/last.ckpt links to it (resume target).
    checkpoints = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="epoch{epoch:04d}",
        auto_insert_metric_name=False,
        save_top_k=1,
        save_last="link",
        every_n_epochs=cfg.trainer.checkpoint_every_n_epochs,
        save_on_train_epoch_end=True,
    )
    trainer = L.Trainer(
        max_epochs=cfg.trainer.max_epochs,
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        strategy=cfg.trainer.strategy,
        precision=cfg.trainer.precision,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        accumulate_grad_batches=accumulate,
        logger=logger,
        callbacks=[rollout_logger, checkpoints, RichProgressBar()],
        reload_dataloaders_every_n_epochs=rollout.every_n_epochs,
        check_val_every_n_epoch=cfg.trainer.val_every_n_epochs,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        log_every_n_steps=1,
        enable_model_summary=False,
        default_root_dir=run_dir,
    )

    before_file = run_dir / "before.json"
    if resuming and before_file.exists():
        before = json.loads(before_file.read_text())
    else:
        before = _test(trainer, module, datamodule, "before")
        if is_zero:
            before_file.write_text(json.dumps(before, indent=2))
    fit_started = time.perf_counter()
    last_ckpt = run_dir / "checkpoints" / "last.ckpt"
    trainer.fit(module, datamodule=datamodule, ckpt_path=last_ckpt if resuming else None)
    fit_seconds = time.perf_counter() - fit_started
    after = _test(trainer, module, datamodule, "after")

    summary = {
        "before": before,
        "after": after,
        "delta": {k: after[k] - before[k] for k in after if k in before},
        "timings": {
            "total_s": time.perf_counter() - started,
            "fit_s": fit_seconds,
            **rollout_logger.summary(),
        },
        "overrides": state["overrides"],
        "mlflow_run_id": logger.run_id,
        "tracking_uri": cfg.logger.tracking_uri,
        "run_dir": str(run_dir),
        "resumed": resuming,
    }
    if trainer.is_global_zero:
        student_dir = save_student(module.student, tok_s, run_dir / "student", cfg.model.student)
        summary_file = run_dir / "summary.json"
        summary_file.write_text(json.dumps(summary, indent=2))
        logger.experiment.log_artifact(logger.run_id, str(summary_file))
        if cfg.logger.log_student:
            logger.experiment.log_artifacts(logger.run_id, str(student_dir), "student")
        logger.log_metrics(
            {f"delta/{k}": v for k, v in summary["delta"].items()}, step=trainer.global_step
        )
        report(summary)
        return summary_file
    return None


def _check_option_letters(cfg: DictConfig, teacher_tokenizer) -> None:
    """Calibration needs one distinct token per option letter in the teacher's tokenizer."""
    cal = cfg.calibration
    if cal.name != "mcq" or cal.alpha == 0:
        return
    k = 2 if cal.mode == "pairwise" else responses_per_round(cfg)
    try:
        context = prompt_text(teacher_tokenizer, mcq_prompt("q", ["a", "b"], cal.template))
        option_token_ids(teacher_tokenizer, k, context)
    except ValueError as err:
        raise ConfigError(f"calibration.mode={cal.mode}: {err}") from None


def _test(trainer: L.Trainer, module: PADModule, datamodule, tag: str) -> dict[str, float]:
    module.eval_tag = tag
    results = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    module.eval_tag = "val"
    prefix = f"{tag}/"
    return {k[len(prefix) :]: float(v) for k, v in results.items() if k.startswith(prefix)}


def report(summary: dict) -> None:
    """The before / after table and the time breakdown, in the terminal."""
    table = Table(title="PAD: held-out test metrics")
    for col in ("metric", "before", "after", "delta"):
        table.add_column(col, justify="right" if col != "metric" else "left")
    for name in REPORTED:
        if name in summary["before"]:
            b, a = summary["before"][name], summary["after"][name]
            table.add_row(name, f"{b:.4f}", f"{a:.4f}", f"{a - b:+.4f}")
    console.print(table)
    times = summary["timings"]
    parts = parts_text(times, "mean_{}_s", "mean_{}_tokens_per_s")
    console.print(
        f"mean epoch {times.get('mean_epoch_s', 0):.2f}s: {parts}; "
        f"fit {times['fit_s']:.0f}s, total {times['total_s']:.0f}s; "
        f"MLflow run {summary['mlflow_run_id']}"
    )
