"""One PAD experiment as named phases, each a function below:

    prepare -> check_judge -> build -> build_trainer -> evaluate_before -> fit -> evaluate_after
    -> finish

`prepare` reads the data and the models and checks what needs them (no run exists yet);
`check_judge` measures the MCQ judge of a run that trains on calibrated scores and refuses one at
chance (still no run: a refused run leaves no MLflow run); `build` makes the LightningModule, the
DataModule and the MLflow run; the rest run inside the run's status bookkeeping (RUNNING, then
FINISHED, KILLED or FAILED in run_state.json and MLflow).
Importing this module changes no logging: `quiet_libraries` does, when a run starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from pad_lightning.app.models import load_pair, rollout_engine
from pad_lightning.app.resume import check_epochs
from pad_lightning.app.schema import RunConfig
from pad_lightning.data.answers import ANSWER_COLUMNS
from pad_lightning.data.problems import build_problems
from pad_lightning.data.prompts import check_prompt_lengths
from pad_lightning.lm.chat import prompt_text
from pad_lightning.lm.generation import SamplingConfig
from pad_lightning.lm.judge import mcq_prompt, option_token_ids
from pad_lightning.lm.loading import save_student
from pad_lightning.lm.sharding import full_state_dict
from pad_lightning.reporting.outcome import Outcome, outcome
from pad_lightning.runtime import interrupts
from pad_lightning.runtime.errors import ConfigError, TrainingDiverged
from pad_lightning.runtime.files import write_atomic
from pad_lightning.tracking.mlflow_run import (
    RunLogger,
    log_datasets,
    log_first_table,
    log_student_model,
    parameter_counts,
    run_name,
    run_tags,
    ui_hint,
)
from pad_lightning.training.callbacks import RolloutLogger, parts_text
from pad_lightning.training.checkpoints import (
    AtomicCheckpointIO,
    RollingCheckpoint,
    pick_resume_checkpoint,
)
from pad_lightning.training.datamodule import RolloutConfig, RolloutDataModule
from pad_lightning.training.evaluation import EvalConfig
from pad_lightning.training.judge_check import JudgeReport, measure_judge
from pad_lightning.training.module import PADModule, resolve_inference_dtype
from pad_lightning.training.objectives import LossConfig, objective
from pad_lightning.training.progress import RunProgress, quiet_libraries
from pad_lightning.training.rollout import CalibrationConfig
from pad_lightning.training.strategy import sharding_config, trainer_strategy

console = Console()
ANSWER_TABLE = "test_answers.json"  # the trained student's greedy test answers
RUN_PREFIX = "system/run/"  # run-level totals, logged once; system/time/ is per epoch


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
    """The runtime configs of a checked run config, built by keyword from its schema."""
    run = RunConfig.of(cfg)
    roll, cal = run.rollout, run.calibration
    sampling = SamplingConfig(
        temperature=roll.temperature,
        top_p=roll.top_p,
        top_k=roll.top_k,
        max_new_tokens=roll.max_new_tokens,
        batch_size=roll.generation_batch_size,
        sampler=roll.sampler,
    )
    calibration = CalibrationConfig(
        name=cal.name,
        alpha=cal.alpha,
        mode=cal.mode,
        debias=cal.debias,
        template=cal.template,
        option_template=cal.option_template,
        judge=cal.judge,
        synthetic=cal.synthetic,
        seed=run.seed,
    )
    # iterative: n / k rounds per epoch of k fresh samples each; split: one rollout of n
    per_round = run.responses_per_round()
    rollout = RolloutConfig(
        n=per_round,
        prompts_per_epoch=roll.prompts_per_epoch,
        batch_size=roll.batch_size,
        every_n_epochs=roll.every_n_epochs,
        max_tokens=roll.max_tokens,
        sample_log_prompts=roll.sample_log_prompts,
        rounds=run.n // per_round,
    )
    loss = LossConfig(
        name=run.loss.name,
        beta_student=run.loss.beta_student,
        beta_teacher=run.loss.beta_teacher,
        group_size=run.decomposition.group(run.n),
        divergence=run.loss.divergence,
        **run.loss.knobs(),  # a knob the loss config leaves null keeps LossConfig's default
    )
    return sampling, calibration, rollout, loss, run.trainer.optim


@dataclass
class Inputs:
    """What `prepare` read: the prompt splits, both models and the checkpoint to resume from."""

    train: list
    val: list
    test: list
    student: torch.nn.Module
    student_tokenizer: object
    teacher: torch.nn.Module
    teacher_tokenizer: object
    ckpt_path: Path | None
    judge: JudgeReport | None = None  # what `check_judge` measured (None: no check ran)
    engine: object | None = None  # rollout.sampler=vllm: its engines.vllm_rollout.RolloutEngine


@dataclass
class Run:
    """What `build` made: the run's config and folder, its state file, module, data, logger."""

    cfg: DictConfig
    dir: Path
    resuming: bool
    state: dict
    module: PADModule
    datamodule: RolloutDataModule
    logger: RunLogger
    is_zero: bool
    started: float = field(default_factory=time.perf_counter)
    rollout_logger: RolloutLogger | None = None
    judge: JudgeReport | None = None  # the judge check's numbers (None: no check ran)

    def set_status(self, status: str) -> None:
        self.state["status"] = status
        if self.is_zero:
            write_atomic(self.dir / "run_state.json", json.dumps(self.state, indent=2))
        self.logger.set_status(status)

    def set_ended(self, status: str) -> None:
        """`set_status` for a run that is stopping on an error or a signal: if the status
        cannot be written (the disk or the tracking store is full), the error that stopped
        the run is the one reported, not this one."""
        with contextlib.suppress(Exception):  # the run's own error is being raised
            self.set_status(status)


