"""The vLLM rollout engine (`rollout.sampler=vllm`) against a real vLLM server on loopback: its
samples follow the warped softmax the config asks for (chi-square, as the local sampler is
tested), they stop and cut like local ones, the engine scores and samples from the student's
new weights after a training step (a LoRA student's merged ones too), and a whole run trains
with it. One server serves the module."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from engine_models import SMOKE_ZOO, save_model_folder, scaled_model, start_server, vllm_python
from transformers import AutoModelForCausalLM

from pad_lightning.engines import vllm_rollout
from pad_lightning.lm.chat import encode_prompt
from pad_lightning.lm.generation import SamplingConfig, generate
from pad_lightning.lm.loading import LoraOptions, apply_lora, merged_state_dict
from pad_lightning.lm.sampling import warp
from pad_lightning.zoo.tokenizer import build_char_tokenizer

pytestmark = pytest.mark.slow
PROMPT = "rev abc"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_model_folder(tmp_path_factory.mktemp("engine") / "student", seed=2)


@pytest.fixture(scope="module")
def engine(folder, tmp_path_factory):
    server = start_server(
        folder, "student", tmp_path_factory.mktemp("logs") / "vllm.log", weight_sync=True
    )
    local = AutoModelForCausalLM.from_pretrained(folder)
    options = vllm_rollout.VllmEngineOptions(concurrency=8)
    eng = vllm_rollout.connect(options, server.url, "student", local.generation_config)
    yield eng
    eng.close()
    server.stop()


def chi_square_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's chi-square p-value of `counts` against `probs`; cells expected below 5 draws
    are pooled into one."""
    expected = probs.double() * counts.sum()
    small = (expected < 5) & (probs > 0)
    keep = expected >= 5
    obs = torch.cat([counts[keep].double(), counts[small].double().sum()[None]])
    exp = torch.cat([expected[keep], expected[small].sum()[None]])
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    stat = ((obs - exp) ** 2 / exp).sum()
    return float(torch.special.gammaincc(torch.tensor((len(exp) - 1) / 2.0), stat / 2))


def _first_tokens(engine, ids, rows: int, temperature, top_k, top_p) -> torch.Tensor:
    per = 250
    sampled = engine.served.sample_ids(
        [ids] * (rows // per), per, temperature, top_p, top_k, 1, stops=[]
    )
    return torch.tensor([s[0] for s in sampled])


def _next_token_logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, -1]


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(1.0, 0, 1.0), (0.7, 20, 0.9)])
def test_engine_samples_follow_the_warped_softmax(engine, folder, temperature, top_k, top_p):
    tok = build_char_tokenizer()
    local = AutoModelForCausalLM.from_pretrained(folder).eval()
    engine.sync(local.state_dict())
    ids = encode_prompt(tok, PROMPT)
    probs = warp(_next_token_logits(local, ids)[None], temperature, top_k, top_p).softmax(-1)[0]
    counts = torch.bincount(
        _first_tokens(engine, ids, 20_000, temperature, top_k, top_p), minlength=len(probs)
    )
    assert counts[probs == 0].sum() == 0  # filtered tokens are never drawn
    assert chi_square_p(counts, probs) > 1e-3
    wrong = warp(_next_token_logits(local, ids)[None], temperature * 1.3, 0, 1.0).softmax(-1)[0]
    assert chi_square_p(counts, wrong) < 1e-6  # the test can fail


def test_engine_rollouts_stop_and_cut_like_local_ones(engine, folder):
    """`generate` on the engine: n per prompt, each cut before its first stop token, lengths
    counting the stop token, truncated exactly where no stop came within max_new_tokens."""
    tok = build_char_tokenizer()
    local = AutoModelForCausalLM.from_pretrained(folder).eval()
    engine.sync(local.state_dict())
    prompts = ["rev abc", "sort 3 1 2", "123+456="]
    torch.manual_seed(0)
    config = engine.served.generation_config
    engine.served.generation_config = copy.deepcopy(config)  # stops: EOS and 30 common tokens
    engine.served.generation_config.eos_token_id = [tok.eos_token_id, *range(40, 70)]
    try:
        gens = generate(engine.served, tok, prompts, 4, SamplingConfig(max_new_tokens=5))
    finally:
        engine.served.generation_config = config
    assert [len(t) for t in gens.texts] == [4, 4, 4]
    assert 0 < int(gens.truncated.sum()) < 12  # both kinds of row occur
    for text, length, cut in zip(
        sum(gens.texts, []), gens.lengths.tolist(), gens.truncated.tolist(), strict=True
    ):
        assert "<|end|>" not in text
        assert 1 <= length <= 5
        assert length == 5 if cut else length <= 5  # a row that stopped counts its stop token
    greedy = generate(engine.served, tok, prompts, 1, SamplingConfig(max_new_tokens=5), greedy=True)
    expected = generate(local, tok, prompts, 1, SamplingConfig(max_new_tokens=5), greedy=True)
    assert greedy.texts == expected.texts


