"""strategy=fsdp on two CPU processes (gloo): the same training as DDP and as one process, each
rank storing half of the student, exact resume from a sharded checkpoint, and a consolidated
student folder that reloads with the trained weights.

Every run here is 5 optimizer steps of the micro zoo (1 step per epoch: 4 prompts per rank,
batches of 4). Tolerance: fp32 throughout; DDP all-reduces gradients and FSDP reduce-scatters
them, and one process averages over its batch instead: the same numbers summed in another
order (float32 rounding, ~1e-7 relative). `RTOL` = 1e-5 is 100x the largest difference
measured (printed with -s: FSDP vs DDP 0, identical; 2 ranks vs 1 process 1.0e-07) and at
least 10x below the step-to-step changes of the loss (asserted), so one step trained on other
data or weights would fail it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import subprocess_env

pytestmark = pytest.mark.slow
RTOL = 1e-5
STEPS = [
    "experiment=smoke",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=5",
    "rollout.prompts_per_epoch=4",
    "rollout.batch_size=4",
    "trainer.val_every_n_epochs=10",
    "logger.log_rollouts_every=2",
]


def _launch(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m pad_lightning.run <args>` in `root`, offline, with its caches in `root`."""
    return subprocess.run(
        [sys.executable, "-m", "pad_lightning.run", *args],
        cwd=root,
        env={**subprocess_env(root), **(env or {})},
        capture_output=True,
        text=True,
        timeout=900,
    )


def _run(root: Path, name: str, *overrides: str, env: dict | None = None, check: bool = True):
    proc = _launch(
        root,
        *STEPS,
        f"logger.tracking_uri=sqlite:///{root}/mlflow.db",
        f"logger.experiment_name={name}",
        f"hydra.run.dir={root}/{name}",
        *overrides,
        env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def _history(root: Path, name: str, metric: str = "train/loss") -> list[float]:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    points = sorted(client.get_metric_history(run.info.run_id, metric), key=lambda m: m.step)
    return [m.value for m in points]


def _run_info(root: Path, name: str):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    return run


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("fsdp")


@pytest.fixture(scope="module")
def ppd(root):
    """PPD with DDP and with FSDP on 2 processes (the same prompts and samples per rank)."""
    _run(root, "ddp", "trainer.devices=2", "strategy=ddp")
    _run(root, "fsdp", "trainer.devices=2", "strategy=fsdp")
    return root


def _close(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b) == 5
    diff = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b, strict=True))
    assert diff <= RTOL, (a, b)
    return diff


def _moves(curve: list[float]) -> None:
    """The loss changes by more than 10 x RTOL between steps: equality is not vacuous."""
    scale = max(abs(v) for v in curve)
    assert min(abs(a - b) for a, b in zip(curve, curve[1:], strict=False)) > 10 * RTOL * scale, (
        curve
    )


def test_fsdp_gives_the_ddp_loss_curve(ppd):
    ddp, fsdp = _history(ppd, "ddp"), _history(ppd, "fsdp")
    print(f"PPD 5 steps, FSDP vs DDP: max relative difference {_close(ddp, fsdp):.2e}")
    _moves(ddp)


def test_fsdp_and_ddp_give_the_one_process_curve(root):
    """A rank's samples depend on its random stream, so PPD on 2 ranks cannot equal 1 process;
    SFT's loss depends only on prompts and weights: 2 ranks x 4 prompts must equal 1 x 8."""
    one = ["loss=sft", "rollout.prompts_per_epoch=8", "rollout.batch_size=8"]
    _run(root, "sft-one", "trainer.devices=1", *one)
    _run(root, "sft-ddp", "trainer.devices=2", "strategy=ddp", "loss=sft")
    _run(root, "sft-fsdp", "trainer.devices=2", "strategy=fsdp", "loss=sft")
    single = _history(root, "sft-one")
    for name in ("sft-ddp", "sft-fsdp"):
        print(f"SFT 5 steps, {name} vs 1 process: {_close(single, _history(root, name)):.2e}")
    _moves(single)


