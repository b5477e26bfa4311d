"""Start-up checks of a run config: every user error becomes one line naming key and valid range."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .calibration import LETTERS, MODES
from .losses import DIVERGENCES, LOSSES, max_group_size
from .preference import MAX_DP_N
from .prompts import DataError, check_data

DECOMPOSITIONS = ("none", "split", "iterative")


class ConfigError(ValueError):
    """A bad config value; the message is one line and names the key."""


def responses_per_round(cfg) -> int:
    """Responses sampled per prompt in one rollout round: k for decomposition=iterative, else n."""
    dec = cfg.decomposition
    return dec.group_size if dec.name == "iterative" else cfg.n


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _writable_dir(path: Path) -> bool:
    """True if `path` can be created (if missing) and a file written in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            return True
    except OSError:
        return False


def check(cfg) -> None:
    """Raise ConfigError on the first invalid value of a composed run config."""
    n = cfg.n
    _require(isinstance(n, int) and n >= 2, f"n={n!r}: must be an integer >= 2")
    _require(
        cfg.loss.name in LOSSES,
        f"loss.name={cfg.loss.name!r}: unknown loss; valid: {sorted(LOSSES)}",
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
    for key in ("beta_student", "beta_teacher"):
        beta = cfg.loss[key]
        _require(isinstance(beta, int | float) and beta > 0, f"loss.{key}={beta!r}: must be > 0")

    cal = cfg.calibration
    _require(cal.name in ("none", "mcq"), f"calibration.name={cal.name!r}: valid: none, mcq")
    _require(
        isinstance(cal.alpha, int | float) and 0 <= cal.alpha <= 1,
        f"calibration.alpha={cal.alpha!r}: must be in [0, 1]",
    )
    _require(cal.mode in MODES, f"calibration.mode={cal.mode!r}: valid: {', '.join(MODES)}")
    _require(isinstance(cal.debias, bool), f"calibration.debias={cal.debias!r}: valid: true, false")
    _require(
        "{question}" in cal.template and "{options}" in cal.template,
        "calibration.template: must contain {question} and {options}",
    )

    dec = cfg.decomposition
    _require(
        dec.name in DECOMPOSITIONS,
        f"decomposition.name={dec.name!r}: valid: {', '.join(DECOMPOSITIONS)}",
    )
    group = n
    if dec.name != "none":
        k = dec.group_size
        _require(
            isinstance(k, int) and 2 <= k <= n and n % k == 0,
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

    roll = cfg.rollout
    _require(roll.temperature > 0, f"rollout.temperature={roll.temperature!r}: must be > 0")
    _require(0 < roll.top_p <= 1, f"rollout.top_p={roll.top_p!r}: must be in (0, 1]")
    _require(roll.top_k >= 0, f"rollout.top_k={roll.top_k!r}: must be >= 0 (0 disables)")
    for key in (
        "max_new_tokens",
        "prompts_per_epoch",
        "batch_size",
        "generation_batch_size",
        "max_tokens",
    ):
        _require(int(roll[key]) >= 1, f"rollout.{key}={roll[key]!r}: must be >= 1")
    _require(
        roll.every_n_epochs >= 0,
        f"rollout.every_n_epochs={roll.every_n_epochs!r}: must be >= 0 (0 = once)",
    )

    _require(
        cfg.trainer.max_epochs >= 1, f"trainer.max_epochs={cfg.trainer.max_epochs!r}: must be >= 1"
    )
    accumulate = cfg.trainer.get("accumulate_grad_batches", 1)
    _require(
        isinstance(accumulate, int) and not isinstance(accumulate, bool) and accumulate >= 1,
        f"trainer.accumulate_grad_batches={accumulate!r}: must be an integer >= 1",
    )
    _require(
        cfg.trainer.inference_dtype in ("bfloat16", "float16", "float32"),
        f"trainer.inference_dtype={cfg.trainer.inference_dtype!r}: valid: bfloat16, "
        "float16, float32",
    )
    _require(cfg.trainer.optim.lr > 0, f"trainer.optim.lr={cfg.trainer.optim.lr!r}: must be > 0")

    try:
        check_data(cfg.data)
    except DataError as err:
        raise ConfigError(str(err)) from err
    if "zoo" in cfg.model:
        cache = Path(os.path.expanduser(str(cfg.model.zoo.cache_dir)))
        _require(
            _writable_dir(cache),
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

    from .models import check_model_config  # local import: models imports this module

    check_model_config(cfg.model)
