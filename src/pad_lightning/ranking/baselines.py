"""Per-prompt baseline losses that a PAD study compares against (pure torch).

Every loss returns one value per prompt, shape ``[B]`` (average it over prompts yourself), works
for float32 and float64 on any device (half precision is computed, and returned, in float32), and
detaches its teacher inputs (and the frozen reference's log-probs). Inputs ``[B, n]`` hold, per
prompt, one value for each of the ``n`` sampled responses; they must be finite.

Preference pairs come from the teacher scores ``t``: a pair ``(w, l)`` is a preference pair only
if ``t_w > t_l``; a pair with equal teacher scores is skipped, and a prompt with no valid pair gets
loss 0 (kept in the autograd graph, with zero gradient).

Losses and their sources:

* :func:`dpo` -- Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is
  Secretly a Reward Model" (pairwise, summed log-probs, frozen reference).
* :func:`simpo` -- Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free
  Reward" (length-normalised log-likelihood, target margin ``gamma``).
* :func:`dpo_pl` -- the Plackett-Luce (list) form of DPO from the DPO paper (ListMLE of the teacher
  ranking on ``beta * (log pi - log pi_ref)``).
* :func:`lipo_lambda` -- Liu et al. 2024, "LiPO: Listwise Preference Optimization through
  Learning-to-Rank" (pairwise logistic loss with LambdaLoss gain-and-discount weights).
* :func:`rrhf` -- Yuan et al. 2023, "RRHF: Rank Responses to Align Language Models with Human
  Feedback without tears" (hinge ranking on length-normalised log-probs plus SFT on the best).
* :func:`generalized_jsd` -- Agarwal et al. 2024, "On-Policy Distillation of Language Models:
  Learning from Self-Generated Mistakes" (GKD; token-level generalized JSD, TRL's GKDTrainer).
* :func:`sequence_nll` -- token-averaged cross-entropy of given targets (sequence-level KD, Kim &
  Rush 2016, "Sequence-Level Knowledge Distillation", and SFT on gold answers).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from pad_lightning.ranking.plackett_luce import plackett_luce_log_prob

__all__ = [
    "PAIR_CHOICES",
    "dpo",
    "dpo_pl",
    "generalized_jsd",
    "lipo_lambda",
    "preference_pairs",
    "rrhf",
    "sequence_nll",
    "simpo",
]

PAIR_CHOICES = ("best_worst", "all", "random")
"""How :func:`preference_pairs` picks pairs from the ``n`` responses of a prompt."""


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _float(*xs: Tensor) -> list[Tensor]:
    """Cast to one compute dtype: float64 if any input is float64, else float32."""
    dtype = torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32
    return [x.to(dtype) for x in xs]


def _check_same(**named: Tensor) -> None:
    shapes = {k: tuple(v.shape) for k, v in named.items()}
    first = next(iter(shapes.values()))
    if len(first) != 2 or any(s != first for s in shapes.values()):
        raise ValueError(f"inputs must all be [B, n] of one shape, got {shapes}")


def _descending_rank(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(order, rank)`` of each row sorted descending (stable: ties keep index order).

    ``order[:, k]`` is the item at 0-based position k; ``rank[:, i]`` is item i's position.
    """
    order = torch.argsort(x, dim=-1, descending=True, stable=True)
    positions = torch.arange(x.shape[-1], device=x.device).expand_as(order)
    return order, torch.empty_like(order).scatter_(-1, order, positions)