def run_experiment(
    cfg: DictConfig, overrides: list[str], state: dict | None = None, sweep: dict | None = None
) -> Path | None:
    """Run one configured experiment; returns the path of its summary.json (None off rank 0).

    `state` is the run_state.json of a run being resumed (None for a new run); `sweep` names the
    multirun a job belongs to (`dir`, `job`), for its MLflow tags.
    Under DDP every rank runs this function (Lightning relaunches the command with the same
    output directory); only global rank 0 writes files, and every rank takes the same branches
    so that collective calls (test, fit) match.
    """
    quiet_libraries()
    inputs = prepare(cfg, resuming=state is not None)
    inputs.judge = check_judge(cfg, inputs, resuming=state is not None)
    run = build(cfg, inputs, overrides, state, sweep)
    run.set_status("RUNNING")
    if run.is_zero:  # a sweep prints how to open its runs once, at its start
        hint = "" if sweep else f"\n{ui_hint(cfg.logger.tracking_uri, run.logger)}"
        console.print(
            f"run [bold]{run.logger._run_name}[/bold] ({'resumed, ' if run.resuming else ''}"
            f"MLflow run {run.logger.run_id}) in {run.dir}{hint}",
            soft_wrap=True,
            highlight=False,
        )
    try:
        with RunProgress(console) as progress, _closing(inputs.engine):
            trainer = build_trainer(run, progress)
            before = evaluate_before(run, trainer)
            fit_seconds, validation = fit(run, trainer, inputs.ckpt_path)
            after = evaluate_after(run, trainer)
            summary_file = finish(run, trainer, before, after, validation, fit_seconds)
    except (interrupts.Preempted, KeyboardInterrupt) as stop:
        run.logger.discard()  # steps after the last checkpoint run (and are logged) again on resume
        run.set_ended("KILLED")
        if isinstance(stop, KeyboardInterrupt):  # Ctrl-C outside a trainer call
            raise interrupts.Preempted(signal.SIGINT) from None
        raise
    except TrainingDiverged:
        run.logger.commit()  # keep the curve up to the failure: it shows what diverged
        run.set_ended("FAILED")
        raise
    except BaseException:
        run.logger.discard()
        run.set_ended("FAILED")
        raise
    interrupts.fault("report")
    run.set_status("FINISHED")  # only now: the report and every file are written
    return summary_file


