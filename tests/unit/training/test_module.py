"""PADModule + RolloutDataModule in-process on tiny models: on-policy rollouts, frozen teacher."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from conftest import tiny_model

from pad_lightning.data.tasks import sample_problems
from pad_lightning.lm.generation import SamplingConfig, generate
from pad_lightning.ranking import losses
from pad_lightning.training import datamodule as dm_mod
from pad_lightning.training.datamodule import RolloutConfig, RolloutDataModule
from pad_lightning.training.evaluation import EvalConfig
from pad_lightning.training.module import LossConfig, OptimConfig, PADModule
from pad_lightning.training.rollout import CalibrationConfig


def _checksum(model: torch.nn.Module) -> float:
    return float(sum(p.double().sum() for p in model.parameters()))


def _setup(tok, loss="ppd", calibration="mcq", epochs=3, n=3, rounds=1, reload=1, callbacks=()):
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
        EvalConfig(n, sampling, cal),
        total_steps=epochs * 2,
        inference_dtype="float32",
    )
    problems = sample_problems(["reverse"], "train", 40, 0)
    val = sample_problems(["reverse"], "val", 4, 0)
    dm = RolloutDataModule(
        problems,
        val,
        val,
        RolloutConfig(n=n, prompts_per_epoch=8, batch_size=4, rounds=rounds),
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
        reload_dataloaders_every_n_epochs=reload,
        limit_val_batches=0,
        callbacks=list(callbacks),
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
    from pad_lightning.lm.scoring import score_pairs

    module, dm, trainer = _setup(tok, loss=loss, calibration="none", epochs=1)
    trainer.fit(module, datamodule=dm)
    roll = dm.last_rollout
    batch = module.batch(roll, list(range(4)))
    assert set(batch) == {"input_ids", "attention_mask", "score_mask", "shape", "teacher_scores"}
    module.student.eval()
    module.trainer = None  # call the step outside a loop (self.log becomes a no-op)
    with torch.no_grad():
        loss_value = module.training_step(batch, 0)
    rewards = score_pairs(module.student, roll.student_pairs[:12], tok.pad_token_id).view(4, 3)
    fn = losses.loss_function(loss)
    expected = fn(rewards, roll.teacher_scores[:4]).mean()
    assert float(loss_value) == pytest.approx(float(expected), abs=1e-5)
    if loss == "ppd":
        assert 0 <= float(loss_value) <= 0.6932


def test_rollout_stats_report_identical_groups_and_entropy(tok):
    module, dm, trainer = _setup(tok, epochs=1)
    trainer.fit(module, datamodule=dm)
    assert len(dm.epoch_stats) == 1
    stats = dm.epoch_stats[0]
    assert 0 <= stats["rollout/all_identical_fraction"] <= 1
    assert 1 / 3 <= stats["rollout/distinct_fraction"] <= 1
    assert 0 <= stats["rollout/teacher_ranking_entropy"] <= torch.tensor(6.0).log() + 1e-5
    assert stats["time/generation_s"] > 0 and stats["time/calibration_s"] > 0


def _record_collects(monkeypatch, module):
    seen = []
    real_collect = dm_mod.collect

    def recording_collect(student, *args, **kwargs):
        seen.append((_checksum(student), args[4]))  # weights, n
        return real_collect(student, *args, **kwargs)

    monkeypatch.setattr(dm_mod, "collect", recording_collect)
    return seen


def test_iterative_rounds_sample_after_each_update(tok, monkeypatch):
    # decomposition=iterative, n = 4 as 2 rounds of k = 2: each round samples from new weights
    module, dm, trainer = _setup(tok, epochs=2, n=2, rounds=2)
    seen = _record_collects(monkeypatch, module)
    trainer.fit(module, datamodule=dm)
    assert [k for _, k in seen] == [2, 2, 2, 2]  # 2 epochs x 2 rounds of 2 fresh samples
    assert len({w for w, _ in seen}) == 4
    assert trainer.global_step == 2 * 2 * 2  # 8 prompts / batch 4 = 2 steps per round
    assert len(dm.epoch_stats) == 2  # the last epoch's two rounds


def test_offline_rollout_is_made_once_and_replayed(tok, monkeypatch):
    module, dm, trainer = _setup(tok, epochs=3, reload=0)
    seen = _record_collects(monkeypatch, module)
    trainer.fit(module, datamodule=dm)
    assert len(seen) == 1 and trainer.global_step == 3 * 2
    assert dm.epoch_stats == []  # the replaying epochs made no fresh rollout


def test_combine_rounds():
    rounds = [
        {"time/generation_s": 1.0, "tokens/generation": 100, "rollout/response_length": 4.0},
        {"time/generation_s": 3.0, "tokens/generation": 300, "rollout/response_length": 6.0},
    ]
    out = dm_mod.combine_rounds(rounds)
    assert out["time/generation_s"] == 4.0 and out["tokens/generation"] == 400
    assert out["throughput/generation_tokens_per_s"] == 100.0
    assert out["rollout/response_length"] == 5.0


def test_time_breakdown_per_epoch(tok):
    from pad_lightning.training.callbacks import RolloutLogger, time_line

    logger = RolloutLogger(table_every=0, print_every=0)
    module, dm, trainer = _setup(tok, epochs=2, callbacks=[logger])
    trainer.fit(module, datamodule=dm)
    assert len(logger.history) == 2
    for stats in logger.history:
        for part in ("generation", "teacher_scoring", "calibration", "training"):
            assert stats[f"time/{part}_s"] > 0, part
            assert stats[f"throughput/{part}_tokens_per_s"] > 0, part
        assert stats["time/other_s"] >= 0 and stats["memory/peak_rss_mb"] > 0
    # 8 prompts x 3 responses of the last rollout: every row of every batch counted once
    last = logger.history[-1]
    assert last["tokens/training"] == sum(len(p.ids) for p in dm.last_rollout.student_pairs)
    line = time_line(1, 2, logger.history[-1])
    assert line.startswith("epoch 2/2: generation ") and "tok/s" in line and "peak RSS" in line
    summary = logger.summary()
    assert summary["epochs"] == 2 and summary["mean_epoch_s"] > summary["mean_training_s"] > 0


def test_rounds_cover_the_pool_once_before_repeating(tok):
    _, dm, _ = _setup(tok)  # pool of 40 prompts, 8 per round
    per_round = [[p.prompt for p in dm.round_problems(e)] for e in range(5)]
    first_pass = [p for r in per_round for p in r]
    assert sorted(first_pass) == sorted(p.prompt for p in dm.train_problems)  # 5 x 8 = 40
    nxt = [p.prompt for p in dm.round_problems(5)]
    assert len(set(nxt)) == 8 and nxt != per_round[0]  # a new pass, reshuffled
    assert per_round[1] == [p.prompt for p in dm.round_problems(1)]  # deterministic
    # DDP: two ranks split one round's window without overlap
    a, b = dm.round_problems(0, 0, 2), dm.round_problems(0, 1, 2)
    assert len(a) == len(b) == 8 and not {p.prompt for p in a} & {p.prompt for p in b}


@pytest.mark.parametrize("validate", [False, True])
def test_evaluation_never_changes_the_training_stream(tok, validate):
    """Validating (before the fit and after every epoch) leaves the rollouts and the trained
    weights exactly as without it: evaluation samples from its own seeded stream, and its data
    loaders draw their worker seeds from their own generators, not the global RNG."""
    results = []
    for with_eval in (False, validate):
        module, dm, _ = _setup(tok, epochs=2)
        trainer = L.Trainer(
            max_epochs=2,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            reload_dataloaders_every_n_epochs=1,
            check_val_every_n_epoch=1,
            limit_val_batches=None if with_eval else 0,
            num_sanity_val_steps=0,
        )
        L.seed_everything(0, verbose=False)
        if with_eval:
            before = torch.get_rng_state()
            trainer.validate(module, datamodule=dm, verbose=False)
            assert torch.equal(torch.get_rng_state(), before)
        trainer.fit(module, datamodule=dm)
        results.append((_checksum(module.student), dm.last_rollout.texts))
    assert results[0] == results[1]
