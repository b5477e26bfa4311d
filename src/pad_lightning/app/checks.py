"""Start-up checks of a run config: every user error becomes one line naming key and valid range."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from pad_lightning.data.prompts import check_data
from pad_lightning.lm.judge import LETTERS
from pad_lightning.lm.sampling import SAMPLERS
from pad_lightning.ranking.baselines import PAIR_CHOICES
from pad_lightning.ranking.losses import DIVERGENCES, max_group_size
from pad_lightning.ranking.plackett_luce import MAX_DP_N
from pad_lightning.ranking.selection import MODES
from pad_lightning.runtime.errors import ConfigError, DataError
from pad_lightning.tracking.mlflow_run import tracking_problem
from pad_lightning.training.objectives import OBJECTIVES

DECOMPOSITIONS = ("none", "split", "iterative")


def responses_per_round(cfg) -> int:
    """Responses sampled per prompt in one rollout round: k for decomposition=iterative, else n."""
    dec = cfg.decomposition
    return dec.group_size if dec.name == "iterative" else cfg.n


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def writable_dir_problem(path: Path) -> str | None:
    """None if `path` can be created (if missing) and a file written in it, else the reason."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            return None
    except OSError as err:
        return err.strerror or type(err).__name__


def _is_number(value, integer: bool = False) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if integer else isinstance(value, int | float)


def number(
    value,
    key: str,
    *,
    integer: bool = False,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    null: bool = False,
    note: str = "",
):
    """Require a number (an integer if `integer`) in [low, high] (open ends as flagged); `null`
    allows None. The message names the key, the value and what is valid."""
    if value is None and null:
        return value
    lo = "" if low is None else f"{'(' if low_open else '['}{low:g}"
    hi = "" if high is None else f"{high:g}{')' if high_open else ']'}"
    if low is not None and high is not None:
        want = f"in {lo}, {hi}"
    elif low is not None:
        want = f"{'>' if low_open else '>='} {low:g}"
    elif high is not None:
        want = f"{'<' if high_open else '<='} {high:g}"
    else:
        want = ""
    what = f"{'an integer' if integer else 'a number'}{' ' + want if want else ''}"
    what += " or null" if null else ""
    ok = _is_number(value, integer)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    _require(ok, f"{key}={value!r}: must be {what}{note}")
    return value


