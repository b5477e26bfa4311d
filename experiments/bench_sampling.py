"""Sampling benchmark: the inverse-CDF sampler against HF's (softmax + torch.multinomial).

Three parts, one process, each pair timed back to back (median of --repeats):

1. one sampling step over [rows, V] logits at V = 32k and 256k (and the toy's 104): HF's step
   (`torch.multinomial` over the softmax) against `pad_lightning.lm.sampling.sample_tokens`;
2. a distribution check of both samplers: chi-square goodness of fit of 400k draws from one
   random distribution over 1000 tokens (p-values printed; the inverse-CDF one must pass);
3. a whole rollout (`rollout.generate`, `--rows` sequences of 16 new tokens) of the toy zoo's
   student with its vocabulary padded to 32k, `rollout.sampler=hf` against `inverse_cdf`.

Run: ``.venv/bin/python experiments/bench_sampling.py [--threads 2] [--rows 256]``.
"""

from __future__ import annotations

import argparse

import torch
from _setup import median_time, padded_vocab, run_config

from pad_lightning.lm.sampling import sample_tokens

TARGET = 5.0


def hf_step(logits: torch.Tensor) -> torch.Tensor:
    """What HF's sampling does per step after its warpers: softmax, then multinomial."""
    return torch.multinomial(logits.softmax(-1), num_samples=1).squeeze(1)


def chi_square_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs.double() * counts.sum()
    stat = ((counts.double() - expected) ** 2 / expected).sum()
    return float(torch.special.gammaincc(torch.tensor((len(probs) - 1) / 2.0), stat / 2))


def padded_student(vocab: int):
    from transformers import AutoModelForCausalLM

    from pad_lightning.app.models import zoo_config
    from pad_lightning.zoo.builder import ensure_zoo
    from pad_lightning.zoo.tokenizer import build_char_tokenizer

    root = ensure_zoo(zoo_config(run_config([]).model.zoo))
    model = AutoModelForCausalLM.from_pretrained(root / "student").eval()
    model = padded_vocab(model, vocab, seed=0)
    tok = build_char_tokenizer()
    return model, tok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{args.threads} threads, {args.rows} rows, median of {args.repeats}")

    print("\n1. one sampling step")
    print(f"{'vocab':>8} {'HF (s)':>9} {'ours (s)':>9} {'speed-up':>9}")
    ratios = {}
    for vocab in (104, 32768, 262144):
        logits = torch.randn(args.rows, vocab) * 2
        hf = median_time(lambda logits=logits: hf_step(logits), args.repeats)
        ours = median_time(lambda logits=logits: sample_tokens(logits), args.repeats)
        ratios[vocab] = hf / ours
        print(f"{vocab:>8} {hf:>9.4f} {ours:>9.4f} {hf / ours:>8.1f}x")

    print("\n2. distribution (400k draws over 1000 tokens, chi-square goodness of fit)")
    logits = torch.randn(1000) * 2
    probs = logits.softmax(-1)
    gen = torch.Generator().manual_seed(0)
    ours = sample_tokens(logits.expand(400_000, -1), gen)
    gen = torch.Generator().manual_seed(0)
    hf = torch.multinomial(probs.expand(400_000, -1), 1, generator=gen).squeeze(-1)
    p_ours = chi_square_p(torch.bincount(ours, minlength=1000), probs)
    p_hf = chi_square_p(torch.bincount(hf, minlength=1000), probs)
    passed = p_ours > 1e-3
    print(
        f"p-value: inverse CDF {p_ours:.3f}, torch.multinomial {p_hf:.3f} "
        f"({'PASS' if passed else 'FAIL'}: p > 0.001)"
    )

    print(f"\n3. a rollout: toy student, vocabulary padded to 32768, {args.rows} sequences x 16")
    from pad_lightning.data.tasks import sample_problems
    from pad_lightning.lm.generation import SamplingConfig, generate

    model, tok = padded_student(32768)
    n = 4
    prompts = [p.prompt for p in sample_problems(["reverse"], "val", args.rows // n, seed=0)]
    seconds = {}
    for sampler in ("hf", "inverse_cdf"):
        cfg = SamplingConfig(max_new_tokens=16, batch_size=args.rows, sampler=sampler)
        seconds[sampler] = median_time(
            lambda cfg=cfg: generate(model, tok, prompts, n, cfg), max(1, args.repeats // 2)
        )
    rollout = seconds["hf"] / seconds["inverse_cdf"]
    print(
        f"HF generate {seconds['hf']:.3f} s, inverse CDF {seconds['inverse_cdf']:.3f} s: "
        f"{rollout:.1f}x"
    )

    print(
        "\nsummary: sampling step speed-up "
        + ", ".join(f"{v}: {r:.1f}x" for v, r in ratios.items())
        + f"; rollout at 32k {rollout:.1f}x; distribution test {'PASS' if passed else 'FAIL'}"
    )
    big = min(ratios[32768], ratios[262144])
    print(f"target >= {TARGET:.0f}x at 32k and 256k: {'met' if big >= TARGET else 'NOT met'}")


if __name__ == "__main__":
    main()
