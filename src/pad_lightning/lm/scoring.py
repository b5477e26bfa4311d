"""Length-normalised sequence log-likelihood rewards, batched and chat-template aware.

r(y | x) = (1/|y|) * sum_t log pi(y_t | x, y_<t) over the scored span (see `chat`).

Shared-prefix scoring. A rollout scores n responses per prompt, and the prompt is usually most of
each sequence (the toy world: 24 prompt tokens, up to 17 response tokens; the paper's presets: up
to 1800 and 248). `shared_prefix_rewards` runs each distinct prompt once (left-padded, with the KV
cache kept), copies its cache to every response of that prompt, and runs only the response
tokens. The rewards are those of full-sequence scoring (the same length-normalised
log-likelihood of each scored span), up to float rounding: a test compares the two. It is used
for every no-grad scoring of pairs (`score_pairs`: teacher rewards, the student's column of the
rollout table, evaluation) when the model's forward takes a KV cache and position ids; otherwise,
or when no prompt has two responses, the full sequences are scored.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import lru_cache

import torch

from pad_lightning.engines.served import ServedLM
from pad_lightning.lm.adapters import base_model
from pad_lightning.lm.chat import EncodedPair, padded
from pad_lightning.lm.precision import autocast
from pad_lightning.lm.sampling import _forward_takes
from pad_lightning.lm.sharding import is_gathered, is_sharded


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
    ids, attn = padded([p.ids for p in pairs], pad_id)
    score = torch.zeros(ids.shape, dtype=torch.bool)
    for i, p in enumerate(pairs):
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
    inner = base_model(model)
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
    one pass over the prompt (`shared_prefix_rewards`): the same rewards, fewer tokens. A served
    model (`engines.served.ServedLM`) scores them on its server by the same rule."""
    if isinstance(model, ServedLM):
        return model.score_pairs(pairs)
    if share_prefix and shareable(model, pairs):
        return shared_prefix_rewards(model, pairs, pad_id, max_tokens, device, autocast_dtype)
    out = torch.empty(len(pairs))
    device = torch.device(device)
    for chunk in token_budget_chunks([len(p.ids) for p in pairs], max_tokens):
        batch = pad_pairs([pairs[i] for i in chunk], pad_id).to(device)
        with autocast(device, autocast_dtype):
            out[chunk] = sequence_rewards(model, batch).float().cpu()
    return out


def shareable(model: torch.nn.Module, pairs: list[EncodedPair]) -> bool:
    """Whether shared-prefix scoring applies: some prompt has two or more responses, and the
    model's forward takes position ids and a KV cache (by either argument name)."""
    inner = base_model(model)
    cls = type(inner)
    if not _forward_takes(cls, "position_ids") or not (
        _forward_takes(cls, "past_key_values") or _forward_takes(cls, "cache")
    ):
        return False
    prefixes = {tuple(p.ids[: p.prompt_len]) for p in pairs}
    return len(prefixes) < len(pairs)


def _groups(pairs: list[EncodedPair]) -> tuple[list[tuple[int, ...]], list[int]]:
    """Distinct prompt prefixes (first-seen order) and each pair's prefix index."""
    index: dict[tuple[int, ...], int] = {}
    of = [index.setdefault(tuple(p.ids[: p.prompt_len]), len(index)) for p in pairs]
    return list(index), of


def _chunks(pairs: list[EncodedPair], of: list[int], prefixes, max_tokens: int) -> list[list[int]]:
    """Pair indices in chunks, whole prompts at a time, each of at most ~`max_tokens` padded
    tokens (distinct prompts + responses; one prompt's responses always share a chunk)."""
    members: dict[int, list[int]] = {}
    for i, g in enumerate(of):
        members.setdefault(g, []).append(i)
    chunks, current = [], []
    prompt_w = resp_w = rows = groups = 0  # of the current chunk
    for g, idx in members.items():
        p_len = len(prefixes[g])
        r_len = max(len(pairs[i].ids) - pairs[i].prompt_len for i in idx)
        cost = (groups + 1) * max(prompt_w, p_len) + (rows + len(idx)) * max(resp_w, r_len)
        if current and cost > max_tokens:
            chunks.append(current)
            current, prompt_w, resp_w, rows, groups = [], 0, 0, 0, 0
        current.extend(idx)
        prompt_w, resp_w = max(prompt_w, p_len), max(resp_w, r_len)
        rows, groups = rows + len(idx), groups + 1
    if current:
        chunks.append(current)
    return chunks