def check(cfg) -> None:
    """Raise ConfigError on the first invalid value of a composed run config."""
    n = cfg.n
    number(n, "n", integer=True, low=2)
    _require(
        cfg.loss.name in OBJECTIVES,
        f"loss.name={cfg.loss.name!r}: unknown loss; valid: {', '.join(OBJECTIVES)}",
    )
    divergence = cfg.loss.get("divergence")
    if cfg.loss.name == "ppd":
        _require(
            divergence in DIVERGENCES,
            f"loss.divergence={divergence!r}: valid: {', '.join(DIVERGENCES)}",
        )
    else:
        _require(
            divergence is None,
            f"loss.divergence={divergence!r}: only loss=ppd has a divergence; "
            f"use loss=ppd or drop the override",
        )
    for key in ("beta_student", "beta_teacher", "beta", "temperature"):
        if key in cfg.loss:
            number(cfg.loss[key], f"loss.{key}", low=0, low_open=True)
    for key in ("gamma", "sft_weight"):
        if key in cfg.loss:
            number(cfg.loss[key], f"loss.{key}", low=0)
    if "jsd_beta" in cfg.loss:
        number(cfg.loss.jsd_beta, "loss.jsd_beta", low=0, high=1)
    if "pairs" in cfg.loss:
        _require(
            cfg.loss.pairs in PAIR_CHOICES,
            f"loss.pairs={cfg.loss.pairs!r}: valid: {', '.join(PAIR_CHOICES)}",
        )

    cal = cfg.calibration
    _require(cal.name in ("none", "mcq"), f"calibration.name={cal.name!r}: valid: none, mcq")
    number(cal.alpha, "calibration.alpha", low=0, high=1)
    _require(cal.mode in MODES, f"calibration.mode={cal.mode!r}: valid: {', '.join(MODES)}")
    _require(isinstance(cal.debias, bool), f"calibration.debias={cal.debias!r}: valid: true, false")
    _require(
        isinstance(cal.template, str)
        and "{question}" in cal.template
        and "{options}" in cal.template,
        "calibration.template: must contain {question} and {options}",
    )
    option = cal.get("option_template", "{letter}) {response}")
    _require(
        isinstance(option, str) and "{letter}" in option and "{response}" in option,
        "calibration.option_template: must contain {letter} and {response} (and may {question})",
    )

    dec = cfg.decomposition
    _require(
        dec.name in DECOMPOSITIONS,
        f"decomposition.name={dec.name!r}: valid: {', '.join(DECOMPOSITIONS)}",
    )
    group = n
    _require(
        dec.name != "split" or OBJECTIVES[cfg.loss.name].ranks,
        f"decomposition=split: ranks groups of k responses, which only loss=ppd|vpd do "
        f"(loss={cfg.loss.name}); use decomposition=none or iterative",
    )
    if dec.name != "none":
        k = dec.group_size
        _require(
            _is_number(k, integer=True) and 2 <= k <= n and n % k == 0,
            f"decomposition.group_size={k!r}: must be an integer in [2, n={n}] dividing n",
        )
        group = k
    limit = max_group_size(cfg.loss.name, divergence)
    if limit is not None and group > limit:
        what = (
            f"enumerates all {group}! rankings"
            if divergence == "jsd"
            else f"runs a 2^{group}-subset dynamic programme"
        )
        ways = []
        if divergence == "jsd":
            ways.append(f"loss.divergence=kl or reverse_kl (exact to n={MAX_DP_N})")
        splits = [k for k in range(2, min(limit, n) + 1) if n % k == 0]
        if splits:
            best = max(splits)
            ways += [
                f"decomposition=split decomposition.group_size={best}",
                f"decomposition=iterative decomposition.group_size={best}",
            ]
        ways.append("loss=vpd")
        _require(
            False,
            f"n={n}: loss=ppd loss.divergence={divergence} {what}, exact only for groups of "
            f"<= {limit}; use {', or '.join(ways)}",
        )
    if cal.name == "mcq" and cal.alpha > 0 and cal.mode == "listwise":
        listed = responses_per_round(cfg)
        _require(
            listed <= len(LETTERS),
            f"calibration.mode=listwise: one question lists all {listed} responses, but there "
            f"are only {len(LETTERS)} option letters; use calibration.mode=pairwise",
        )

    objective = cfg.get("objective")
    if objective is not None:
        part, _, metric = str(objective).partition("/")
        _require(
            part in ("val", "after", "delta") and bool(metric),
            f"objective={objective!r}: valid: null, val/<metric>, after/<metric> or "
            "delta/<metric> (e.g. val/exact_match)",
        )
    number(cfg.trainer.get("num_nodes", 1), "trainer.num_nodes", integer=True, low=1)
    if cfg.get("strategy") is not None:
        _check_strategy(cfg)
    roll = cfg.rollout
    number(roll.temperature, "rollout.temperature", low=0, low_open=True)
    number(roll.top_p, "rollout.top_p", low=0, high=1, low_open=True)
    number(roll.top_k, "rollout.top_k", integer=True, low=0, note=" (0 disables)")
    sampler = roll.get("sampler", SAMPLERS[0])
    _require(sampler in SAMPLERS, f"rollout.sampler={sampler!r}: valid: {', '.join(SAMPLERS)}")
    for key in (
        "max_new_tokens",
        "prompts_per_epoch",
        "batch_size",
        "generation_batch_size",
        "max_tokens",
        "sample_log_prompts",
    ):
        number(roll[key], f"rollout.{key}", integer=True, low=1)
    number(roll.every_n_epochs, "rollout.every_n_epochs", integer=True, low=0, note=" (0 = once)")

    tr = cfg.trainer
    number(tr.max_epochs, "trainer.max_epochs", integer=True, low=1)
    number(
        tr.get("accumulate_grad_batches", 1), "trainer.accumulate_grad_batches", integer=True, low=1
    )
    number(tr.val_every_n_epochs, "trainer.val_every_n_epochs", integer=True, low=1)
    number(tr.checkpoint_every_n_epochs, "trainer.checkpoint_every_n_epochs", integer=True, low=1)
    number(tr.gradient_clip_val, "trainer.gradient_clip_val", low=0, low_open=True, null=True)
    number(tr.num_threads, "trainer.num_threads", integer=True, low=1, null=True)
    _require(
        tr.inference_dtype in ("auto", "bfloat16", "float16", "float32"),
        f"trainer.inference_dtype={tr.inference_dtype!r}: valid: auto, bfloat16, float16, float32",
    )
    opt = tr.optim
    number(opt.lr, "trainer.optim.lr", low=0, low_open=True)
    number(opt.weight_decay, "trainer.optim.weight_decay", low=0)
    number(opt.warmup_steps, "trainer.optim.warmup_steps", integer=True, low=0)
    number(opt.min_lr_ratio, "trainer.optim.min_lr_ratio", low=0, high=1)
    betas = opt.betas
    _require(
        betas is not None and len(betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in betas),
        f"trainer.optim.betas={list(betas) if betas is not None else None!r}: must be two "
        "numbers in [0, 1)",
    )
    for key in ("print_time_every", "log_rollouts_every"):
        number(cfg.logger.get(key, 0), f"logger.{key}", integer=True, low=0, note=" (0 = never)")

    # (output_dir is Hydra's run directory; a config composed outside a Hydra run has none)
    output_dir = OmegaConf.select(cfg, "output_dir", throw_on_resolution_failure=False)
    problem = writable_dir_problem(Path(str(output_dir))) if output_dir else None
    _require(
        problem is None,
        f"output_dir={str(output_dir)!r}: not writable ({problem}); run from a writable "
        "directory or set hydra.run.dir",
    )
    problem = tracking_problem(str(cfg.logger.tracking_uri))
    _require(problem is None, f"logger.tracking_uri={problem}")

    try:
        check_data(cfg.data)
    except DataError as err:
        raise ConfigError(str(err)) from err
    if "zoo" in cfg.model:
        _require(
            "cache_dir" in cfg.model.zoo and "student" in cfg.model.zoo,
            "model.zoo: set (e.g. by experiment=smoke, which shrinks the toy zoo) but this model "
            "config has no toy zoo; use model=toy with that experiment, or drop it",
        )
        cache = Path(os.path.expanduser(str(cfg.model.zoo.cache_dir)))
        _require(
            writable_dir_problem(cache) is None,
            f"model.zoo.cache_dir={str(cache)!r}: not writable; set model.zoo.cache_dir "
            "or PAD_LIGHTNING_CACHE to a writable directory",
        )
        for role in ("student", "teacher"):
            entry = cfg.model[role]
            _require(
                bool(entry.get("path")) or entry.get("zoo") in ("student", "teacher"),
                f"model.{role}.zoo={entry.get('zoo')!r}: valid: student, teacher "
                f"(or set model.{role}.path)",
            )

    from pad_lightning.lm.loading import (
        check_model_config,  # local import: models imports this module
    )

    check_model_config(cfg.model)


