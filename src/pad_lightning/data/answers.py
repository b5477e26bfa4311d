"""Answer metrics against the toy tasks' references: exact match, graded quality q."""

from __future__ import annotations

import torch

from pad_lightning.data.tasks import exact_match, quality


def answer_metrics(answers: list[str], references: list[str]) -> dict[str, float]:
    """Exact match rate and mean quality of one answer per reference."""
    return {
        "exact_match": sum(map(exact_match, answers, references)) / len(references),
        "quality": sum(map(quality, answers, references)) / len(references),
    }


ANSWER_COLUMNS = ("prompt", "answer", "reference", "exact_match", "quality")


def answer_rows(prompts: list, answers: list[str], references: list) -> list[dict]:
    """One row per answer (the columns ANSWER_COLUMNS): its prompt (chat messages as JSON), the
    answer as generated, the reference, and the answer's exact match (0 or 1) and quality q
    (None where there is no reference)."""
    import json

    rows = []
    for prompt, answer, ref in zip(prompts, answers, references, strict=True):
        rows.append(
            {
                "prompt": prompt if isinstance(prompt, str) else json.dumps(prompt),
                "answer": answer,
                "reference": ref,
                "exact_match": None if ref is None else float(exact_match(answer, ref)),
                "quality": None if ref is None else float(quality(answer, ref)),
            }
        )
    return rows


def quality_matrix(texts: list[list[str]], problems: list) -> torch.Tensor | None:
    """True quality q of every sampled response, [P, n]; None unless every problem has a
    reference (prompt-only data has no q)."""
    refs = [getattr(p, "reference", None) for p in problems]
    if any(r is None for r in refs):
        return None
    return reference_quality(texts, refs)


def reference_quality(texts: list[list[str]], references: list[str]) -> torch.Tensor:
    """q(y, reference) of every response of every prompt, [P, n] (`tasks.quality`)."""
    return torch.tensor(
        [[quality(y, r) for y in g] for g, r in zip(texts, references, strict=True)]
    )
