"""Tests for sampling and rollout collection (pad_lightning.training.rollout)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import sharpen, tiny_model

from pad_lightning.lm.chat import encode_pairs
from pad_lightning.lm.generation import SamplingConfig, generate
from pad_lightning.lm.judge import selection_log_probs
from pad_lightning.lm.scoring import score_pairs
from pad_lightning.ranking.selection import mix
from pad_lightning.training.rollout import CalibrationConfig, collect

PROMPTS = ["rev abc", "sort 3 1 2", "123+456="]
LONG_PROMPT = "rev " + "abcdefghij" * 5


def test_generate_shapes_and_flags(tok, model):
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=24, batch_size=256)
    torch.manual_seed(0)
    gens = generate(model, tok, PROMPTS, 8, sampling)
    assert len(gens.texts) == len(PROMPTS)
    assert all(len(group) == 8 for group in gens.texts)
    assert gens.lengths.shape == gens.truncated.shape == (len(PROMPTS) * 8,)
    assert gens.truncated.dtype == torch.bool
    assert (gens.lengths >= 1).all()
    assert (gens.lengths <= sampling.max_new_tokens).all()  # the stop token counts
    # truncated <=> no stop token within max_new_tokens <=> all max_new_tokens used
    torch.testing.assert_close(gens.truncated, gens.lengths == sampling.max_new_tokens)
    assert gens.truncated.any() and (~gens.truncated).any()  # both cases exercised
    texts = [t for group in gens.texts for t in group]
    for text, length, trunc in zip(
        texts, gens.lengths.tolist(), gens.truncated.tolist(), strict=True
    ):
        # one character per token; special tokens are dropped; the stop token is not text
        assert len(text) <= length - (0 if trunc else 1)
        assert "<|end|>" not in text


def test_generate_does_not_change_training_mode(tok, make_model):
    m = make_model(seed=0).train()
    generate(m, tok, PROMPTS[:1], 2, SamplingConfig(max_new_tokens=3))
    assert m.training
    m.eval()
    generate(m, tok, PROMPTS[:1], 2, SamplingConfig(max_new_tokens=3))
    assert not m.training


def test_greedy_deterministic(tok, sharp_model):
    sampling = SamplingConfig(max_new_tokens=10)
    a = generate(sharp_model, tok, PROMPTS, 4, sampling, greedy=True)
    b = generate(sharp_model, tok, PROMPTS, 4, sampling, greedy=True)
    assert all(len(group) == 1 for group in a.texts)  # greedy: one answer per prompt
    assert a.texts == b.texts
    assert all(group[0] for group in a.texts)  # non-empty, so the comparison means something
    assert len({group[0] for group in a.texts}) == len(PROMPTS)


def test_sampling_seeded(tok, model):
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=10)
    runs = {}
    for seed in (0, 1, 0):
        torch.manual_seed(seed)
        runs.setdefault(seed, []).append(generate(model, tok, PROMPTS, 4, sampling).texts)
    assert runs[0][0] == runs[0][1]  # same seed, same samples
    assert runs[0][0] != runs[1][0]  # different seed, different samples
    # samples of one prompt differ from each other at temperature 1
    assert all(len(set(group)) > 1 for group in runs[0][0])


def test_left_padding_does_not_change_greedy_output(tok, sharp_model):
    sampling = SamplingConfig(max_new_tokens=12)
    for prompt in PROMPTS:
        alone = generate(sharp_model, tok, [prompt], 1, sampling, greedy=True)
        batched = generate(sharp_model, tok, [LONG_PROMPT, prompt], 1, sampling, greedy=True)
        assert batched.texts[1] == alone.texts[0], prompt
        torch.testing.assert_close(batched.lengths[1:], alone.lengths)
        torch.testing.assert_close(batched.truncated[1:], alone.truncated)


def test_generate_in_several_calls(tok, sharp_model):
    """A small batch_size splits prompts over several generate calls; results are unchanged."""
    one = generate(sharp_model, tok, PROMPTS, 1, SamplingConfig(max_new_tokens=8), greedy=True)
    split = generate(
        sharp_model, tok, PROMPTS, 1, SamplingConfig(max_new_tokens=8, batch_size=1), greedy=True
    )
    assert split.texts == one.texts
    torch.testing.assert_close(split.lengths, one.lengths)
    sampled = generate(sharp_model, tok, PROMPTS, 3, SamplingConfig(max_new_tokens=4, batch_size=4))
    assert [len(g) for g in sampled.texts] == [3, 3, 3]
    assert sampled.lengths.shape == (9,)


def _check_rollout(roll, tok, teacher, prompts, n):
    assert roll.texts and len(roll.texts) == len(prompts)
    assert all(len(g) == n for g in roll.texts)
    for name in ("teacher_rewards", "teacher_scores", "lengths", "truncated"):
        assert getattr(roll, name).shape == (len(prompts), n), name
    assert len(roll.student_pairs) == len(prompts) * n
    finished = (~roll.truncated).tolist()
    expected = score_pairs(
        teacher, encode_pairs(tok, prompts, roll.texts, finished=finished), tok.pad_token_id
    )
    torch.testing.assert_close(roll.teacher_rewards, expected.view(len(prompts), n))
    assert (roll.teacher_rewards < 0).all()


@pytest.mark.parametrize("debias", [True, False])
def test_collect_mcq(tok, model, teacher, debias):
    prompts, n = PROMPTS[:2], 3
    calibration = CalibrationConfig(name="mcq", alpha=0.8, debias=debias)
    torch.manual_seed(0)
    roll = collect(
        model, tok, teacher, tok, prompts, n, SamplingConfig(max_new_tokens=6), calibration
    )
    _check_rollout(roll, tok, teacher, prompts, n)
    log_p_sel, tokens = selection_log_probs(teacher, tok, prompts, roll.texts, "pairwise", debias)
    torch.testing.assert_close(roll.log_p_sel, log_p_sel)
    assert roll.tokens["calibration"] == tokens
    torch.testing.assert_close(roll.teacher_scores, mix(roll.teacher_rewards, log_p_sel, 0.8))
    assert (roll.log_p_sel <= 0).all()
    assert {"generation", "teacher_scoring", "calibration"} <= set(roll.seconds)


@pytest.mark.parametrize(
    "calibration", [CalibrationConfig(name="none"), CalibrationConfig(name="mcq", alpha=0.0)]
)
def test_collect_without_calibration(tok, model, teacher, calibration):
    """calibration=none, and mcq with alpha = 0 (t = r_T exactly), ask no MCQ at all."""
    prompts, n = PROMPTS, 2
    torch.manual_seed(1)
    roll = collect(
        model,
        tok,
        teacher,
        tok,
        prompts,
        n,
        SamplingConfig(max_new_tokens=6),
        calibration,
    )
    _check_rollout(roll, tok, teacher, prompts, n)
    assert roll.log_p_sel is None
    assert "calibration" not in roll.seconds
    torch.testing.assert_close(roll.teacher_scores, roll.teacher_rewards)
    assert "calibration" not in roll.tokens


# -- what is scored is what was generated; no empty scored span ---------------------------------


def _emitting_only(tok, tokens: list[str], seed: int = 0, sharp: bool = True):
    """A tiny model (sharpened like `sharp_model` for seed 0) whose *generation* can produce only
    `tokens`: the others are suppressed by a logits processor, so scoring sees the model's own
    unchanged distribution (as when a real student degenerates into special tokens its own
    likelihood does not favour)."""
    m = tiny_model(tok, seed=seed)
    if sharp:
        sharpen(m, tok)
    allowed = set(tok.convert_tokens_to_ids(tokens))
    m.generation_config.suppress_tokens = [i for i in range(len(tok)) if i not in allowed]
    return m


def _span_tokens(tok, pair) -> list[str]:
    return tok.convert_ids_to_tokens(pair.ids[pair.prompt_len :])


def test_special_token_only_responses_get_a_real_reward_not_the_best(tok, sharp_model):
    """The bug: a student that emits only `<|assistant|>` tokens, cut at max_new_tokens, decoded
    to "" and scored on an empty span, earned 0.0, the best reward, from teacher and student."""
    teacher = sharpen(tiny_model(tok, seed=1), tok)
    student = _emitting_only(tok, ["<|assistant|>"])
    k, n = 4, 3
    torch.manual_seed(0)
    roll = collect(
        student,
        tok,
        teacher,
        tok,
        PROMPTS,
        n,
        SamplingConfig(max_new_tokens=k),
        CalibrationConfig("none"),
    )
    assert roll.truncated.all()
    assert all(t == "<|assistant|>" * k for group in roll.texts for t in group)
    assert all(_span_tokens(tok, p) == ["<|assistant|>"] * k for p in roll.student_pairs)
    _check_rollout(roll, tok, teacher, PROMPTS, n)
    student_rewards = score_pairs(sharp_model, roll.student_pairs, tok.pad_token_id).view(-1, n)
    for model, rewards in [(teacher, roll.teacher_rewards), (sharp_model, student_rewards)]:
        assert torch.isfinite(rewards).all() and (rewards < 0).all()
        # the model's own greedy answer (non-empty text) scores better than the special tokens
        normal = generate(model, tok, PROMPTS, 1, SamplingConfig(max_new_tokens=k), greedy=True)
        assert all(t[0] for t in normal.texts)
        finished = (~normal.truncated).view(-1, 1).tolist()
        pairs = encode_pairs(tok, PROMPTS, normal.texts, finished=finished)
        normal_rewards = score_pairs(model, pairs, tok.pad_token_id)
        assert (normal_rewards < 0).all()
        assert (rewards < normal_rewards[:, None]).all()


def test_scored_span_is_exactly_the_generated_tokens(tok, teacher):
    """Special tokens stay in rollout texts and are scored; a finished empty answer is scored on
    the end-of-turn marker, a cut one without it; every span is the generated ids."""
    student = _emitting_only(tok, ["<|assistant|>", "<|user|>", "a", "<|end|>"], sharp=False)
    n = 8
    torch.manual_seed(0)
    roll = collect(
        student,
        tok,
        teacher,
        tok,
        PROMPTS,
        n,
        SamplingConfig(temperature=1.0, max_new_tokens=4),
        CalibrationConfig("none"),
    )
    _check_rollout(roll, tok, teacher, PROMPTS, n)
    texts = [t for group in roll.texts for t in group]
    finished = (~roll.truncated).flatten().tolist()
    lengths = roll.lengths.flatten().long().tolist()
    for text, done, length, pair in zip(texts, finished, lengths, roll.student_pairs, strict=True):
        span = pair.ids[pair.prompt_len :]
        assert len(span) == length  # one scored token per generated token, stop token included
        assert tok.decode(span) == text + ("<|end|>" if done else "")
    special_only = {"<|assistant|>", "<|user|>"}
    assert any(t and set(tok.tokenize(t)) <= special_only for t in texts)  # were "" before
    assert any(t == "" and done for t, done in zip(texts, finished, strict=True))  # marker only
    empty = [p for t, p in zip(texts, roll.student_pairs, strict=True) if t == ""]
    assert all(_span_tokens(tok, p) == ["<|end|>"] for p in empty)
    assert any(not done for done in finished)


def test_generate_can_still_strip_special_tokens_for_exports(tok):
    """Answers exported for people and judges (generate.py) drop special tokens, as before."""
    student = _emitting_only(tok, ["<|assistant|>"])
    sampling = SamplingConfig(max_new_tokens=3)
    stripped = generate(student, tok, PROMPTS[:1], 1, sampling, greedy=True)
    kept = generate(student, tok, PROMPTS[:1], 1, sampling, greedy=True, skip_special_tokens=False)
    assert stripped.texts == [[""]]
    assert kept.texts == [["<|assistant|>" * 3]]
    torch.testing.assert_close(stripped.lengths, kept.lengths)


def test_evaluate_teacher_reward_of_a_special_token_student_is_not_the_best(tok):
    from types import SimpleNamespace

    from pad_lightning.training.evaluation import EvalConfig, evaluate

    teacher = sharpen(tiny_model(tok, seed=1), tok)
    from pad_lightning.training.module import OptimConfig, PADModule
    from pad_lightning.training.objectives import LossConfig

    module = PADModule(
        _emitting_only(tok, ["<|assistant|>"]),
        teacher,
        tok,
        tok,
        LossConfig("ppd"),
        OptimConfig(),
        EvalConfig(2, SamplingConfig(max_new_tokens=4), CalibrationConfig("none")),
        total_steps=1,
        inference_dtype="float32",
    )
    problems = [SimpleNamespace(prompt=p) for p in PROMPTS]
    cfg = EvalConfig(2, SamplingConfig(max_new_tokens=4), CalibrationConfig("none"))
    torch.manual_seed(0)
    out = evaluate(module, problems, cfg)
    assert out["answer_truncated"] == 1.0
    assert math.isfinite(out["teacher_reward"]) and out["teacher_reward"] < 0
    assert math.isfinite(out["loss"])


def test_teacher_reuses_the_student_ids_when_the_tokenizers_are_the_same(
    tok, model, teacher, monkeypatch
):
    """A teacher with the student's tokenizer (another object, same content) scores the student's
    encoded pairs as they are; the text path (rendering again) gives the same rewards."""
    import copy

    from pad_lightning.lm import chat
    from pad_lightning.training import rollout

    twin = copy.deepcopy(tok)
    assert chat.same_tokenizer(tok, twin)
    calibration = CalibrationConfig(name="none")
    sampling = SamplingConfig(max_new_tokens=6)
    encoded = []
    real_encode = rollout.encode_pairs
    monkeypatch.setattr(
        rollout, "encode_pairs", lambda *a, **k: encoded.append(a[0]) or real_encode(*a, **k)
    )
    torch.manual_seed(0)
    shared = collect(model, tok, teacher, twin, PROMPTS, 3, sampling, calibration)
    assert encoded == [tok]  # the student's encoding only
    monkeypatch.setattr(rollout, "same_tokenizer", lambda a, b: False)
    torch.manual_seed(0)
    text = collect(model, tok, teacher, twin, PROMPTS, 3, sampling, calibration)
    assert encoded == [tok, tok, twin]  # the text path renders for the teacher again
    assert shared.texts == text.texts
    torch.testing.assert_close(shared.teacher_rewards, text.teacher_rewards, rtol=0, atol=0)