@contextlib.contextmanager
def _closing(engine):
    """The rollout engine's weight folder is removed when the run ends, however it ends."""
    try:
        yield
    finally:
        if engine is not None:
            engine.close()


def prepare(cfg: DictConfig, resuming: bool) -> Inputs:
    """Config file, threads, prompt splits, the checkpoint to resume, both models, and the checks
    that need them; seeded last. Prompt files are read before any model loads (a bad file costs
    seconds, not minutes); the token-length filter needs the student tokenizer, so it applies
    after loading."""
    run_dir = Path(cfg.output_dir)
    if rank_zero_only.rank == 0 and not resuming:
        write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    # the token-length filter of prompt sets (toy tasks have none)
    needs_tokenizer = cfg.data.name != "toy" and cfg.data.max_prompt_tokens is not None
    if needs_tokenizer:
        train, val, test = build_problems(_without_token_filter(cfg.data), log=lambda _: None)
    else:
        train, val, test = build_problems(cfg.data)
    _check_judge_references(cfg, {"train": train, "val": val, "test": test})
    ckpt_path = pick_resume_checkpoint(run_dir) if resuming else None
    if ckpt_path is not None:
        check_epochs(ckpt_path, cfg.trainer.max_epochs)
    student, tok_s, teacher, tok_t = load_pair(cfg.model, run_dir)
    _check_option_letters(cfg, tok_t)
    _check_objective(cfg, tok_s, tok_t)
    if needs_tokenizer:
        train, val, test = build_problems(cfg.data, tokenizer=tok_s)
    _check_prompt_lengths(cfg, {"train": train, "val": val, "test": test}, student=(student, tok_s))
    _check_prompt_lengths(cfg, {"train": train, "val": val, "test": test}, teacher=(teacher, tok_t))
    _check_judge_prompt_length(cfg, {"train": train, "val": val, "test": test}, teacher, tok_t)
    if "gold" in objective(cfg.loss.name).needs:
        _check_references(cfg, train)
    engine = rollout_engine(cfg, student, run_dir)
    # Seeded after loading: building the zoo (first run only) draws random numbers, and a run
    # must not depend on whether its models were cached.
    L.seed_everything(cfg.seed, verbose=False)
    return Inputs(train, val, test, student, tok_s, teacher, tok_t, ckpt_path, engine=engine)


def check_judge(cfg: DictConfig, inputs: Inputs, resuming: bool) -> JudgeReport | None:
    """Measure the MCQ judge before training (`training.judge_check`), in a run whose objective
    trains on calibrated scores (calibration.alpha > 0) and whose `calibration.check.prompts` is
    not 0; a new run only (a resumed one was checked when it started).

    An at-chance judge is refused with one ConfigError line saying what was measured, why and
    how to override, before the MLflow run exists: a refused run leaves no MLflow run, only the
    run folder with its config (as any start-up refusal). Otherwise the numbers are printed in
    one line and logged to the run under judge/ (`build_trainer`, `evaluate_before`).

    The models are moved to the device the run will use (one GPU when the trainer has one,
    this rank's under DDP) for the check and back: the whole student and teacher must fit on it
    (under FSDP of models larger than one device, set calibration.check.prompts=0)."""
    group = RunConfig.of(cfg).calibration
    sampling, cal, rollout, _, _ = _configs(cfg)
    needs_scores = "teacher_scores" in objective(cfg.loss.name).needs
    problems = inputs.val or inputs.train
    if resuming or not cal.asks() or not needs_scores or not group.check.prompts or not problems:
        return None
    device = _check_device(cfg)
    home = {m: next(m.parameters()).device for m in (inputs.student, inputs.teacher)}
    for model in home:
        model.to(device)
    try:
        report = measure_judge(
            inputs.student,
            inputs.student_tokenizer,
            inputs.teacher,
            inputs.teacher_tokenizer,
            problems,
            rollout.n,
            sampling,
            cal,
            group.check,
            rollout.max_tokens,
            resolve_inference_dtype(cfg.trainer.inference_dtype, device.type),
        )
    finally:
        for model, where in home.items():
            model.to(where)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if report.at_chance() and group.check.refuse:
        raise ConfigError(report.refusal(cal.alpha))
    if rank_zero_only.rank == 0:
        console.print(report.line(), soft_wrap=True, highlight=False)
    return report


