"""The toy zoo builder: HF folders, determinism, reuse from the cache, training signal."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pad_lightning.toy.zoo import ModelSpec, ZooConfig, ensure_zoo

TEACHER = ModelSpec(
    hidden_size=32,
    num_layers=1,
    num_heads=2,
    intermediate_size=64,
    max_steps=40,
    batch_size=16,
    eval_every=20,
    target_accuracy=1.0,
    judge_steps=10,
)
STUDENT = ModelSpec(
    hidden_size=16,
    num_layers=1,
    num_heads=2,
    intermediate_size=32,
    max_steps=10,
    batch_size=16,
    eval_every=5,
    target_accuracy=1.0,
)


def _cfg(cache) -> ZooConfig:
    return ZooConfig(cache_dir=str(cache), eval_size=16, teacher=TEACHER, student=STUDENT)


def test_zoo_builds_hf_folders_deterministically_and_reuses_them(tmp_path):
    root = ensure_zoo(_cfg(tmp_path / "a"))
    card = json.loads((root / "card.json").read_text())
    assert card["models"]["teacher"]["steps"] == 40
    assert card["models"]["teacher"]["judge_steps"] == 10
    assert 0 <= card["models"]["teacher"]["judge_accuracy"] <= 1
    assert card["models"]["student"]["params"] < card["models"]["teacher"]["params"]
    for role in ("teacher", "student"):
        assert (root / role / "model.safetensors").exists()
        tokenizer = AutoTokenizer.from_pretrained(root / role)
        assert tokenizer.chat_template and tokenizer.eos_token == "<|end|>"
        model = AutoModelForCausalLM.from_pretrained(root / role)
        assert model.generation_config.eos_token_id == tokenizer.eos_token_id

    mtime = (root / "teacher" / "model.safetensors").stat().st_mtime_ns
    assert ensure_zoo(_cfg(tmp_path / "a")) == root  # cached: not rebuilt
    assert (root / "teacher" / "model.safetensors").stat().st_mtime_ns == mtime

    other = ensure_zoo(_cfg(tmp_path / "b"))  # same config elsewhere: identical weights
    a = AutoModelForCausalLM.from_pretrained(root / "teacher").state_dict()
    b = AutoModelForCausalLM.from_pretrained(other / "teacher").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_zoo_key_changes_with_anything_that_shapes_the_models(tmp_path):
    base = _cfg(tmp_path)
    assert base.key() == _cfg(tmp_path / "elsewhere").key()  # the cache dir is not part of it
    changed = _cfg(tmp_path)
    changed.student = ModelSpec(**{**STUDENT.__dict__, "max_steps": 11})
    assert changed.key() != base.key()
    assert ZooConfig(cache_dir=str(tmp_path), tasks=["add"]).key().startswith("add-")


def test_sft_learns_the_task(tmp_path):
    """A little SFT must beat the untrained model's validation quality."""
    from pad_lightning.toy.tasks import sample_problems
    from pad_lightning.toy.tokenizer import build_char_tokenizer
    from pad_lightning.toy.zoo import answer_accuracy, build_model, train_model

    cfg = _cfg(tmp_path)
    spec = ModelSpec(
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        intermediate_size=128,
        max_steps=120,
        batch_size=32,
        eval_every=60,
        target_accuracy=1.0,
    )
    tok = build_char_tokenizer()
    val = sample_problems(cfg.tasks, "val", 64, 0)
    untrained = answer_accuracy(build_model(spec, tok, 0), tok, val)["quality"]
    model, info = train_model(cfg, spec, tok, "student")
    trained = answer_accuracy(model, tok, val)["quality"]
    assert info["steps"] == 120
    assert trained > untrained + 0.2
