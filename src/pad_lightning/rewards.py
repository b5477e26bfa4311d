"""Length-normalised sequence log-likelihood rewards, batched and chat-template aware.

r(y | x) = (1/|y|) * sum_t log pi(y_t | x, y_<t) over the scored span (see `chat`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import lru_cache

import torch

from .chat import EncodedPair
from .sharding import is_gathered, is_sharded


@dataclass
class PaddedBatch:
    """Right-padded ids; `score_mask[i, t]` is True where token t of row i is scored."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    score_mask: torch.Tensor

    def to(self, device: torch.device | str) -> PaddedBatch:
        return PaddedBatch(
            *(t.to(device) for t in (self.input_ids, self.attention_mask, self.score_mask))
        )


def pad_pairs(pairs: list[EncodedPair], pad_id: int) -> PaddedBatch:
    """Right padding keeps position ids 0..len-1 for every row, as in generation."""
    width = max(len(p.ids) for p in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(pairs), width), dtype=torch.long)
    score = torch.zeros((len(pairs), width), dtype=torch.bool)
    for i, p in enumerate(pairs):
        ids[i, : len(p.ids)] = torch.tensor(p.ids)
        attn[i, : len(p.ids)] = 1
        score[i, p.prompt_len : len(p.ids)] = True
    return PaddedBatch(ids, attn, score)


@lru_cache(maxsize=64)
def _accepts_logits_to_keep(forward_cls: type) -> bool:
    """Whether a model class's forward takes `logits_to_keep` (most HF causal LMs)."""
    try:
        return "logits_to_keep" in inspect.signature(forward_cls.forward).parameters
    except (TypeError, ValueError):
        return False


def logits_at(model: torch.nn.Module, batch: PaddedBatch, keep: int | torch.Tensor) -> torch.Tensor:
    """Logits at some positions only, ``[N, K, V]``: the last ``keep`` positions (an int), or
    the positions of a sorted 1-D index tensor.

    Models that take ``logits_to_keep`` (most HF causal LMs) run their LM head on those
    positions alone, which saves time and memory on large vocabularies; others are sliced.
    """
    if _accepts_logits_to_keep(type(model)):
        return model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=keep
        ).logits
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return logits[:, -keep:] if isinstance(keep, int) else logits[:, keep]


def response_logits(model: torch.nn.Module, batch: PaddedBatch) -> tuple[torch.Tensor, int]:
    """Logits from the first position that predicts a scored token on: ``(logits, first)``.

    ``logits[:, j]`` is the output at position ``first + j``; prompt positions before the
    shortest prompt's end predict no scored token and skip the LM head (see `logits_at`).
    """
    scored_cols = batch.score_mask.any(0).nonzero()
    first = max(int(scored_cols[0]) - 1, 0) if len(scored_cols) else 0
    return logits_at(model, batch, batch.input_ids.shape[1] - first), first


LOGIT_BUDGET = 1 << 24
"""Logits (positions x vocabulary) one LM-head chunk may hold: 64 MB in float32. Above this
many scored positions x vocabulary, `token_log_probs` runs the LM head chunk by chunk."""


def _picked_log_probs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor):
    logits = head(hidden).float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


_SPLITS: dict[tuple, bool] = {}