def _check_device(cfg: DictConfig) -> torch.device:
    """The device the judge check runs on: this rank's GPU when the trainer will use GPUs (as
    Lightning places a single-device or DDP run), else the CPU."""
    accelerator = str(cfg.trainer.accelerator)
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def build(
    cfg: DictConfig, inputs: Inputs, overrides: list[str], state: dict | None, sweep: dict | None
) -> Run:
    """The LightningModule, the rollout DataModule and the MLflow run (new, or the resumed one)."""
    resuming = state is not None
    sampling, cal, rollout, loss, optim = _configs(cfg)
    batches_per_epoch = rollout.rounds * math.ceil(rollout.prompts_per_epoch / rollout.batch_size)
    accumulate = cfg.trainer.accumulate_grad_batches
    steps_per_epoch = math.ceil(batches_per_epoch / accumulate)  # Lightning steps at epoch end
    state = dict(state) if resuming else {"overrides": overrides}
    # The learning-rate schedule keeps the length planned at the start, also when a resume
    # extends trainer.max_epochs (the extra epochs run at the final learning rate).
    state.setdefault("schedule_epochs", cfg.trainer.max_epochs)
    module = PADModule(
        inputs.student,
        inputs.teacher,
        inputs.student_tokenizer,
        inputs.teacher_tokenizer,
        loss,
        optim,
        EvalConfig(
            n=cfg.n,
            sampling=sampling,
            calibration=cal,
            max_tokens=rollout.max_tokens,
            seed=cfg.seed,
            loss_batch=rollout.batch_size,
        ),
        total_steps=state["schedule_epochs"] * steps_per_epoch,
        inference_dtype=cfg.trainer.inference_dtype,
        sharding=sharding_config(cfg),
    )
    module.rollout_engine = inputs.engine
    datamodule = RolloutDataModule(
        inputs.train,
        inputs.val,
        inputs.test,
        rollout,
        sampling,
        cal,
        cfg.seed,
        cfg.data.eval_batch_size,
    )
    logger = RunLogger(
        experiment_name=cfg.logger.experiment_name,
        tracking_uri=cfg.logger.tracking_uri,
        run_name=cfg.logger.run_name or run_name(state["overrides"], (sweep or {}).get("swept")),
        tags=None if resuming else run_tags(state["overrides"], _nesting(cfg, sweep)),
        run_id=state.get("mlflow_run_id"),
    )
    state["mlflow_run_id"] = logger.run_id
    if resuming:  # what the stopped process logged is not logged again (see RunLogger)
        logger.skip_logged()
    return Run(
        cfg,
        Path(cfg.output_dir),
        resuming,
        state,
        module,
        datamodule,
        logger,
        is_zero=rank_zero_only.rank == 0,
        judge=inputs.judge,
    )


