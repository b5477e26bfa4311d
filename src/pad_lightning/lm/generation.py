"""Generation from a causal LM: n sampled (or greedy) responses per prompt, with the inverse-CDF
sampler of `lm.sampling` (KV-cached decoding) by default, or HF `generate`."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from pad_lightning.engines.served import ServedLM
from pad_lightning.lm.chat import encode_prompt, pad_id, padded
from pad_lightning.lm.precision import autocast
from pad_lightning.lm.sampling import decode, hf_only_settings


@dataclass
class SamplingConfig:
    """Sampling knobs; top_k=0 and top_p=1 disable those filters explicitly."""

    temperature: float = 0.8
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 16
    batch_size: int = 256
    sampler: str = "inverse_cdf"  # or "hf": transformers' generate (see pad_lightning.sampling)


@dataclass
class Generations:
    """`texts[i][j]`: j-th response to prompt i; `lengths` in generated tokens; truncated flags."""

    texts: list[list[str]]
    lengths: torch.Tensor
    truncated: torch.Tensor


def stop_token_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = model.generation_config.eos_token_id if model.generation_config else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _hf_kwargs(sampling: SamplingConfig, stops: list[int], pad: int, greedy: bool, n: int):
    """transformers' `generate` arguments for rollout.sampler=hf (and the HF-only fallback)."""
    kwargs = dict(
        max_new_tokens=sampling.max_new_tokens, eos_token_id=stops, pad_token_id=pad, use_cache=True
    )
    if greedy:
        kwargs.update(
            do_sample=False, num_return_sequences=1, temperature=None, top_p=None, top_k=None
        )
    else:
        kwargs.update(
            do_sample=True,
            num_return_sequences=n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
        )
    return kwargs


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list,
    n: int,
    sampling: SamplingConfig,
    greedy: bool = False,
    autocast_dtype: torch.dtype | None = None,
    skip_special_tokens: bool = True,
) -> Generations:
    """n samples (or one greedy answer) per prompt, prompts rendered in the model's template.

    Each text is the decoded generated tokens up to (not including) the first stop token.
    `skip_special_tokens=True` (answers for people and judges) drops the special tokens the model
    produced; rollouts and evaluation pass False, so that what is scored is what was generated:
    a special token stays in the text, re-encodes to itself and is scored (dropping it could
    leave an empty text, which would earn the best reward). Padding never appears in a text:
    rows are cut at their first stop token, and generation pads a row only after one.
    """
    if isinstance(model, ServedLM):
        return _served(
            model, tokenizer, prompts, 1 if greedy else n, sampling, greedy, skip_special_tokens
        )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    stops = stop_token_ids(model, tokenizer)
    padding = pad_id(tokenizer)
    per_call = max(1, sampling.batch_size // (1 if greedy else n))
    own_sampler = sampling.sampler != "hf"
    hf_only = hf_only_settings(getattr(model, "generation_config", None)) if own_sampler else []
    if hf_only:
        warnings.warn(
            f"rollout.sampler={sampling.sampler}: the model's generation_config sets "
            f"{', '.join(hf_only)}, which only transformers' generate applies; sampling with it",
            stacklevel=2,
        )
        own_sampler = False
    texts: list[list[str]] = []
    lengths, truncated = [], []
    for start in range(0, len(prompts), per_call):
        encoded = [encode_prompt(tokenizer, p) for p in prompts[start : start + per_call]]
        # left padding: generation continues every row's end
        ids, attn = padded(encoded, padding, left=True)
        k = 1 if greedy else n
        with autocast(device, autocast_dtype):
            if own_sampler:  # each prompt's k rows side by side, as HF returns them
                new = decode(
                    model,
                    ids.repeat_interleave(k, 0).to(device),
                    attn.repeat_interleave(k, 0).to(device),
                    sampling.max_new_tokens,
                    stops,
                    padding,
                    sampling.temperature,
                    sampling.top_k,
                    sampling.top_p,
                    greedy=greedy,
                    suppress=list(getattr(model.generation_config, "suppress_tokens", None) or []),
                )
            else:
                new = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=attn.to(device),
                    **_hf_kwargs(sampling, stops, padding, greedy, n),
                )[:, ids.shape[1] :]
        grouped, length, cut = _cut(new.cpu(), stops, tokenizer, skip_special_tokens, k)
        texts.extend(grouped)
        lengths.append(length)
        truncated.append(cut)
    if was_training:
        model.train()
    return Generations(texts, torch.cat(lengths).float(), torch.cat(truncated))


def _served(
    model: ServedLM, tokenizer, prompts: list, k: int, sampling: SamplingConfig, greedy: bool, skip
) -> Generations:
    """`generate` on a served model: the server samples from the prompts' token ids with the
    same knobs; its tokens are cut and decoded by the same rule as local ones."""
    stops = stop_token_ids(model, tokenizer)
    rows = model.sample_ids(
        [encode_prompt(tokenizer, p) for p in prompts],
        k,
        0.0 if greedy else sampling.temperature,
        1.0 if greedy else sampling.top_p,
        0 if greedy else sampling.top_k,
        sampling.max_new_tokens,
        stops,
    )
    new, _ = padded([r or [pad_id(tokenizer)] for r in rows], pad_id(tokenizer))
    texts, lengths, truncated = _cut(new, stops, tokenizer, skip, k)
    return Generations(texts, lengths.float(), truncated)


def _cut(new: torch.Tensor, stops: list[int], tokenizer, skip_special_tokens: bool, k: int):
    """(texts grouped k per prompt, lengths with the stop token, truncated flags) of new tokens
    [rows, steps], each row cut before its first stop token."""
    is_stop = torch.isin(new, torch.tensor(stops))
    ended = is_stop.any(-1)
    first_stop = torch.where(ended, is_stop.int().argmax(-1), new.shape[1])
    decoded = tokenizer.batch_decode(
        [row[:j] for row, j in zip(new, first_stop.tolist(), strict=True)],
        skip_special_tokens=skip_special_tokens,
    )
    grouped = [decoded[i : i + k] for i in range(0, len(decoded), k)]
    return grouped, first_stop + ended.long(), ~ended
