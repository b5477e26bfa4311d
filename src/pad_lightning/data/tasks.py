"""Toy task families with one correct answer and a graded quality q(y) in [0, 1].

Every problem belongs to exactly one split, decided by a stable hash of its prompt, so the
train / validation / test splits are fixed and disjoint whatever the seed or sample size.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass

SPLITS = ("train", "val", "test")


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute; cost 1 each)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def quality(response: str, reference: str) -> float:
    """1 - normalised edit distance between the stripped response and the reference."""
    response = response.strip()
    longest = max(len(response), len(reference), 1)
    return 1.0 - levenshtein(response, reference) / longest


def exact_match(response: str, reference: str) -> bool:
    return response.strip() == reference


def split_of(prompt: str) -> str:
    """Fixed split of a problem: 5% test, 5% validation, 90% train, by a stable hash."""
    bucket = zlib.crc32(prompt.encode()) % 20
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


@dataclass
class Problem:
    prompt: str
    reference: str
    task: str


def _rand_number(rng: random.Random, max_digits: int) -> int:
    digits = rng.randint(1, max_digits)
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def make_add(rng: random.Random, max_digits: int = 3) -> Problem:
    """a+b= ; the answer is written least-significant digit first (learnable by small LMs)."""
    a, b = _rand_number(rng, max_digits), _rand_number(rng, max_digits)
    return Problem(f"{a:0{max_digits}d}+{b:0{max_digits}d}=", str(a + b)[::-1], "add")


def make_reverse(rng: random.Random, max_len: int = 7) -> Problem:
    """rev <word> ; the answer is the word backwards (the default toy task)."""
    word = "".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, max_len)))
    return Problem(f"rev {word}", word[::-1], "reverse")


def make_sort(rng: random.Random, max_len: int = 5) -> Problem:
    items = [str(rng.randint(0, 9)) for _ in range(rng.randint(2, max_len))]
    return Problem(f"sort {' '.join(items)}", " ".join(sorted(items)), "sort")


TASKS: dict[str, Callable[[random.Random], Problem]] = {
    "add": make_add,
    "reverse": make_reverse,
    "sort": make_sort,
}


def sample_problems(
    tasks: list[str] | tuple[str, ...], split: str, size: int, seed: int, unique: bool = True
) -> list[Problem]:
    """`size` problems of `split`, drawn deterministically from `seed` over the task mix."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"data.tasks: unknown task(s) {unknown}; valid: {sorted(TASKS)}")
    rng = random.Random(f"{seed}-{split}-{'-'.join(tasks)}")
    out: list[Problem] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < size:
        attempts += 1
        if attempts > 200 * size + 10_000:
            raise ValueError(f"could not draw {size} distinct {split} problems of {tasks}")
        problem = TASKS[tasks[len(out) % len(tasks)]](rng)
        if split_of(problem.prompt) != split or (unique and problem.prompt in seen):
            continue
        seen.add(problem.prompt)
        out.append(problem)
    return out


def corrupt(reference: str, rng: random.Random, alphabet: str = "0123456789") -> str:
    """A plausible wrong (or right) answer: 0-3 random edits, sometimes the reversed answer."""
    if len(reference) > 1 and rng.random() < 0.1:
        return reference[::-1]
    chars = list(reference)
    for _ in range(rng.choice((0, 1, 1, 2, 3))):
        op = rng.random()
        pos = rng.randrange(len(chars) + 1)
        if op < 0.5 and chars:
            chars[min(pos, len(chars) - 1)] = rng.choice(alphabet)
        elif op < 0.75 and len(chars) > 1:
            del chars[min(pos, len(chars) - 1)]
        else:
            chars.insert(pos, rng.choice(alphabet))
    return "".join(chars)