def build_trainer(run: Run, progress: RunProgress) -> L.Trainer:
    """The Lightning Trainer with the run's callbacks; a new run logs its params and inputs."""
    cfg, logger, datamodule = run.cfg, run.logger, run.datamodule
    if run.is_zero and not run.resuming:
        logger.log_hyperparams(flatten(OmegaConf.to_container(cfg, resolve=True)))
        logger.log_hyperparams(parameter_counts(run.module.student, run.module.teacher))
        if run.judge is not None:
            logger.log_hyperparams(run.judge.params())
        log_datasets(logger, cfg.data, datamodule)
        (run.dir / "overrides.yaml").write_text("\n".join(run.state["overrides"]) + "\n")
        for name in ("config.yaml", "overrides.yaml"):
            logger.experiment.log_artifact(logger.run_id, str(run.dir / name))
    run.rollout_logger = RolloutLogger(
        cfg.logger.log_rollouts_every,
        datamodule.cfg.sample_log_prompts,
        cfg.logger.print_time_every,
    )
    checkpoints = RollingCheckpoint(
        run.dir / "checkpoints", cfg.trainer.checkpoint_every_n_epochs, logger
    )
    trainer = L.Trainer(
        max_epochs=cfg.trainer.max_epochs,
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        num_nodes=cfg.trainer.num_nodes,
        strategy=trainer_strategy(cfg),
        precision=cfg.trainer.precision,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        accumulate_grad_batches=cfg.trainer.accumulate_grad_batches,
        logger=logger,
        callbacks=[run.rollout_logger, checkpoints, progress],
        plugins=[AtomicCheckpointIO()],
        reload_dataloaders_every_n_epochs=datamodule.cfg.every_n_epochs,
        check_val_every_n_epoch=cfg.trainer.val_every_n_epochs,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        log_every_n_steps=1,
        enable_model_summary=False,
        default_root_dir=run.dir,
    )
    if run.is_zero and not run.resuming:  # what trainer.inference_dtype=auto chose on this machine
        dtype = resolve_inference_dtype(
            cfg.trainer.inference_dtype, trainer.strategy.root_device.type
        )
        logger.log_hyperparams({"trainer.inference_dtype_resolved": str(dtype or torch.float32)})
    return trainer


def evaluate_before(run: Run, trainer: L.Trainer) -> dict[str, float]:
    """Test metrics of the untrained student (read back on resume), then MLflow's system metrics
    start, then validation at step 0 (the start of the val/* curves).

    The system metrics start after the test on purpose: MLflow's compare view colours its
    parallel-coordinates plot by the first metric a run logged, which is then `test/exact_match`
    (a system metric first would colour every run alike, CPU at 100 %)."""
    before_file = run.dir / "before.json"
    if run.resuming and before_file.exists():
        before = json.loads(before_file.read_text())
    else:
        before = _test(trainer, run.module, run.datamodule)
        if run.is_zero:
            write_atomic(before_file, json.dumps(before, indent=2))
        if run.is_zero and run.judge is not None:  # after test/* (see above); a new run only
            run.logger.log_metrics(run.judge.metrics(), step=0)
    run.logger.start_system_metrics(resume=run.resuming)
    if not run.resuming and run.cfg.trainer.val_every_n_epochs and run.datamodule.val_problems:
        with interrupts.in_trainer():
            trainer.validate(run.module, datamodule=run.datamodule, verbose=False)
    return before


def fit(run: Run, trainer: L.Trainer, ckpt_path: Path | None) -> tuple[float, dict[str, float]]:
    """On-policy training; returns its seconds and the last validation's metrics (what a sweeper
    such as Optuna selects on, never test)."""
    fit_started = time.perf_counter()
    run.logger.hold_metrics = True
    with interrupts.in_trainer():
        trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=ckpt_path)
    run.logger.hold_metrics = False
    run.logger.commit()
    fit_seconds = time.perf_counter() - fit_started
    validation = {
        k[len("val/") :]: float(v)
        for k, v in trainer.callback_metrics.items()
        if k.startswith("val/")
    }
    return fit_seconds, validation


def evaluate_after(run: Run, trainer: L.Trainer) -> dict[str, float]:
    """Test metrics of the trained student."""
    interrupts.fault("final_eval")
    return _test(trainer, run.module, run.datamodule)


