"""Tests for the toy task families (pad_lightning.data.tasks)."""

from __future__ import annotations

import random

import pytest

from pad_lightning.data.tasks import (
    SPLITS,
    TASKS,
    corrupt,
    exact_match,
    levenshtein,
    quality,
    sample_problems,
    split_of,
)

ALL_TASKS = ["add", "reverse", "sort"]


def test_levenshtein_known_values():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "") == 0
    assert levenshtein("", "abc") == 3
    assert levenshtein("abc", "") == 3
    assert levenshtein("abc", "abc") == 0
    assert levenshtein("flaw", "lawn") == 2
    assert levenshtein("abcd", "abxd") == 1


def test_levenshtein_symmetric():
    rng = random.Random(0)
    for _ in range(200):
        a = "".join(rng.choice("abc") for _ in range(rng.randint(0, 6)))
        b = "".join(rng.choice("abc") for _ in range(rng.randint(0, 6)))
        d = levenshtein(a, b)
        assert d == levenshtein(b, a)
        assert abs(len(a) - len(b)) <= d <= max(len(a), len(b))
        assert (d == 0) == (a == b)


def test_quality_known_values():
    assert quality("abc", "abc") == 1.0
    assert quality("xyz", "abc") == 0.0
    assert quality("abxd", "abcd") == pytest.approx(0.75)
    assert quality("  abc \n", "abc") == 1.0  # the response is stripped
    assert quality("", "") == 1.0
    assert quality("", "abcd") == 0.0
    assert quality("abcdefgh", "abcd") == pytest.approx(0.5)  # 4 insertions / 8
    assert exact_match(" abc\n", "abc")
    assert not exact_match("abd", "abc")


def test_splits_fixed_and_disjoint():
    train = sample_problems(ALL_TASKS, "train", 300, seed=1)
    train2 = sample_problems(ALL_TASKS, "train", 120, seed=7)
    val = sample_problems(ALL_TASKS, "val", 60, seed=2)
    test = sample_problems(ALL_TASKS, "test", 60, seed=3)
    test2 = sample_problems(["reverse"], "test", 40, seed=11)
    by_split = {
        "train": {p.prompt for p in train + train2},
        "val": {p.prompt for p in val},
        "test": {p.prompt for p in test + test2},
    }
    assert not by_split["train"] & by_split["val"]
    assert not by_split["train"] & by_split["test"]
    assert not by_split["val"] & by_split["test"]
    for split, prompts in by_split.items():
        for prompt in prompts:
            assert split_of(prompt) == split
            assert split_of(prompt) == split_of(prompt)  # deterministic
    assert len({p.prompt for p in train}) == len(train)  # unique by default
    assert {p.task for p in train} == set(ALL_TASKS)


def test_split_of_deterministic_and_roughly_proportional():
    rng = random.Random(0)
    prompts = [f"rev {rng.random()}" for _ in range(4000)]
    splits = [split_of(p) for p in prompts]
    assert splits == [split_of(p) for p in prompts]
    assert set(splits) <= set(SPLITS)
    share = {s: splits.count(s) / len(splits) for s in SPLITS}
    assert 0.03 < share["test"] < 0.07
    assert 0.03 < share["val"] < 0.07


def test_references_correct():
    problems = sample_problems(ALL_TASKS, "train", 150, seed=5)
    seen = set()
    for p in problems:
        seen.add(p.task)
        if p.task == "add":
            assert p.prompt.endswith("=")
            a, b = p.prompt[:-1].split("+")
            assert len(a) == len(b) == 3  # zero-padded to max_digits
            assert p.reference == str(int(a) + int(b))[::-1]
        elif p.task == "reverse":
            assert p.prompt.startswith("rev ")
            word = p.prompt[len("rev ") :]
            assert 3 <= len(word) <= 7
            assert p.reference == word[::-1]
        elif p.task == "sort":
            assert p.prompt.startswith("sort ")
            items = p.prompt[len("sort ") :].split(" ")
            assert p.reference == " ".join(sorted(items, key=int))
        assert exact_match(p.reference, p.reference)
    assert seen == set(ALL_TASKS)


def test_task_mix_round_robin():
    problems = sample_problems(ALL_TASKS, "val", 30, seed=0)
    assert [p.task for p in problems] == ALL_TASKS * 10


def test_determinism():
    a = sample_problems(ALL_TASKS, "train", 50, seed=3)
    b = sample_problems(ALL_TASKS, "train", 50, seed=3)
    c = sample_problems(ALL_TASKS, "train", 50, seed=4)
    assert a == b
    assert a != c


def test_unknown_task_raises():
    with pytest.raises(ValueError) as err:
        sample_problems(["add", "multiply"], "train", 5, seed=0)
    message = str(err.value)
    assert "multiply" in message
    for name in TASKS:
        assert name in message
    with pytest.raises(ValueError):
        sample_problems([], "train", 5, seed=0)
    with pytest.raises(ValueError, match="split"):
        sample_problems(["add"], "dev", 5, seed=0)


def test_corrupt_quality_range():
    rng = random.Random(0)
    problems = sample_problems(ALL_TASKS, "train", 60, seed=9)
    qualities, equal = [], 0
    for p in problems:
        for _ in range(10):
            c = corrupt(p.reference, rng)
            q = quality(c, p.reference)
            assert 0.0 <= q <= 1.0
            qualities.append(q)
            equal += c == p.reference
    assert 0 < equal < len(qualities)  # sometimes right, mostly wrong
    assert len(set(qualities)) > 3  # graded, not binary
    # a custom alphabet is respected
    for _ in range(100):
        assert set(corrupt("abc", rng, alphabet="abc")) <= set("abc")
