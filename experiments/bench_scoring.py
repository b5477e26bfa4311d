"""Teacher reward scoring: scored tokens/s against a plain forward pass, and padding waste.

The toy student samples n responses for held-out prompts; the teacher scores the (prompt,
response) pairs with ``rewards.score_pairs`` (length-sorted token-budget chunks, LM head only
from the first scored position, log-softmax only at scored positions). The reference is a plain
``model(input_ids, attention_mask)`` forward over exactly the same padded chunks, in the same
autocast dtype, measured in the same run. Padding waste = padded / real tokens - 1, for our
length-sorted chunks and for fixed batches in rollout order (what a naive loop does).

`score_pairs` is timed twice: scoring the full sequences (`share_prefix=False`), and with the
n responses of each prompt sharing one pass over the prompt (the default, `prefix.py`).

A second table repeats the measurement with the toy teacher's architecture but a 32k-token
vocabulary (random weights), where the LM head is a large part of the cost, as in real LMs.

A third measures peak memory at a 256k-token vocabulary (token budget --vocab-tokens per pass):
`score_pairs` with the LM head run on chunks of scored positions (`rewards.LOGIT_BUDGET`)
against the same call with chunking off (every pass's [positions, 256k] logits at once), each in
a fresh process (Linux peak resident memory, reset after a warm-up, above the level before).

Run: ``.venv/bin/python experiments/bench_scoring.py [--prompts 256] [--n 8] [overrides]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _setup import median_time, toy_setup

from pad_lightning.lm.chat import encode_pairs, pad_id
from pad_lightning.lm.generation import generate
from pad_lightning.lm.scoring import pad_pairs, score_pairs, token_budget_chunks


@torch.no_grad()
def plain_forward(model, pairs, padding: int, max_tokens: int, dtype) -> None:
    for chunk in token_budget_chunks([len(p.ids) for p in pairs], max_tokens):
        batch = pad_pairs([pairs[i] for i in chunk], padding)
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)


def waste(lengths: list[int], batches: list[list[int]]) -> float:
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return padded / sum(lengths) - 1


def large_vocab_copy(model, vocab: int):
    from transformers import AutoModelForCausalLM

    config = model.config.to_dict()
    config.update(vocab_size=vocab, architectures=None)
    cls = type(model)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cls.config_class.from_dict(config)).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=16384)
    parser.add_argument("--vocab-pairs", type=int, default=256)
    parser.add_argument("--vocab-tokens", type=int, default=4096)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    b = toy_setup(args, args.prompts)
    student, tok_s, teacher, tok_t, sampling = b.student, b.tok_s, b.teacher, b.tok_t, b.sampling
    prompts = [p.prompt for p in b.problems]
    torch.manual_seed(0)
    gens = generate(student, tok_s, prompts, args.n, sampling, autocast_dtype=torch.bfloat16)
    finished = (~gens.truncated).view(len(prompts), args.n).tolist()
    pairs = encode_pairs(tok_t, prompts, gens.texts, finished=finished)
    lengths = [len(p.ids) for p in pairs]
    scored = sum(len(p.ids) - p.prompt_len for p in pairs)
    padding = pad_id(tok_t)
    chunks = token_budget_chunks(lengths, args.max_tokens)
    naive = [list(range(i, min(i + 64, len(pairs)))) for i in range(0, len(pairs), 64)]
    print(
        f"{len(pairs)} pairs ({args.prompts} prompts x n={args.n}), {sum(lengths)} tokens, "
        f"{scored} scored; threads {torch.get_num_threads()}, token budget {args.max_tokens}"
    )
    print(
        f"padding waste: length-sorted budget chunks {waste(lengths, chunks):.1%} "
        f"({len(chunks)} passes), fixed batches of 64 in rollout order {waste(lengths, naive):.1%}"
    )
    models = [("toy teacher", teacher)]
    models.append(("toy teacher, 32k vocab", large_vocab_copy(teacher, 32768)))
    print(
        f"\n{'model':<24} {'dtype':<9} {'plain fwd tok/s':>15} {'full seqs tok/s':>15} "
        f"{'shared prefix tok/s':>19} {'vs plain':>8} {'vs full':>7}"
    )
    for label, model in models:
        for dtype_name, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):
            plain = median_time(
                lambda m=model, d=dtype: plain_forward(m, pairs, padding, args.max_tokens, d),
                args.repeats,
            )
            full = median_time(
                lambda m=model, d=dtype: score_pairs(
                    m, pairs, padding, args.max_tokens, "cpu", d, share_prefix=False
                ),
                args.repeats,
            )
            shared = median_time(
                lambda m=model, d=dtype: score_pairs(m, pairs, padding, args.max_tokens, "cpu", d),
                args.repeats,
            )
            total = sum(lengths)  # tokens/s are of the full (prompt + response) sequences
            print(
                f"{label:<24} {dtype_name:<9} {total / plain:15.0f} {total / full:15.0f} "
                f"{total / shared:19.0f} {plain / shared:7.2f}x {full / shared:6.2f}x",
                flush=True,
            )

    big = large_vocab_copy(teacher, 262144)
    few = pairs[: args.vocab_pairs]
    tokens = sum(len(p.ids) for p in few)
    print(f"\n256k vocabulary: {len(few)} pairs, {tokens} tokens, token budget {args.vocab_tokens}")
    print(f"{'LM head':<34} {'peak MB':>8} {'seconds':>8}")
    results = {}
    for label, budget in (("all scored positions at once", 1 << 62), ("chunked", None)):
        from pad_lightning.lm.scoring import LOGIT_BUDGET

        mb, seconds, out = peak_memory(big, few, padding, args.vocab_tokens, budget or LOGIT_BUDGET)
        results[label] = (mb, out)
        print(f"{label:<34} {mb:8.0f} {seconds:8.2f}", flush=True)
    (full_mb, full), (chunk_mb, chunked) = results.values()
    print(
        f"chunked / full peak memory: {chunk_mb / full_mb:.2f}; largest reward difference "
        f"{float((full - chunked).abs().max()):.1e}"
    )


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _peak_child(queue, model, pairs, padding, max_tokens, budget) -> None:
    from pad_lightning.lm import scoring as rewards

    torch.set_num_threads(2)
    rewards.LOGIT_BUDGET = budget
    score_pairs(model, pairs[:2], padding, max_tokens)  # warm-up (and the head check)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: reset the peak resident set size (VmHWM) to the current one
    before = _status_mb("VmRSS")
    start = time.perf_counter()
    out = score_pairs(model, pairs, padding, max_tokens)
    seconds = time.perf_counter() - start
    queue.put((_status_mb("VmHWM") - before, seconds, out.tolist()))


def peak_memory(model, pairs, padding: int, max_tokens: int, budget: int):
    """(peak MB above the baseline, seconds, rewards) of score_pairs in a fresh process."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_child, args=(queue, model, pairs, padding, max_tokens, budget))
    proc.start()
    mb, seconds, out = queue.get()
    proc.join()
    return mb, seconds, torch.tensor(out)


if __name__ == "__main__":
    main()