def finish(
    run: Run,
    trainer: L.Trainer,
    before: dict[str, float],
    after: dict[str, float],
    validation: dict[str, float],
    fit_seconds: float,
) -> Path | None:
    """summary.json, the saved student, the figures and the terminal report (rank 0)."""
    cfg, module, logger = run.cfg, run.module, run.logger
    summary = {
        "before": before,
        "after": after,
        "delta": {k: after[k] - before[k] for k in after if k in before},
        "val": validation,
        "timings": {
            "total_s": time.perf_counter() - run.started,
            "fit_s": fit_seconds,
            **run.rollout_logger.summary(),
        },
        "overrides": run.state["overrides"],
        "mlflow_run_id": logger.run_id,
        "tracking_uri": cfg.logger.tracking_uri,
        "run_dir": str(run.dir),
        "resumed": run.resuming,
        "ranks": trainer.world_size,
        "params_per_rank": module.local_params,  # strategy=fsdp: what each rank stores
    }
    verdict = outcome(before, after)
    if verdict is not None:
        summary["outcome"] = dataclasses.asdict(verdict)
    full_student = full_state_dict(module.student)  # FSDP: consolidated on rank 0 (collective)
    if not trainer.is_global_zero:
        return None
    _log_scale(logger, module, summary)
    student_dir = save_student(
        module.student,
        module.student_tokenizer,
        run.dir / "student",
        cfg.model.student,
        state_dict=full_student,
    )
    summary_file = run.dir / "summary.json"
    write_atomic(summary_file, json.dumps(summary, indent=2))
    logger.experiment.log_artifact(logger.run_id, str(summary_file))
    # what training produced, first in MLflow's evaluation view (rollouts.json: during training)
    log_first_table(logger, module.test_answers, ANSWER_COLUMNS, ANSWER_TABLE)
    _log_plots(logger, run.dir)
    if cfg.logger.log_student:
        log_student_model(logger, student_dir)
    if verdict is not None:
        logger.experiment.set_tag(logger.run_id, "pad.outcome", verdict.verdict)
    report(summary, title=f"{cfg.loss.name}: held-out test metrics")
    return summary_file


def _log_scale(logger: RunLogger, module: PADModule, summary: dict) -> None:
    """The run's totals under system/run/ (fit and total seconds, peak memory per rank), apart
    from the per-epoch series (system/time/, system/memory/), and (FSDP) the parameters each
    rank stores."""
    times = summary["timings"]
    metrics = {f"{RUN_PREFIX}fit_s": times["fit_s"], f"{RUN_PREFIX}total_s": times["total_s"]}
    metrics.update(
        {
            f"{RUN_PREFIX}{k[len('memory/') :]}": v
            for k, v in times.items()
            if k.startswith("memory/")
        }
    )
    logger.log_metrics(metrics, step=int(module.global_step))
    if module.local_params:
        params = {
            f"sharding.{role}_params_rank{r}": n
            for role, counts in module.local_params.items()
            for r, n in enumerate(counts)
        }
        logger.log_hyperparams(params)
        student = module.local_params["student"]
        console.print(
            "fsdp: student parameters stored per rank "
            + ", ".join(f"rank {r}: {n:,}" for r, n in enumerate(student))
            + f" (of {sum(student):,})",
            highlight=False,
        )


def _check_prompt_lengths(cfg: DictConfig, splits: dict[str, list], **models) -> None:
    """Every prompt, with a response of rollout.max_new_tokens, must fit the model's positions
    (config.max_position_embeddings, where the model declares it): a DataError naming the
    prompt's file and line otherwise (see data.prompts.check_prompt_lengths)."""
    for role, (model, tokenizer) in models.items():
        positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if isinstance(positions, int) and positions > 0:
            check_prompt_lengths(
                splits, tokenizer, role, positions, int(cfg.rollout.max_new_tokens)
            )


def _without_token_filter(data_cfg: DictConfig) -> DictConfig:
    out = OmegaConf.create(OmegaConf.to_container(data_cfg, resolve=True))
    out.max_prompt_tokens = None
    return out