def test_each_rank_stores_half_of_the_student_and_memory_is_logged(ppd):
    run = _run_info(ppd, "fsdp")
    total = int(run.data.params["model.student_parameters"])
    ranks = [int(run.data.params[f"sharding.student_params_rank{r}"]) for r in (0, 1)]
    assert sum(ranks) == total
    assert all(abs(n - total / 2) <= 0.05 * total for n in ranks), ranks
    teacher = [int(run.data.params[f"sharding.teacher_params_rank{r}"]) for r in (0, 1)]
    assert (
        teacher[0] == teacher[1] == int(run.data.params["model.teacher_parameters"])
    )  # replicated
    for r in (0, 1):
        assert run.data.metrics[f"system/memory/peak_rss_mb/rank{r}"] > 100
    assert run.data.metrics["system/run/fit_s"] > 0
    assert run.info.status == "FINISHED"


def test_sharded_teacher_stores_half_of_the_teacher(root):
    _run(
        root,
        "fsdp-teacher",
        "trainer.devices=2",
        "strategy=fsdp",
        "strategy.teacher=sharded",
        "trainer.max_epochs=2",
    )
    run = _run_info(root, "fsdp-teacher")
    total = int(run.data.params["model.teacher_parameters"])
    teacher = [int(run.data.params[f"sharding.teacher_params_rank{r}"]) for r in (0, 1)]
    assert sum(teacher) == total and max(teacher) < 0.55 * total


def test_resume_from_a_sharded_checkpoint_continues_the_same_curve(ppd):
    """Killed (SIGKILL on both ranks) at the 4th step: resumed from the epoch-3 checkpoint (a
    directory of per-rank shards), the run ends with the uninterrupted run's curve."""
    name = "fsdp-crash"
    crashed = _run(
        ppd,
        name,
        "trainer.devices=2",
        "strategy=fsdp",
        env={"PAD_LIGHTNING_FAULT": "step:4"},
        check=False,
    )
    assert crashed.returncode != 0
    last = ppd / name / "checkpoints" / "last.ckpt"
    assert last.is_dir() and (last / ".metadata").is_file()
    assert sorted(p.name for p in last.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    resumed = _launch(ppd, f"resume={ppd / name}")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    diff = _close(_history(ppd, "fsdp"), _history(ppd, name))
    print(f"resumed vs uninterrupted FSDP: {diff:.2e}")
    assert _run_info(ppd, name).info.status == "FINISHED"


def test_consolidated_student_reloads_with_the_checkpointed_weights(ppd):
    """The saved HF folder holds the trained student: its logits equal those of the final
    sharded checkpoint's weights, read back in one process without a process group."""
    from torch.distributed.checkpoint import load
    from transformers import AutoModelForCausalLM

    folder = ppd / "fsdp" / "student"
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    saved = AutoModelForCausalLM.from_pretrained(folder).eval()
    fresh = AutoModelForCausalLM.from_pretrained(folder).eval()
    state = {
        "state_dict": {f"student.{k}": torch.zeros_like(v) for k, v in fresh.state_dict().items()}
    }
    tied = (
        {k for k in state["state_dict"] if k.endswith("lm_head.weight")}
        if (fresh.config.tie_word_embeddings)
        else set()
    )
    for key in tied:
        del state["state_dict"][key]
    load(state, checkpoint_id=ppd / "fsdp" / "checkpoints" / "last.ckpt", no_dist=True)
    fresh.load_state_dict(
        {k[len("student.") :]: v for k, v in state["state_dict"].items()}, strict=not tied
    )
    ids = torch.randint(
        3, fresh.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        a, b = saved(input_ids=ids).logits, fresh(input_ids=ids).logits
    assert torch.equal(a, b)


def test_the_issue_multirun_line(root):
    """`strategy=ddp,fsdp strategy.reshard_after_forward=true,false`: four jobs, all FINISHED,
    nested under one parent, each with its wall time and per-rank peak memory."""
    sweep = root / "sweep"
    proc = _launch(
        root,
        "--multirun",
        "experiment=smoke",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "strategy=ddp,fsdp",
        "strategy.reshard_after_forward=true,false",
        "trainer.max_epochs=2",
        f"logger.tracking_uri=sqlite:///{root}/mlflow.db",
        "logger.experiment_name=sweep",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert all(r.info.status == "FINISHED" for r in runs)
    combos = {
        (r.data.params["strategy.name"], r.data.params["strategy.reshard_after_forward"])
        for r in children
    }
    assert combos == {(s, b) for s in ("ddp", "fsdp") for b in ("True", "False")}
    for r in children:
        assert r.data.metrics["system/run/fit_s"] > 0
        assert all(r.data.metrics[f"system/memory/peak_rss_mb/rank{k}"] > 100 for k in (0, 1))