def _mean_over_valid(term: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``term [B, m]`` over the valid entries of each row; 0 (in the graph) if none."""
    total = torch.where(valid, term, torch.zeros_like(term)).sum(dim=-1)
    return total / valid.sum(dim=-1).clamp_min(1).to(term.dtype)


def _has_pair(teacher: Tensor) -> Tensor:
    """``[B]`` bool: the row has two responses with different teacher scores."""
    return teacher.amax(dim=-1) > teacher.amin(dim=-1)


# --------------------------------------------------------------------------------------------
# pairs
# --------------------------------------------------------------------------------------------


def preference_pairs(
    teacher_scores: Tensor, choice: str, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Preference pairs ``(winner_idx, loser_idx, valid)``, each ``[B, m]``, from teacher scores.

    * ``"best_worst"`` (m = 1): the teacher's best response against its worst, i.e. the first and
      last of the stable descending teacher ranking (first index among tied maxima, last among
      tied minima); invalid if all scores are equal.
    * ``"all"`` (m = n(n-1)/2): every unordered pair ``i < j`` (in ``torch.triu_indices`` order),
      oriented so the winner has the higher score; invalid where the scores are equal.
    * ``"random"`` (m = 1): one unordered pair drawn uniformly per prompt with ``generator`` (the
      PAD paper's public code); invalid if its scores are equal. The draw is made on the
      generator's device (the scores' device without one) and moved to the scores' device.

    With n = 1 there is no pair: m = 1 with ``valid`` False (m = 0 for ``"all"``).
    """
    if choice not in PAIR_CHOICES:
        raise ValueError(f"unknown pair choice {choice!r}; valid: {list(PAIR_CHOICES)}")
    if teacher_scores.dim() != 2:
        raise ValueError(f"teacher_scores must be [B, n], got {tuple(teacher_scores.shape)}")
    t = teacher_scores.detach()
    b, n = t.shape
    device = t.device
    if choice == "all":
        i, j = torch.triu_indices(n, n, offset=1, device=device)
        ti, tj = t[:, i], t[:, j]
        first_wins = ti > tj
        winner = torch.where(first_wins, i, j)
        loser = torch.where(first_wins, j, i)
        return winner, loser, ti != tj
    if n < 2:
        zero = torch.zeros(b, 1, dtype=torch.long, device=device)
        return zero, zero.clone(), torch.zeros(b, 1, dtype=torch.bool, device=device)
    if choice == "best_worst":
        order = torch.argsort(t, dim=-1, descending=True, stable=True)
        winner, loser = order[:, :1], order[:, -1:]
    else:  # random: an ordered pair (a, c), a != c, uniform over n(n-1), then oriented
        draw_device = generator.device if generator is not None else device
        a = torch.randint(0, n, (b, 1), generator=generator, device=draw_device).to(device)
        c = torch.randint(0, n - 1, (b, 1), generator=generator, device=draw_device).to(device)
        c = c + (c >= a).long()
        a_wins = t.gather(1, a) > t.gather(1, c)
        winner, loser = torch.where(a_wins, a, c), torch.where(a_wins, c, a)
    return winner, loser, t.gather(1, winner) > t.gather(1, loser)


# --------------------------------------------------------------------------------------------
# pairwise preference losses
# --------------------------------------------------------------------------------------------


def dpo(
    policy_logps: Tensor,
    reference_logps: Tensor,
    teacher_scores: Tensor,
    beta: float,
    pairs: str = "best_worst",
    generator: torch.Generator | None = None,
) -> Tensor:
    """DPO per prompt ``[B]``: mean over the teacher preference pairs (:func:`preference_pairs`) of
    ``-log sigmoid(beta * [(log pi_w - log ref_w) - (log pi_l - log ref_l)])``.

    ``policy_logps`` and ``reference_logps`` ``[B, n]`` are *summed* sequence log-probabilities;
    the reference (the frozen initial student) is detached.
    """
    _check_same(policy=policy_logps, reference=reference_logps, teacher=teacher_scores)
    pi, ref = _float(policy_logps, reference_logps.detach())
    winner, loser, valid = preference_pairs(teacher_scores, pairs, generator)
    logratio = pi - ref
    margin = logratio.gather(1, winner) - logratio.gather(1, loser)
    return _mean_over_valid(-F.logsigmoid(beta * margin), valid)


def simpo(
    policy_avg_logps: Tensor,
    teacher_scores: Tensor,
    beta: float,
    gamma: float,
    pairs: str = "best_worst",
    generator: torch.Generator | None = None,
) -> Tensor:
    """SimPO per prompt ``[B]``: mean over preference pairs of
    ``-log sigmoid(beta * (r_w - r_l) - gamma)``, with ``r`` the length-normalised log-likelihood
    ``policy_avg_logps [B, n]`` (summed log-prob / number of tokens); no reference model.

    ``gamma`` is in reward units: it is subtracted *after* multiplying by ``beta`` (the SimPO
    paper's ``gamma``; the PAD public code uses beta = 10 and a hard-coded gamma = 3).
    """
    _check_same(policy=policy_avg_logps, teacher=teacher_scores)
    (r,) = _float(policy_avg_logps)
    winner, loser, valid = preference_pairs(teacher_scores, pairs, generator)
    margin = beta * (r.gather(1, winner) - r.gather(1, loser)) - gamma
    return _mean_over_valid(-F.logsigmoid(margin), valid)


# --------------------------------------------------------------------------------------------
# listwise preference losses
# --------------------------------------------------------------------------------------------


def dpo_pl(
    policy_logps: Tensor, reference_logps: Tensor, teacher_scores: Tensor, beta: float
) -> Tensor:
    """Plackett-Luce DPO per prompt ``[B]``: ``-log PL(teacher ranking | beta*(log pi - log ref))``.

    The teacher ranking is the stable descending argsort of ``teacher_scores`` (tied responses keep
    index order, as in VPD); a prompt whose teacher scores are all equal has no preference and gets
    loss 0. Log-probs are summed sequence log-probs; the reference is detached.
    """
    _check_same(policy=policy_logps, reference=reference_logps, teacher=teacher_scores)
    pi, ref = _float(policy_logps, reference_logps.detach())
    t = teacher_scores.detach()
    ranking = torch.argsort(t, dim=-1, descending=True, stable=True)
    nll = -plackett_luce_log_prob(beta * (pi - ref), ranking)
    return torch.where(_has_pair(t), nll, torch.zeros_like(nll))


def lipo_lambda(
    policy_logps: Tensor, reference_logps: Tensor, teacher_scores: Tensor, beta: float
) -> Tensor:
    """LiPO-lambda per prompt ``[B]``: ``sum_{t_i > t_j} Delta_ij * log(1 + exp(-(s_i - s_j)))``.

    ``s = beta * (log pi - log ref)`` (summed log-probs, reference detached). Labels
    ``psi_i = (n - 1 - rank_T(i)) / (n - 1)`` in ``[0, 1]``, with ``rank_T(i)`` the 0-based
    position of i in the stable descending teacher ranking. Lambda weights (LambdaLoss, detached)
    ``Delta_ij = |G_i - G_j| * |1/D(tau_i) - 1/D(tau_j)|`` with gain ``G = 2**psi - 1``, discount
    ``D(tau) = log2(1 + tau)`` and ``tau`` the 1-based rank under the current ``s`` (stable
    descending). Pairs with equal teacher scores are skipped; the per-prompt loss is a sum, as in
    LiPO. n = 1 gives 0.
    """
    _check_same(policy=policy_logps, reference=reference_logps, teacher=teacher_scores)
    pi, ref = _float(policy_logps, reference_logps.detach())
    s = beta * (pi - ref)
    n = s.shape[-1]
    winner, loser, valid = preference_pairs(teacher_scores, "all")
    with torch.no_grad():
        _, rank_t = _descending_rank(teacher_scores.detach())
        psi = (n - 1 - rank_t).to(s.dtype) / max(n - 1, 1)
        gain = torch.exp2(psi) - 1
        _, rank_s = _descending_rank(s.detach())
        inv_discount = 1.0 / torch.log2(rank_s.to(s.dtype) + 2.0)  # tau = rank_s + 1
        delta = (gain.gather(1, winner) - gain.gather(1, loser)).abs() * (
            inv_discount.gather(1, winner) - inv_discount.gather(1, loser)
        ).abs()
    term = delta * F.softplus(s.gather(1, loser) - s.gather(1, winner))
    return torch.where(valid, term, torch.zeros_like(term)).sum(dim=-1)


def rrhf(
    policy_avg_logps: Tensor,
    policy_logps: Tensor,
    teacher_scores: Tensor,
    sft_weight: float = 1.0,
) -> Tensor:
    """RRHF per prompt ``[B]``: ``sum_{t_i > t_j} relu(p_j - p_i) - sft_weight * log pi(y_best)``.

    ``p = policy_avg_logps`` are length-normalised log-probs (RRHF's ranking scores);
    ``policy_logps`` are summed sequence log-probs: the SFT term is the summed token NLL of the
    teacher's best response (the first of the stable descending teacher ranking), as in the RRHF
    paper's ``L_ft`` (its public code instead averages over the padded length, a batch-dependent
    rescaling). A prompt whose teacher scores are all equal has no preference pair and gets loss 0
    (no SFT term either).
    """
    _check_same(avg=policy_avg_logps, policy=policy_logps, teacher=teacher_scores)
    p, logp = _float(policy_avg_logps, policy_logps)
    t = teacher_scores.detach()
    winner, loser, valid = preference_pairs(t, "all")
    hinge = F.relu(p.gather(1, loser) - p.gather(1, winner))
    rank_loss = torch.where(valid, hinge, torch.zeros_like(hinge)).sum(dim=-1)
    best = torch.argsort(t, dim=-1, descending=True, stable=True)[:, :1]
    sft = -logp.gather(1, best).squeeze(1)
    total = rank_loss + sft_weight * sft
    return torch.where(_has_pair(t), total, torch.zeros_like(total))


# --------------------------------------------------------------------------------------------
# distillation losses
# --------------------------------------------------------------------------------------------


def generalized_jsd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> Tensor:
    """GKD's token-level generalized JSD, averaged over each sequence's masked tokens: ``[N]``.

    With ``P_T = softmax(teacher / temperature)``, ``P_S = softmax(student / temperature)`` over
    the vocabulary and ``M = beta * P_T + (1 - beta) * P_S``, per token::

        JSD_beta = beta * KL(P_T || M) + (1 - beta) * KL(P_S || M)      (0 < beta < 1)

    and, as TRL's ``GKDTrainer.generalized_jsd_loss`` defines the ends (checked against its
    source: same mixture orientation), ``beta = 0 -> KL(P_T || P_S)`` (forward KL) and
    ``beta = 1 -> KL(P_S || P_T)`` (reverse KL). These are the limits of ``JSD_beta / beta`` and
    ``JSD_beta / (1 - beta)``; ``JSD_beta`` itself tends to 0 at both ends. Computed in log space
    (``log M`` by logaddexp), so confident (even ``-inf``) logits stay finite.

    ``student_logits, teacher_logits [N, T, V]``; ``mask [N, T]`` (bool or 0/1) selects the tokens;
    the per-sequence value is the sum over masked tokens divided by their number (0 for a row with
    none). Logits at unmasked positions may hold any finite values. The teacher is detached.
    Unlike TRL (one mean over all masked tokens of the batch) this returns one value per sequence.
    """
    if student_logits.dim() != 3 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "student and teacher logits must both be [N, T, V], got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if tuple(mask.shape) != tuple(student_logits.shape[:2]):
        raise ValueError(
            f"mask must be [N, T] = {tuple(student_logits.shape[:2])}, got {tuple(mask.shape)}"
        )
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s_logits, t_logits = _float(student_logits, teacher_logits.detach())
    floor = torch.finfo(s_logits.dtype).min / 4  # -inf log-probs -> huge finite: 0 * log 0 = 0
    ls = F.log_softmax(s_logits / temperature, dim=-1).clamp_min(floor)
    lt = F.log_softmax(t_logits / temperature, dim=-1).clamp_min(floor)
    if beta == 0.0:
        per_token = (lt.exp() * (lt - ls)).sum(dim=-1)
    elif beta == 1.0:
        per_token = (ls.exp() * (ls - lt)).sum(dim=-1)
    else:
        lm = torch.logaddexp(lt + math.log(beta), ls + math.log1p(-beta))
        per_token = beta * (lt.exp() * (lt - lm)).sum(dim=-1) + (1.0 - beta) * (
            ls.exp() * (ls - lm)
        ).sum(dim=-1)
    m = mask.to(torch.bool)
    total = torch.where(m, per_token, torch.zeros_like(per_token)).sum(dim=-1)
    return total / m.sum(dim=-1).clamp_min(1).to(total.dtype)


def sequence_nll(policy_logps: Tensor, lengths: Tensor) -> Tensor:
    """Token-averaged cross-entropy of ``n`` given targets, averaged per prompt: ``[B]``.

    ``mean_k -(policy_logps[:, k] / lengths[:, k])`` with ``policy_logps [B, n]`` summed
    log-probs of the targets and ``lengths [B, n]`` their token counts (a length below 1 counts
    as 1). Used for sequence-level KD (targets: the teacher's answers) and SFT on gold answers.
    """
    _check_same(policy=policy_logps, lengths=lengths)
    (logp,) = _float(policy_logps)
    return (-logp / lengths.to(logp.dtype).clamp_min(1.0)).mean(dim=-1)
