"""MCQ calibration of teacher rewards: t_i = (1 - alpha) r_T(y_i) + alpha log p_sel(y_i).

The teacher is asked "which response is best?" as a multiple-choice question rendered in its
own chat template. Option probabilities are read from the next-token distribution after the
generation prompt and renormalised over the option letters' token ids. All questions of a
rollout go through the teacher in a few padded, length-sorted passes.

Modes:
* ``pairwise``: every pair is one two-option question; p_sel(y_i) is y_i's mean win probability.
  Without `debias` each pair is asked once with the lower index as "A" (the paper code's scheme,
  C(n, 2) questions); with `debias` both orders are asked and averaged (n (n - 1) questions).
* ``listwise``: one question lists all n responses; p_sel(y_i) is the probability of y_i's letter.
  With `debias` it is asked n times with the options rotated cyclically, so every response sits
  in every position exactly once, and averaged (n questions of n options: about the tokens of the
  paper's C(n, 2) pairs at n = 8, half those of debiased pairwise).

In every mode, questions whose options are all the same text are not asked (the answer is
uniform by symmetry), and p_sel is formed in log space from the option log-probabilities, so the
losing side of a confident judge keeps its probability (2e-9, not 1 - 1 = 0 in float32).
"""

from __future__ import annotations

import math
import string

import torch
from transformers import PreTrainedTokenizerBase

from pad_lightning.engines.served import ServedLM
from pad_lightning.lm.chat import EncodedPair, pad_id, prompt_text
from pad_lightning.lm.precision import autocast
from pad_lightning.lm.scoring import logits_at, pad_pairs, token_budget_chunks
from pad_lightning.ranking.selection import selection_from

DEFAULT_TEMPLATE = "Q: {question}\n{options}\nBest:"
DEFAULT_OPTION_TEMPLATE = "{letter}) {response}"
LETTERS = string.ascii_uppercase


def mcq_prompt(
    question: str,
    responses: list[str],
    template: str = DEFAULT_TEMPLATE,
    option_template: str = DEFAULT_OPTION_TEMPLATE,
) -> str:
    """The judge question listing `responses` as options A, B, ... in the given order.

    Each option is `option_template` with {letter}, {response} (and, if it names it, {question}:
    restating the question before each response, so that every option reads like an answer)."""
    options = "\n".join(
        option_template.format(letter=LETTERS[i], response=r, question=question)
        for i, r in enumerate(responses)
    )
    return template.format(question=question, options=options)


def option_token_ids(tokenizer: PreTrainedTokenizerBase, k: int, context: str = "") -> list[int]:
    """Token ids of the letters A.. as the first token of an answer after `context`; k distinct.

    `context` is a rendered MCQ prompt (generation prompt included): each letter is tokenised
    together with it and the first token after the context's own ids is taken, so tokenizers
    that mark word starts (SentencePiece "▁C") give the token the model would produce there.
    """
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
    ids = []
    for letter in LETTERS[:k]:
        joint = tokenizer(context + letter, add_special_tokens=False)["input_ids"]
        if context and joint[: len(context_ids)] == context_ids and len(joint) > len(context_ids):
            ids.append(joint[len(context_ids)])
        else:
            ids.append(tokenizer(letter, add_special_tokens=False)["input_ids"][0])
    if len(set(ids)) != k:
        raise ValueError(
            f"tokenizer {tokenizer.name_or_path!r} maps option letters A-"
            f"{LETTERS[k - 1]} to non-distinct first tokens; use calibration.mode=pairwise "
            "(letters A, B), calibration.alpha=0, or a template/tokenizer with distinct letters"
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
    """log p(option | prompt), renormalised over `option_ids`, for every encoded prompt; [M, k]
    (on its server for a served model)."""
    if isinstance(model, ServedLM):
        return model.option_log_probs(prompts, option_ids)
    device = next(model.parameters()).device
    out = torch.empty(len(prompts), len(option_ids))
    pairs = [EncodedPair(p, len(p)) for p in prompts]
    for chunk in token_budget_chunks([len(p) for p in prompts], max_tokens):
        batch = pad_pairs([pairs[i] for i in chunk], pad_id).to(device)
        last = batch.attention_mask.sum(-1) - 1
        keep = last.unique()  # only each row's last position is read
        with autocast(device, autocast_dtype):
            logits = logits_at(model, batch, keep)
        column = torch.searchsorted(keep, last)
        picked = logits[torch.arange(len(chunk), device=device), column][:, option_ids].float()
        out[chunk] = picked.log_softmax(-1).cpu()
    return out


def question_log_probs(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    questions: list,
    responses: list[list[str]],
    orders: list[tuple[int, ...]],
    template: str = DEFAULT_TEMPLATE,
    max_tokens: int = 16384,
    autocast_dtype: torch.dtype | None = None,
    option_template: str = DEFAULT_OPTION_TEMPLATE,
) -> tuple[torch.Tensor, int]:
    """The judge's option log-probabilities [P, Q, k] on the option `orders` of every prompt's
    responses, and the number of teacher tokens processed.

    All MCQs of all prompts go through the model in a few padded passes. Questions whose
    options are all the same text are not asked: their answer is uniform, log(1 / k) each, by
    symmetry (exact under debiasing, and free of the position bias it would otherwise measure).
    """
    k = len(orders[0])
    encoded, index, first_text = [], [], ""
    for p, (question, group) in enumerate(zip(questions, responses, strict=True)):
        for q, order in enumerate(orders):
            options = [group[i] for i in order]
            if len(set(options)) == 1:
                continue  # uniform by symmetry, with or without debiasing
            text = prompt_text(tokenizer, mcq_prompt(question, options, template, option_template))
            first_text = first_text or text
            encoded.append(tokenizer(text, add_special_tokens=False)["input_ids"])
            index.append((p, q))
    option_logp = torch.full((len(questions), len(orders), k), -math.log(k))
    if encoded:
        logp = option_log_probs(
            model,
            encoded,
            option_token_ids(tokenizer, k, first_text),
            pad_id(tokenizer),
            max_tokens,
            autocast_dtype,
        )
        rows, cols = zip(*index, strict=True)
        option_logp[list(rows), list(cols)] = logp
    return option_logp, sum(len(e) for e in encoded)


def selection_log_probs(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    questions: list,
    responses: list[list[str]],
    mode: str = "pairwise",
    debias: bool = True,
    template: str = DEFAULT_TEMPLATE,
    max_tokens: int = 16384,
    autocast_dtype: torch.dtype | None = None,
    option_template: str = DEFAULT_OPTION_TEMPLATE,
) -> tuple[torch.Tensor, int]:
    """log p_sel of every response, [P, n], and the number of teacher tokens processed.

    The questions of `mode` and `debias` (`questions_for`) are asked by `question_log_probs`;
    p_sel is formed in log space from the option log-probabilities (`log_selection`,
    log-sum-exp), so a confident judge's small probabilities keep full float32 precision.
    """
    return selection_from(
        lambda orders: question_log_probs(
            model,
            tokenizer,
            questions,
            responses,
            orders,
            template,
            max_tokens,
            autocast_dtype,
            option_template,
        ),
        mode,
        len(responses[0]),
        debias,
    )