def _teacher_judge_options(cfg: DictConfig) -> int | None:
    """Options per MCQ the teacher is asked (2 pairwise, every response of a round listwise), or
    None when the teacher judges nothing (no calibration, alpha = 0, the synthetic judge)."""
    cal = cfg.calibration
    if cal.name != "mcq" or cal.alpha == 0 or cal.judge == "synthetic":
        return None
    return 2 if cal.mode == "pairwise" else RunConfig.of(cfg).responses_per_round()


def _check_option_letters(cfg: DictConfig, teacher_tokenizer) -> None:
    """Calibration needs one distinct token per option letter in the teacher's tokenizer."""
    cal, k = cfg.calibration, _teacher_judge_options(cfg)
    if k is None:
        return
    try:
        context = prompt_text(
            teacher_tokenizer, mcq_prompt("q", ["a", "b"], cal.template, cal.option_template)
        )
        option_token_ids(teacher_tokenizer, k, context)
    except ValueError as err:
        raise ConfigError(f"calibration.mode={cal.mode}: {err}") from None


def _check_judge_prompt_length(cfg: DictConfig, splits: dict[str, list], teacher, tok_t) -> None:
    """The teacher judge's longest question must fit the teacher's positions: its prompt with k
    options (2 pairwise, every response of a round listwise) of rollout.max_new_tokens each.
    A ConfigError naming the prompt and what would fit, before any MLflow run exists."""
    cal, k = cfg.calibration, _teacher_judge_options(cfg)
    positions = getattr(getattr(teacher, "config", None), "max_position_embeddings", None)
    if k is None or not (isinstance(positions, int) and positions > 0):
        return
    from pad_lightning.training.calibration import question_text

    new = int(cfg.rollout.max_new_tokens)
    questions = [
        (question_text(p.prompt), getattr(p, "where", None) or f"{split} prompt {i + 1}")
        for split, problems in splits.items()
        for i, p in enumerate(problems)
    ]
    if not questions:
        return
    text, where = max(questions, key=lambda q: len(q[0]))  # by characters: tokenised once
    empty = prompt_text(tok_t, mcq_prompt(text, [""] * k, cal.template, cal.option_template))
    tokens = len(tok_t(empty, add_special_tokens=False)["input_ids"]) + k * new + 1
    if tokens > positions:
        raise ConfigError(
            f"calibration.mode={cal.mode}: the judge's question on the longest prompt ({where}) "
            f"lists {k} responses of up to rollout.max_new_tokens={new} tokens, about {tokens} "
            f"tokens in all, over the teacher's {positions} positions (max_position_embeddings "
            "of model.teacher); use calibration.mode=pairwise, a smaller rollout.max_new_tokens "
            "or n, or calibration.alpha=0"
        )


def _check_judge_references(cfg: DictConfig, splits: dict[str, list]) -> None:
    """The synthetic judge answers from the true quality q against reference answers: refused
    at start-up when a prompt of any split has none (prompt sets never do)."""
    cal = cfg.calibration
    if not (cal.name == "mcq" and cal.alpha > 0 and cal.judge == "synthetic"):
        return
    for split, problems in splits.items():
        missing = sum(1 for p in problems if getattr(p, "reference", None) is None)
        if missing:
            raise ConfigError(
                f"calibration.judge=synthetic: draws its answers from the true quality of the "
                f"responses against reference answers, but {missing} of {len(problems)} {split} "
                f"prompts of data={cfg.data.name} have none (prompt sets never do); use "
                "data=toy or calibration.judge=teacher"
            )


def _nesting(cfg: DictConfig, sweep: dict | None) -> dict | None:
    """The sweep a run belongs to, or (`logger.parent_run_id`) the run it is nested under."""
    parent = cfg.logger.parent_run_id
    if sweep is None and parent:
        return {"parent_run_id": parent}
    return sweep