def _forward(model, ids, mask, positions, cache=None):
    """A forward pass that keeps the KV cache (prefill when `cache` is None: only the last
    position's logits, where the model allows it); returns (output, cache)."""
    inner = base_model(model)
    cache_arg = "cache" if _forward_takes(type(inner), "cache") else "past_key_values"
    kwargs = {cache_arg: cache} if cache is not None else {}
    if cache is None and _forward_takes(type(inner), "logits_to_keep"):
        kwargs["logits_to_keep"] = 1
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs
    )
    return out, getattr(out, cache_arg)


def _padded(rows: list[list[int]], pad_id: int, left: bool, device) -> tuple:
    ids, mask = padded(rows, pad_id, left)
    return ids.to(device), mask.to(device)


def _chunk_rewards(model, pairs: list[EncodedPair], pad_id: int, device, split) -> torch.Tensor:
    """Rewards of one chunk. `split` = (body, head) runs the LM head on chunks of the scored
    positions (real vocabularies, see `token_log_probs`); None takes the full logits."""
    prefixes, of = _groups(pairs)
    ids, mask = _padded([list(p) for p in prefixes], pad_id, left=True, device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # every prompt ends at the last column
    net = split[0] if split is not None else model
    out, cache = _forward(net, ids, mask, positions)
    r_ids, r_mask = _padded([p.ids[p.prompt_len :] for p in pairs], pad_id, False, device)
    index = torch.tensor(of, device=device)
    cache.reorder_cache(index)  # each response gets its prompt's keys and values
    r_positions = positions[index, -1:] + 1 + torch.arange(r_ids.shape[1], device=device)
    full_mask = torch.cat([mask[index], r_mask], dim=-1)
    out_r = _forward(net, r_ids, full_mask, r_positions, cache)[0]
    # token j of a response is predicted by position j - 1 (j = 0: the prompt's last position)
    scored = r_mask.bool()
    if split is None:
        logits = torch.cat([out.logits[:, -1:][index], out_r.logits[:, :-1]], dim=1)
        picked = logits[scored].float()
        logp = picked.gather(-1, r_ids[scored].unsqueeze(-1)).squeeze(-1) - picked.logsumexp(-1)
    else:
        head = split[1]
        hidden = torch.cat(
            [out.last_hidden_state[:, -1:][index], out_r.last_hidden_state[:, :-1]], dim=1
        )[scored]
        targets = r_ids[scored]
        rows = max(1, LOGIT_BUDGET // _vocab_size(model))
        logp = torch.cat(
            [
                _picked_log_probs(head, hidden[i : i + rows], targets[i : i + rows])
                for i in range(0, len(targets), rows)
            ]
        )
    token_logp = torch.zeros(r_ids.shape, dtype=logp.dtype, device=logp.device)
    token_logp = token_logp.masked_scatter(scored, logp)
    return (token_logp.sum(-1) / r_mask.sum(-1)).float().cpu()


@torch.no_grad()
def shared_prefix_rewards(
    model: torch.nn.Module,
    pairs: list[EncodedPair],
    pad_id: int,
    max_tokens: int = 16384,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    logit_budget: int | None = None,
) -> torch.Tensor:
    """Length-normalised log-likelihood of each pair's scored span, [N], running each distinct
    prompt once per chunk (see the module docstring). Chunks hold at most ~`max_tokens` padded
    tokens, and at most `logit_budget` response logits (positions x vocabulary)."""
    empty = [i for i, p in enumerate(pairs) if len(p.ids) <= p.prompt_len]
    if empty:  # the mean over no token would be 0, the best reward (see scored_counts)
        raise ValueError(f"rows {empty} have no scored token; a reward needs at least one")
    device = torch.device(device)
    prefixes, of = _groups(pairs)
    vocab = _vocab_size(model) or 0
    budget = logit_budget or LOGIT_BUDGET
    # the LM head on chunks of positions when a chunk's logits would pass the budget
    split = split_head(model, pad_pairs(pairs[:1], pad_id).to(device)) if vocab else None
    tokens = max_tokens if split is not None else min(max_tokens, max(1, budget // max(vocab, 1)))
    out = torch.empty(len(pairs))
    for chunk in _chunks(pairs, of, prefixes, tokens):
        members = [pairs[i] for i in chunk]
        scored = sum(len(p.ids) - p.prompt_len for p in members)
        use_split = split if scored * vocab > budget else None
        with autocast(device, autocast_dtype):
            out[chunk] = _chunk_rewards(model, members, pad_id, device, use_split)
    return out