def _log_probs(model, sequences) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for ids in sequences:
            logp = model(input_ids=torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
            out.append(logp.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0])
    return torch.cat(out)


def _engine_log_probs(engine, sequences) -> torch.Tensor:
    return torch.tensor(sum((lp[1:] for lp in engine.served.token_log_probs(sequences)), []))


def test_after_a_training_step_the_engine_serves_the_new_weights(engine, folder):
    """Scores and samples come from the weights of the last sync: after SGD steps that teach
    the student one answer, the engine's log-probs are the new model's (not the old one's) and
    its samples follow the new distribution."""
    tok = build_char_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = encode_prompt(tok, PROMPT)
    seqs = [ids + tok("cba", add_special_tokens=False)["input_ids"], encode_prompt(tok, "sort 2 1")]
    engine.sync(model.state_dict(), step=0)
    before = _log_probs(model, seqs)
    torch.testing.assert_close(_engine_log_probs(engine, seqs), before, atol=2e-4, rtol=0)
    target = tok("z", add_special_tokens=False)["input_ids"][0]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(5):
        loss = -model(input_ids=torch.tensor([ids])).logits[0, -1].log_softmax(-1)[target]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert engine.sync(model.state_dict(), step=0) == 0.0  # same step: not sent again
    engine.sync(model.state_dict(), step=1)
    after = _log_probs(model, seqs)
    assert (after - before).abs().max() > 0.1
    torch.testing.assert_close(_engine_log_probs(engine, seqs), after, atol=2e-4, rtol=0)
    probs = _next_token_logits(model, ids).softmax(-1)
    assert probs[target] > 0.5
    counts = torch.bincount(_first_tokens(engine, ids, 5_000, 1.0, 0, 1.0), minlength=len(probs))
    assert chi_square_p(counts, probs) > 1e-3


def test_a_lora_students_merged_weights_are_served(engine, folder):
    tok = build_char_tokenizer()
    base = scaled_model(tok, seed=2)  # the folder's weights
    model = apply_lora(base, LoraOptions(r=4, alpha=8))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # adapters that change the outputs
    model.eval()
    seqs = [encode_prompt(tok, PROMPT) + [5, 6, 7], encode_prompt(tok, "123+456=")]
    engine.sync(merged_state_dict(model))
    expected = _log_probs(model, seqs)
    assert (expected - _log_probs(scaled_model(tok, seed=2), seqs)).abs().max() > 0.1
    torch.testing.assert_close(_engine_log_probs(engine, seqs), expected, atol=2e-4, rtol=0)


def test_a_run_trains_with_the_vllm_engine(tmp_path):
    """rollout.sampler=vllm: the run starts the engine, syncs it before every rollout round,
    prints the before/after table and removes the weight folder."""
    from conftest import subprocess_env

    env = subprocess_env(tmp_path)
    env["PAD_LIGHTNING_VLLM_PYTHON"] = vllm_python()
    out = subprocess.run(
        [sys.executable, "-m", "pad_lightning.run", *SMOKE_ZOO, "rollout.sampler=vllm"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "held-out test metrics" in out.stdout
    (run_dir,) = {p.parent for p in tmp_path.glob("outputs/*/*/summary.json")}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["before"]) == set(summary["after"])
    log = (run_dir / "rollout-vllm.log").read_text()
    assert log.count('"POST /collective_rpc HTTP/1.1" 200') == 3  # smoke: 3 epochs, 3 rounds
    assert log.count('"POST /v1/completions HTTP/1.1" 200') == 3 * 8  # one request per prompt