def _check_objective(cfg: DictConfig, student_tokenizer, teacher_tokenizer) -> None:
    """Token-level distillation (GKD) reads the teacher's distribution over the student's
    vocabulary at the student's token ids: refused when the two tokenizers differ."""
    if "teacher_tokens" not in objective(cfg.loss.name).needs:
        return
    s_vocab, t_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if s_vocab != t_vocab:
        differ = sum(1 for tok, i in s_vocab.items() if t_vocab.get(tok) != i)
        raise ConfigError(
            f"loss={cfg.loss.name}: needs one tokenizer for student and teacher, but "
            f"{student_tokenizer.name_or_path!r} ({len(s_vocab)} tokens) and "
            f"{teacher_tokenizer.name_or_path!r} ({len(t_vocab)} tokens) differ on "
            f"{differ} ids; use loss=seqkd (teacher samples) or a preference loss instead"
        )


def _check_references(cfg: DictConfig, train: list) -> None:
    missing = sum(1 for p in train if getattr(p, "reference", None) is None)
    if missing:
        raise ConfigError(
            f"loss={cfg.loss.name}: trains on gold answers, but {missing} of {len(train)} "
            f"training prompts of data={cfg.data.name} have no reference answer (prompt sets "
            "never do); use data=toy or another loss"
        )


def _test(trainer: L.Trainer, module: PADModule, datamodule) -> dict[str, float]:
    """Test-set metrics of the student as it is now; logged as test/* at the current step (0
    before training, the last step after it), so before/after draw as one line per metric."""
    module.eval_tag = "test"
    with interrupts.in_trainer():
        results = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    module.eval_tag = "val"
    return {k[len("test/") :]: float(v) for k, v in results.items() if k.startswith("test/")}


def _log_plots(logger: RunLogger, run_dir: Path) -> None:
    """The end-of-run figures (plots.py) as PNG artifacts under plots/ (and in run_dir/plots)."""
    from pad_lightning.reporting.figures import (
        history_from_mlflow,
        rollouts_from_mlflow,
        run_figures,
        save_figures,
    )
    from pad_lightning.training.callbacks import ROLLOUT_TABLE

    client = logger.experiment
    history = history_from_mlflow(client, logger.run_id)
    rows = rollouts_from_mlflow(client, logger.run_id, ROLLOUT_TABLE)
    paths = save_figures(run_figures(history, rows), run_dir / "plots")
    if paths:
        client.log_artifacts(logger.run_id, str(run_dir / "plots"), "plots")


def report(summary: dict, title: str = "held-out test metrics") -> None:
    """The before / after table, the time breakdown and the outcome, in the terminal."""
    table = Table(title=title)
    for col in ("metric", "before", "after", "delta"):
        table.add_column(col, justify="right" if col != "metric" else "left")
    from pad_lightning.reporting.figures import REPORTED_METRICS

    for name in REPORTED_METRICS:
        if name in summary["before"]:
            b, a = summary["before"][name], summary["after"][name]
            table.add_row(name, f"{b:.4f}", f"{a:.4f}", f"{a - b:+.4f}")
    console.print(table)
    times = summary["timings"]
    parts = parts_text(times, "mean_{}_s", "mean_{}_tokens_per_s")
    console.print(  # soft_wrap: one line each, also when piped (no re-wrapping at 80 columns)
        f"mean epoch {times.get('mean_epoch_s', 0):.2f}s: {parts}; "
        f"fit {times['fit_s']:.0f}s, total {times['total_s']:.0f}s; "
        f"MLflow run {summary['mlflow_run_id']}",
        soft_wrap=True,
        highlight=False,
    )
    if "outcome" in summary:
        verdict = Outcome(**summary["outcome"])
        style = {"worse": "bold red", "improved": "green"}.get(verdict.verdict, "yellow")
        console.print(verdict.line(), style=style, soft_wrap=True, highlight=False)
