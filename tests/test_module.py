"""PADModule + RolloutDataModule in-process on tiny models: on-policy rollouts, frozen teacher."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from conftest import tiny_model

from pad_lightning import datamodule as dm_mod
from pad_lightning.datamodule import RolloutConfig, RolloutDataModule
from pad_lightning.evaluation import EvalConfig
from pad_lightning.module import LossConfig, OptimConfig, PADModule
from pad_lightning.rollout import CalibrationConfig, SamplingConfig, generate
from pad_lightning.toy.tasks import sample_problems


def _checksum(model: torch.nn.Module) -> float:
    return float(sum(p.double().sum() for p in model.parameters()))


def _setup(tok, loss="ppd", calibration="mcq", epochs=3):
    student, teacher = tiny_model(tok, seed=0), tiny_model(tok, seed=1)
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=6)
    cal = CalibrationConfig(name=calibration, alpha=0.5)
    module = PADModule(
        student,
        teacher,
        tok,
        tok,
        LossConfig(name=loss),
        OptimConfig(lr=1e-2, warmup_steps=0),
        EvalConfig(3, sampling, cal),
        total_steps=epochs * 2,
        inference_dtype="float32",
    )
    problems = sample_problems(["reverse"], "train", 40, 0)
    val = sample_problems(["reverse"], "val", 4, 0)
    dm = RolloutDataModule(
        problems,
        val,
        val,
        RolloutConfig(n=3, prompts_per_epoch=8, batch_size=4),
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
        reload_dataloaders_every_n_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    return module, dm, trainer


def test_rollouts_come_from_the_current_weights(tok, monkeypatch):
    module, dm, trainer = _setup(tok)
    seen = []
    real_collect = dm_mod.collect

    def recording_collect(student, *args, **kwargs):
        assert student is module.student
        seen.append(_checksum(student))
        return real_collect(student, *args, **kwargs)

    monkeypatch.setattr(dm_mod, "collect", recording_collect)
    initial = copy.deepcopy(module.student)
    torch.manual_seed(0)
    before = generate(initial, tok, ["rev abcd", "rev ghij"], 4, SamplingConfig(1.0))
    trainer.fit(module, datamodule=dm)

    assert len(seen) == 3  # one rollout per epoch
    assert len(set(seen)) == 3  # each from different (updated) weights
    assert seen[0] == pytest.approx(_checksum(initial))
    # the same sampling seed gives different samples once the optimizer has moved the weights
    torch.manual_seed(0)
    after = generate(module.student, tok, ["rev abcd", "rev ghij"], 4, SamplingConfig(1.0))
    assert after.texts != before.texts


def test_teacher_is_frozen_and_outside_optimizer_and_checkpoint(tok, tmp_path):
    module, dm, trainer = _setup(tok, epochs=2)
    teacher_before = copy.deepcopy(module.teacher.state_dict())
    trainer.fit(module, datamodule=dm)
    for name, value in module.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[name]), name
    assert not any(p.requires_grad for p in module.teacher.parameters())
    assert not module.teacher.training
    optimizer_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert optimizer_params == {id(p) for p in module.student.parameters()}
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    state = torch.load(tmp_path / "x.ckpt", weights_only=False)["state_dict"]
    assert state and all(k.startswith("student.") for k in state)


def test_checkpoint_without_student_weights_is_refused(tok):
    module, _, _ = _setup(tok)
    with pytest.raises(ValueError, match="student weights"):
        module.on_load_checkpoint({"state_dict": {}})


@pytest.mark.parametrize("loss", ["ppd", "vpd"])
def test_training_step_loss_matches_the_loss_of_recomputed_rewards(tok, loss):
    from pad_lightning.rewards import score_pairs

    module, dm, trainer = _setup(tok, loss=loss, calibration="none", epochs=1)
    trainer.fit(module, datamodule=dm)
    roll = dm.last_rollout
    batch = dm_mod.collate(
        [(roll.student_pairs[i * 3 : (i + 1) * 3], roll.teacher_scores[i]) for i in range(4)],
        tok.pad_token_id,
    )
    module.student.eval()
    module.trainer = None  # call the step outside a loop (self.log becomes a no-op)
    with torch.no_grad():
        loss_value = module.training_step(batch, 0)
    rewards = score_pairs(module.student, roll.student_pairs[:12], tok.pad_token_id).view(4, 3)
    expected = module.loss_from_scores(rewards, roll.teacher_scores[:4]).mean()
    assert float(loss_value) == pytest.approx(float(expected), abs=1e-5)
    if loss == "ppd":
        assert 0 <= float(loss_value) <= 0.6932


def test_rollout_stats_report_identical_groups_and_entropy(tok):
    module, dm, trainer = _setup(tok, epochs=1)
    trainer.fit(module, datamodule=dm)
    stats = dm.last_stats
    assert 0 <= stats["rollout/all_identical_fraction"] <= 1
    assert 1 / 3 <= stats["rollout/distinct_fraction"] <= 1
    assert 0 <= stats["rollout/teacher_ranking_entropy"] <= torch.tensor(6.0).log() + 1e-5
    assert stats["time/generation_s"] > 0 and stats["time/calibration_s"] > 0