def _check_strategy(cfg) -> None:
    from pad_lightning.lm.sharding import DTYPES
    from pad_lightning.training.strategy import STRATEGIES, TEACHER_PLACEMENTS

    st = cfg.strategy
    _require(st.name in STRATEGIES, f"strategy.name={st.name!r}: valid: {', '.join(STRATEGIES)}")
    for key in ("reshard_after_forward", "cpu_offload"):
        value = st.get(key, False)
        _require(isinstance(value, bool), f"strategy.{key}={value!r}: valid: true, false")
    for key in ("param_dtype", "reduce_dtype"):
        value = st.get(key)
        _require(
            value is None or value in DTYPES,
            f"strategy.{key}={value!r}: valid: null, {', '.join(DTYPES)}",
        )
    teacher = st.get("teacher", "replicated")
    _require(
        teacher in TEACHER_PLACEMENTS,
        f"strategy.teacher={teacher!r}: valid: {', '.join(TEACHER_PLACEMENTS)}",
    )
    if st.name != "fsdp":
        return
    _require(
        not (st.cpu_offload and cfg.trainer.accelerator == "cpu"),
        "strategy.cpu_offload=true: offloads GPU shards to host memory; with "
        "trainer.accelerator=cpu they are already there: drop it",
    )
    lora = OmegaConf.select(cfg, "model.student.lora.r", default=None)
    _require(
        not lora,
        "strategy=fsdp: a LoRA student (model.student.lora) is not supported yet; use "
        "strategy=ddp (LoRA students are small enough to replicate)",
    )
