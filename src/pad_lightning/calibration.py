"""MCQ calibration of teacher rewards: t_i = (1 - alpha) r_T(y_i) + alpha log p_sel(y_i).

The teacher is asked "which response is best?" as a multiple-choice question rendered in its
own chat template. Option probabilities are read from the next-token distribution after the
generation prompt and renormalised over the option letters' token ids. Pairwise mode asks every
pair; with `debias` it asks both orders and averages, which removes position bias exactly.
"""

from __future__ import annotations

import itertools
import string

import torch
from transformers import PreTrainedTokenizerBase

from .chat import EncodedPair, encode_prompt, pad_id
from .rewards import pad_pairs, token_budget_chunks

DEFAULT_TEMPLATE = "Q: {question}\n{options}\nBest:"
LETTERS = string.ascii_uppercase


def mcq_prompt(question: str, responses: list[str], template: str = DEFAULT_TEMPLATE) -> str:
    """The judge question listing `responses` as options A, B, ... in the given order."""
    options = "\n".join(f"{LETTERS[i]}) {r}" for i, r in enumerate(responses))
    return template.format(question=question, options=options)


def option_token_ids(tokenizer: PreTrainedTokenizerBase, k: int) -> list[int]:
    """Token ids of the letters A.. (first token of each); must be k distinct ids."""
    ids = [tokenizer(LETTERS[i], add_special_tokens=False)["input_ids"][0] for i in range(k)]
    if len(set(ids)) != k:
        raise ValueError(
            f"tokenizer {tokenizer.name_or_path!r} maps option letters A-"
            f"{LETTERS[k - 1]} to non-distinct tokens; use calibration=none"
        )
    return ids


@torch.no_grad()
def option_log_probs(
    model: torch.nn.Module,
    prompts: list[list[int]],
    option_ids: list[int],
    pad_id: int,
    max_tokens: int = 16384,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """log p(option | prompt), renormalised over `option_ids`, for every encoded prompt; [M, k]."""
    device = next(model.parameters()).device
    out = torch.empty(len(prompts), len(option_ids))
    pairs = [EncodedPair(p, len(p)) for p in prompts]
    for chunk in token_budget_chunks([len(p) for p in prompts], max_tokens):
        batch = pad_pairs([pairs[i] for i in chunk], pad_id).to(device)
        last = batch.attention_mask.sum(-1) - 1
        with torch.autocast(
            device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
        ):
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        picked = logits[torch.arange(len(chunk), device=device), last][:, option_ids].float()
        out[chunk] = picked.log_softmax(-1).cpu()
    return out


def pairwise_questions(n: int, debias: bool) -> list[tuple[int, int]]:
    """Ordered pairs (first option, second option) asked for n responses."""
    if debias:
        return list(itertools.permutations(range(n), 2))
    return list(itertools.combinations(range(n), 2))


def win_matrix(
    p_first: torch.Tensor, questions: list[tuple[int, int]], n: int, debias: bool
) -> torch.Tensor:
    """W[..., i, j] = P(y_i preferred over y_j) from P(first option chosen), [..., Q] -> [..., n, n].

    Debiased: W[i, j] = (p_A(i, j) + p_B(j, i)) / 2, each order asked once. The diagonal is 0.
    """
    first = torch.tensor([i for i, _ in questions])
    second = torch.tensor([j for _, j in questions])
    w = p_first.new_zeros((*p_first.shape[:-1], n, n))
    if debias:
        w[..., first, second] += p_first / 2
        w[..., second, first] += (1 - p_first) / 2
    else:
        w[..., first, second] = p_first
        w[..., second, first] = 1 - p_first
    return w


def pairwise_selection_log_probs(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    questions: list,
    responses: list[list[str]],
    debias: bool = True,
    template: str = DEFAULT_TEMPLATE,
    max_tokens: int = 16384,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, int]:
    """log mean win probability of every response, [P, n], and the teacher tokens used.

    All MCQs of all prompts go through the teacher in a few padded passes. Pairs of identical
    texts are not asked: with debiasing their win probability is exactly 1/2.
    """
    n = len(responses[0])
    order = pairwise_questions(n, debias)
    encoded, index = [], []
    for p, (question, group) in enumerate(zip(questions, responses, strict=True)):
        for q, (i, j) in enumerate(order):
            if debias and group[i] == group[j]:
                continue
            text = mcq_prompt(question, [group[i], group[j]], template)
            encoded.append(encode_prompt(tokenizer, text))
            index.append((p, q))
    p_first = torch.full((len(questions), len(order)), 0.5)
    if encoded:
        logp = option_log_probs(
            model,
            encoded,
            option_token_ids(tokenizer, 2),
            pad_id(tokenizer),
            max_tokens,
            autocast_dtype,
        )
        rows, cols = zip(*index, strict=True)
        p_first[list(rows), list(cols)] = logp[:, 0].exp()
    mean_win = win_matrix(p_first, order, n, debias).sum(-1) / (n - 1)
    return mean_win.clamp_min(1e-12).log(), sum(len(e) for e in encoded)


def mix(teacher_rewards: torch.Tensor, log_p_sel: torch.Tensor, alpha: float) -> torch.Tensor:
    """Paper formula: t = (1 - alpha) r_T + alpha log p_sel."""
    return (1 - alpha) * teacher_rewards + alpha * log_p_sel