def split_head(model: torch.nn.Module, batch: PaddedBatch):
    """(body, head) with head(body(...).last_hidden_state) equal to the model's logits, or None
    (a model whose logits are post-processed, e.g. soft-capped: then the full forward is used).

    Checked once per model class and vocabulary on the first row of `batch`."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(inner, "base_model", None)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if body is None or body is inner or head is None:
        return None
    if is_sharded(inner) and not is_gathered(inner):
        return None  # calling the body alone would skip the root's FSDP hooks (its shards)
    key = (type(inner), getattr(inner.config, "vocab_size", None))
    if key not in _SPLITS:
        ids, attn = batch.input_ids[:1, :8], batch.attention_mask[:1, :8]
        with torch.no_grad():
            full = inner(input_ids=ids, attention_mask=attn).logits.float()
            hidden = body(input_ids=ids, attention_mask=attn).last_hidden_state
            _SPLITS[key] = torch.allclose(head(hidden).float(), full, rtol=1e-4, atol=1e-4)
    return (body, head) if _SPLITS[key] else None


def token_log_probs(model: torch.nn.Module, batch: PaddedBatch) -> torch.Tensor:
    """log pi(ids[t] | ids[<t]) at every scored position, 0 elsewhere; shape [N, L].

    Only positions that predict a scored token go through a softmax over the vocabulary. When
    those positions times the vocabulary exceed `LOGIT_BUDGET` (real vocabularies), the LM head
    runs on chunks of them in turn, so that no [positions, vocabulary] tensor exists at once;
    under autograd each chunk's logits are recomputed in backward instead of kept.
    """
    targets_all = batch.input_ids[:, 1:]
    mask_all = batch.score_mask[:, 1:]
    scored = int(mask_all.sum())
    vocab = _vocab_size(model)
    split = split_head(model, batch) if vocab and scored * vocab > LOGIT_BUDGET else None
    if split is not None:
        body, head = split
        hidden = body(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask
        ).last_hidden_state[:, :-1][mask_all]
        targets = targets_all[mask_all]
        rows = max(1, LOGIT_BUDGET // vocab)
        parts = []
        for start in range(0, len(targets), rows):
            h, t = hidden[start : start + rows], targets[start : start + rows]
            if torch.is_grad_enabled() and h.requires_grad:
                parts.append(
                    torch.utils.checkpoint.checkpoint(
                        _picked_log_probs, head, h, t, use_reentrant=False
                    )
                )
            else:
                parts.append(_picked_log_probs(head, h, t))
        logp = torch.cat(parts)
        out = torch.zeros(targets_all.shape, dtype=logp.dtype, device=logp.device)
        return torch.nn.functional.pad(out.masked_scatter(mask_all, logp), (1, 0))
    logits, first = response_logits(model, batch)
    targets = batch.input_ids[:, first + 1 :]
    mask = batch.score_mask[:, first + 1 :]
    picked = logits[:, :-1][mask].float()
    logp = picked.gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1) - picked.logsumexp(-1)
    out = torch.zeros(targets.shape, dtype=logp.dtype, device=logp.device)
    out = out.masked_scatter(mask, logp)
    return torch.nn.functional.pad(out, (first + 1, 0))


def _vocab_size(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "vocab_size", None) if config is not None else None


def scored_counts(score_mask: torch.Tensor) -> torch.Tensor:
    """Scored tokens per row, [N]; a ValueError if a row has none.

    The mean over no token would be 0, the best possible reward: an empty response would beat
    every real one. `chat.encode_pairs` never yields such a row, so this is a last check.
    """
    counts = score_mask.sum(-1)
    if bool((counts == 0).any()):
        rows = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(f"rows {rows} have no scored token; a reward needs at least one")
    return counts


def length_normalised(token_logp: torch.Tensor, score_mask: torch.Tensor) -> torch.Tensor:
    """Mean log-probability over each row's scored tokens; shape [N]. Raises for a row with
    none (see `scored_counts`)."""
    return (token_logp * score_mask).sum(-1) / scored_counts(score_mask)


def sequence_rewards(model: torch.nn.Module, batch: PaddedBatch) -> torch.Tensor:
    """Length-normalised log-likelihood of each row's scored span (keeps autograd if enabled)."""
    counts = scored_counts(batch.score_mask)  # its host sync comes before the forward pass
    return (token_log_probs(model, batch) * batch.score_mask).sum(-1) / counts


def token_budget_chunks(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Indices grouped (longest first) so each padded chunk holds at most `max_tokens` tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    chunks: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]
        if current and width * (len(current) + 1) > max_tokens:
            chunks.append(current)
            current = []
        current.append(i)
    if current:
        chunks.append(current)
    return chunks


@torch.no_grad()
def score_pairs(
    model: torch.nn.Module,
    pairs: list[EncodedPair],
    pad_id: int,
    max_tokens: int = 16384,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    share_prefix: bool = True,
) -> torch.Tensor:
    """Rewards of many pairs without autograd, in length-sorted chunks to limit padding; [N].

    With `share_prefix` (and a model that takes a KV cache), the responses of one prompt share
    one pass over the prompt (`prefix.shared_prefix_rewards`): the same rewards, fewer tokens."""
    from .prefix import shareable, shared_prefix_rewards

    if share_prefix and shareable(model, pairs):
        return shared_prefix_rewards(model, pairs, pad_id, max_tokens, device, autocast_dtype)
    out = torch.empty(len(pairs))
    device = torch.device(device)
    for chunk in token_budget_chunks([len(p.ids) for p in pairs], max_tokens):
        batch = pad_pairs([pairs[i] for i in chunk], pad_id).to(device)
        with torch.autocast(
            device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
        ):
            out[chunk] = sequence_rewards(model, batch).float().cpu()
    return out
