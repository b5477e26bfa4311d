"""Every `loss=` objective in the training loop: batches hold exactly what it declares, its
training-step loss is the baseline function of recomputed inputs, and each trains end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import mlflow
import pytest
import torch
from conftest import subprocess_env, tiny_model

from pad_lightning.data.tasks import sample_problems
from pad_lightning.lm.generation import SamplingConfig
from pad_lightning.lm.scoring import score_pairs
from pad_lightning.ranking import baselines
from pad_lightning.training.datamodule import RolloutConfig, RolloutDataModule
from pad_lightning.training.evaluation import EvalConfig
from pad_lightning.training.module import OptimConfig, PADModule
from pad_lightning.training.objectives import NEEDS, OBJECTIVES, LossConfig
from pad_lightning.training.rollout import CalibrationConfig

BASE_KEYS = {"input_ids", "attention_mask", "score_mask", "shape"}
KEYS_OF_NEED = {
    "teacher_scores": {"teacher_scores"},
    "reference": {"reference_logps"},
    "teacher_tokens": {"teacher_logits"},
    "teacher_samples": {"target_ids", "target_attention_mask", "target_score_mask"},
    "gold": {"target_ids", "target_attention_mask", "target_score_mask"},
}


def _fit(tok, name: str, epochs: int = 1, n: int = 3):
    student, teacher = tiny_model(tok, seed=0), tiny_model(tok, seed=1)
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=6)
    cal = CalibrationConfig(name="mcq", alpha=0.5)
    module = PADModule(
        student,
        teacher,
        tok,
        tok,
        LossConfig(name=name, pairs="all"),
        OptimConfig(lr=1e-2, warmup_steps=0),
        EvalConfig(n, sampling, cal),
        total_steps=epochs * 2,
        inference_dtype="float32",
    )
    problems = sample_problems(["reverse"], "train", 40, 0)
    dm = RolloutDataModule(
        problems,
        problems[:4],
        problems[:4],
        RolloutConfig(n=n, prompts_per_epoch=8, batch_size=4),
        sampling,
        cal,
        seed=0,
    )
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=dm)
    return module, dm


def test_every_need_is_known_and_every_option_has_a_config():
    conf = Path(__file__).resolve().parents[3] / "conf" / "loss"
    for name, objective in OBJECTIVES.items():
        assert objective.needs <= set(NEEDS), name
        assert (conf / f"{name}.yaml").is_file(), name


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_rollout_and_batch_provide_exactly_what_the_objective_needs(tok, name):
    module, dm = _fit(tok, name)
    roll = dm.last_rollout
    needs = OBJECTIVES[name].needs
    # the rollout did the teacher work of its needs, and no other
    assert (roll.teacher_scores is not None) == ("teacher_scores" in needs)
    assert (roll.reference_logps is not None) == ("reference" in needs)
    assert (roll.targets is not None) == bool(needs & {"teacher_samples", "gold"})
    assert ("teacher_generation" in roll.seconds) == ("teacher_samples" in needs)
    batch = module.batch(roll, [0, 1])
    expected = BASE_KEYS.union(*(KEYS_OF_NEED[need] for need in needs))
    assert set(batch) == expected
    assert (module.reference is not None) == ("reference" in needs)


def _recomputed_logps(model, pairs, pad_id, shape):
    """Summed log-probs and lengths of pairs, from the length-normalised rewards."""
    rewards = score_pairs(model, pairs, pad_id)
    lengths = torch.tensor([len(p.ids) - p.prompt_len for p in pairs], dtype=torch.float32)
    return (rewards * lengths).view(shape), lengths.view(shape)


@pytest.mark.parametrize("name", ["dpo", "simpo", "dpo_pl", "lipo", "rrhf", "seqkd", "sft"])
def test_training_step_loss_is_the_baseline_on_recomputed_inputs(tok, name):
    module, dm = _fit(tok, name)
    roll = dm.last_rollout
    batch = module.batch(roll, [0, 1, 2])
    module.student.eval()
    module.trainer = None  # call the step outside a loop (self.log becomes a no-op)
    with torch.no_grad():
        value = float(module.training_step(batch, 0))
    pad = tok.pad_token_id
    logps, lengths = _recomputed_logps(module.student, roll.student_pairs[:9], pad, (3, 3))
    t = roll.teacher_scores[:3] if roll.teacher_scores is not None else None
    if name in ("dpo", "dpo_pl", "lipo"):
        ref, _ = _recomputed_logps(module.reference, roll.student_pairs[:9], pad, (3, 3))
        # the reference is the initial student: its log-probs were recorded by the rollout
        assert torch.allclose(ref, roll.reference_logps[:3], atol=1e-4)
        fn = {"dpo": baselines.dpo, "dpo_pl": baselines.dpo_pl, "lipo": baselines.lipo_lambda}
        kwargs = {"pairs": "all"} if name == "dpo" else {}
        expected = fn[name](logps, ref, t, 0.1, **kwargs)
    elif name == "simpo":
        expected = baselines.simpo(logps / lengths, t, 0.1, 0.0, "all")
    elif name == "rrhf":
        expected = baselines.rrhf(logps / lengths, logps, t, 1.0)
    else:
        m = len(roll.targets) // len(roll.prompts)
        target_logps, target_lengths = _recomputed_logps(
            module.student, roll.targets[: 3 * m], pad, (3, m)
        )
        expected = baselines.sequence_nll(target_logps, target_lengths)
    assert value == pytest.approx(float(expected.mean()), abs=1e-4)


def test_gkd_step_is_the_generalized_jsd_of_both_models_on_the_samples(tok):
    module, dm = _fit(tok, "gkd")
    roll = dm.last_rollout
    batch = module.batch(roll, [0, 1])
    module.student.eval()
    module.trainer = None
    with torch.no_grad():
        value = float(module.training_step(batch, 0))
        logits_s = module.student(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits_t = module.teacher(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = batch["score_mask"][:, 1:]  # position t-1 predicts scored token t
    per_row = baselines.generalized_jsd(logits_s[:, :-1], logits_t[:, :-1], mask, 0.5, 1.0)
    assert value == pytest.approx(float(per_row.view(2, 3).mean(-1).mean()), abs=1e-5)
    assert value > 0  # two different random models


def test_the_reference_model_is_frozen_and_stays_out_of_checkpoints(tok):
    module, _ = _fit(tok, "dpo")
    assert not any(p.requires_grad for p in module.reference.parameters())
    initial = tiny_model(tok, seed=0)
    for (name, p), q in zip(module.reference.named_parameters(), initial.parameters(), strict=True):
        assert torch.equal(p, q), name  # the initial student, untouched by training
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert not any(k.startswith(("reference.", "teacher.")) for k in checkpoint["state_dict"])


REPO = Path(__file__).resolve().parents[3]
BASELINES = ["dpo", "simpo", "dpo_pl", "lipo", "rrhf", "gkd", "seqkd", "sft"]


@pytest.mark.slow
def test_every_baseline_trains_end_to_end_in_one_sweep(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pad_lightning.run",
            "--multirun",
            "experiment=smoke",
            f"loss={','.join(BASELINES)}",
            "trainer.max_epochs=2",
            f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        cwd=tmp_path,
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs(
        [r.experiment_id for r in client.search_experiments()],
        "tags.`mlflow.parentRunId` != ''",
    )
    by_loss = {r.data.params["loss.name"]: r for r in runs}
    assert sorted(by_loss) == sorted(BASELINES)
    for name, run in by_loss.items():
        assert run.info.status == "FINISHED", name
        metrics = run.data.metrics
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert len(history) == 4 and all(torch.isfinite(torch.tensor(h.value)) for h in history)
        assert "test/exact_match" in metrics and "val/loss" in metrics, name
        # the teacher work of each objective, and only that (system/tokens/*)
        needs = OBJECTIVES[name].needs
        assert ("system/tokens/teacher_scoring" in metrics) == ("teacher_scores" in needs), name
        assert ("system/tokens/reference" in metrics) == ("reference" in needs), name
        assert ("system/tokens/teacher_generation" in metrics) == ("teacher_samples" in needs), name
        assert ("system/tokens/teacher_tokens" in metrics) == ("teacher_tokens" in needs), name
    summaries = list((tmp_path / "sweep").glob("*/summary.json"))
    assert len(summaries) == len(BASELINES)
    assert all(json.loads(s.read_text())["after"]["exact_match"] >= 0 for s in summaries)


@pytest.mark.slow
def test_gkd_with_two_tokenizers_stops_at_start_with_one_line(tmp_path):
    from tiny_models import make_tiny_lm

    student = make_tiny_lm(tmp_path / "student", "bytelevel", seed=0)
    teacher = make_tiny_lm(tmp_path / "teacher", "metaspace", seed=1)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pad_lightning.run",
            "model=hf",
            f"model.student.path={student}",
            f"model.teacher.path={teacher}",
            "data=toy",
            "data.train_size=20",
            "loss=gkd",
            f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            f"hydra.run.dir={tmp_path}/run",
        ],
        cwd=tmp_path,
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert proc.returncode != 0
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("config error: loss=gkd: needs one tokenizer"), lines[0]
    assert "loss=seqkd" in lines[0]
