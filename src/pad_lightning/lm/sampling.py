"""Token sampling and the decoding loop the rollouts use.

`torch.multinomial`, which Hugging Face's `generate` samples with, costs many times the softmax
before it at real vocabularies and dominates a rollout on CPU (measured in
`experiments/bench_sampling.py`). `sample_tokens` draws by inverse CDF instead: one uniform per
row, located by binary search among cumulative block masses, then inside one block. That is an
exact draw from the same distribution (up to float32 rounding of the sums: a token's probability
is represented to within about 1e-7 of the row's total mass), and a token of probability 0
(filtered by top-k or top-p) is never drawn.

`decode` is the KV-cached decoding loop around it (prefill, then one token per step), with the
same stopping and padding as `generate`: a row that produced a stop token gets the pad token
afterwards, and the loop ends when every row has stopped or after `max_new_tokens`. Greedy
decoding takes the argmax and gives the same tokens as HF's greedy search. Temperature, top-k,
top-p and the model's `generation_config.suppress_tokens` shape the distribution here; a model
whose `generation_config` asks for another logits processor (`hf_only_settings`: repetition
penalty, minimum length, ...) is sampled by HF's `generate` instead, as `rollout.sampler=hf` does.
"""

from __future__ import annotations

import inspect
from functools import lru_cache

import torch

from pad_lightning.lm.adapters import base_model

SAMPLERS = ("inverse_cdf", "hf")
BLOCK = 256  # tokens per block of the two-level inverse CDF (`sample_tokens`)
HF_ONLY = (  # generation_config settings that add a logits processor `decode` does not have
    "repetition_penalty",
    "encoder_repetition_penalty",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "begin_suppress_tokens",
    "min_length",
    "min_new_tokens",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "exponential_decay_length_penalty",
    "sequence_bias",
    "typical_p",
    "min_p",
    "epsilon_cutoff",
    "eta_cutoff",
    "renormalize_logits",
    "guidance_scale",
    "watermarking_config",
)


def hf_only_settings(generation_config) -> list[str]:
    """The `HF_ONLY` settings `generation_config` changes from transformers' defaults."""
    if generation_config is None:
        return []
    from transformers import GenerationConfig

    default = GenerationConfig()
    return [
        name
        for name in HF_ONLY
        if getattr(generation_config, name, None) != getattr(default, name, None)
    ]


def warp(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Float32 logits divided by `temperature`, then (as HF, in this order) every token outside
    the top `top_k` and outside the smallest top set of mass >= `top_p` set to -inf (0 and 1
    disable those filters; the most probable token is always kept)."""
    logits = logits.float() / temperature
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = logits.sort(dim=-1)  # ascending
        mass = ordered.softmax(-1).cumsum(-1)
        drop = mass <= 1 - top_p
        drop[..., -1] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def _locate(cdf: torch.Tensor, generator: torch.Generator | None):
    """One uniform u per row, scaled to the row's total mass and kept strictly below it, and
    the index of the first cumulative mass above u: (index [rows, 1], u [rows, 1])."""
    total = cdf[:, -1:]
    u = torch.rand(total.shape, generator=generator, device=cdf.device, dtype=cdf.dtype)
    u = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True), u


def sample_tokens(
    logits: torch.Tensor, generator: torch.Generator | None = None, block: int = BLOCK
) -> torch.Tensor:
    """One token id per row of `logits` [rows, V], drawn from softmax(logits) by inverse CDF.

    Above 4 blocks of vocabulary, two levels, so that no cumulative sum runs over the whole
    vocabulary: the mass of each block of `block` consecutive tokens (a plain sum), one uniform
    u per row located among the blocks' cumulative masses, then within the chosen block's own
    cumulative sum. u is kept strictly below the total mass, so that some cumulative mass
    exceeds it (u * total can round up to the total).
    """
    rows, vocab = logits.shape
    probs = logits.float().softmax(-1)
    if vocab <= 4 * block:  # small vocabularies: one level is cheaper
        return _locate(probs.cumsum(-1), generator)[0].squeeze(-1)
    full = vocab // block
    mass = probs[:, : full * block].view(rows, full, block).sum(-1)
    if vocab % block:
        mass = torch.cat([mass, probs[:, full * block :].sum(-1, keepdim=True)], dim=-1)
    cdf = mass.cumsum(-1)
    chosen, u = _locate(cdf, generator)  # [rows, 1]: a block of mass > 0
    before = torch.where(chosen > 0, cdf.gather(-1, (chosen - 1).clamp(min=0)), 0.0)
    index = chosen * block + torch.arange(block, device=logits.device)  # [rows, block]
    inside = probs.gather(-1, index.clamp(max=vocab - 1)) * (index < vocab)
    # the rest of u inside the block (>= 0, so a token of probability 0 is never hit); rounding
    # may put it past the block's total: then the block's last token of probability > 0
    within = torch.searchsorted(inside.cumsum(-1), (u - before).clamp(min=0), right=True)
    last = (inside > 0).long().cumsum(-1).argmax(-1, keepdim=True)
    return (chosen * block + torch.minimum(within, last)).squeeze(-1)


@lru_cache(maxsize=64)
def _forward_takes(forward_cls: type, name: str) -> bool:
    try:
        return name in inspect.signature(forward_cls.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def decode(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    stops: list[int],
    pad: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    suppress: list[int] | None = None,
) -> torch.Tensor:
    """New tokens [rows, steps] after left-padded prompts: sampled (or greedy), pad after a
    row's stop token; `steps` <= `max_new_tokens` (fewer when every row stopped early). Token ids
    in `suppress` are never produced."""
    rows = input_ids.shape[0]
    device = input_ids.device
    inner = base_model(model)
    extra = {"logits_to_keep": 1} if _forward_takes(type(inner), "logits_to_keep") else {}
    # the KV cache argument: `cache` in recent transformers, `past_key_values` before
    cache_arg = "cache" if _forward_takes(type(inner), "cache") else "past_key_values"
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        use_cache=True,
        **extra,
    )
    stop_ids = torch.tensor(stops, device=device)
    suppress_ids = torch.tensor(suppress or [], dtype=torch.long, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    new = torch.full((rows, max_new_tokens), pad, dtype=torch.long, device=device)
    position = positions[:, -1:]
    steps = 0
    for step in range(max_new_tokens):
        logits = out.logits[:, -1]
        if suppress:
            logits = logits.float().index_fill(-1, suppress_ids, float("-inf"))
        if greedy:
            token = logits.argmax(-1)
        else:
            token = sample_tokens(warp(logits, temperature, top_k, top_p), generator)
        token = token.masked_fill(done, pad)
        new[:, step] = token
        done |= torch.isin(token, stop_ids)
        steps = step + 1
        if steps == max_new_tokens or bool(done.all()):
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(rows, 1)], dim=-1)
        position = position + 1
        out = model(
            input_ids=token[:, None],
            attention_mask=attention_mask,
            position_ids=position,
            use_cache=True,
            **{cache_arg: getattr(out, cache_arg)},
        )
    return new[:, :steps]
