"""Scoring n responses of one prompt with one pass over the prompt (shared-prefix scoring).

A rollout scores n responses per prompt, and the prompt is usually most of each sequence (the
toy world: 24 prompt tokens, up to 17 response tokens; the paper's presets: up to 1800 and 248).
`shared_prefix_rewards` runs each distinct prompt once (left-padded, with the KV cache kept),
copies its cache to every response of that prompt, and runs only the response tokens. The
rewards are those of `rewards.score_pairs` (the same length-normalised log-likelihood of each
scored span), up to float rounding: a test compares the two.

Used for every no-grad scoring of pairs (`rewards.score_pairs`: teacher rewards, the student's
column of the rollout table, evaluation), when the model's forward takes a KV cache and
position ids; otherwise, or when no prompt has two responses, the full sequences are scored.
"""

from __future__ import annotations

import torch

from .chat import EncodedPair
from .sampling import _forward_takes


def shareable(model: torch.nn.Module, pairs: list[EncodedPair]) -> bool:
    """Whether shared-prefix scoring applies: some prompt has two or more responses, and the
    model's forward takes position ids and a KV cache (by either argument name)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
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
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    cache_arg = "cache" if _forward_takes(type(inner), "cache") else "past_key_values"
    kwargs = {cache_arg: cache} if cache is not None else {}
    if cache is None and _forward_takes(type(inner), "logits_to_keep"):
        kwargs["logits_to_keep"] = 1
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs
    )
    return out, getattr(out, cache_arg)


def _padded(rows: list[list[int]], pad_id: int, left: bool, device) -> tuple:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span] = torch.tensor(r)
        mask[i, span] = 1
    return ids.to(device), mask.to(device)


def _chunk_rewards(model, pairs: list[EncodedPair], pad_id: int, device, split) -> torch.Tensor:
    """Rewards of one chunk. `split` = (body, head) runs the LM head on chunks of the scored
    positions (real vocabularies, see `rewards.token_log_probs`); None takes the full logits."""
    from .rewards import LOGIT_BUDGET, _picked_log_probs, _vocab_size

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
    from .rewards import LOGIT_BUDGET, _vocab_size, pad_pairs, split_head

    empty = [i for i, p in enumerate(pairs) if len(p.ids) <= p.prompt_len]
    if empty:  # the mean over no token would be 0, the best reward (see rewards.scored_counts)
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
        with torch.autocast(
            device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
        ):
            out[chunk] = _chunk_rewards(model, members, pad_id, device, use_split)
    return out
