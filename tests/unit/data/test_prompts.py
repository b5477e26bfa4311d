"""Tests for prompt datasets (pad_lightning.data.prompts, data=jsonl|parquet|csv|ultrafeedback).

Every test writes its data files in tmp_path and uses a datasets cache there (offline).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from pad_lightning.data.answers import quality_matrix
from pad_lightning.data.problems import build_problems
from pad_lightning.data.prompts import check_data, check_prompt_lengths, load_prompts, prompt_key
from pad_lightning.lm.chat import encode_prompt
from pad_lightning.runtime.errors import DataError
from pad_lightning.zoo.tokenizer import build_char_tokenizer

CONF = Path(__file__).resolve().parents[3] / "conf" / "data"
CHAT = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "rev abc"},
    {"role": "assistant", "content": "cba"},
]


def cfg_for(name: str, tmp_path: Path, **keys):
    """The shipped conf/data/<name>.yaml with a private datasets cache and `keys` set."""
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    cfg.cache_dir = str(tmp_path / "hf-cache")
    for key, value in keys.items():
        cfg[key] = value
    return cfg


def write_jsonl(path: Path, records: list, blank_after: int | None = None) -> Path:
    lines = [json.dumps(r) for r in records]
    if blank_after is not None:
        lines.insert(blank_after, "")
    path.write_text("\n".join(lines) + "\n")
    return path


def texts(records) -> list:
    return [r.prompt for r in records]


def numbered(count: int, start: int = 0) -> list[str]:
    return [f"question number {i}" for i in range(start, start + count)]


# ---------------------------------------------------------------- formats round-trip


def test_jsonl_text_with_own_val_and_test_files(tmp_path):
    train = write_jsonl(
        tmp_path / "train.jsonl",
        [{"prompt": p, "id": i} for i, p in enumerate(numbered(6))],
        blank_after=2,
    )
    val = write_jsonl(
        tmp_path / "val.jsonl", [{"prompt": "val one", "id": "v1"}, {"prompt": "val two", "id": 2}]
    )
    test = write_jsonl(tmp_path / "test.jsonl", [{"prompt": "test one", "id": None}])
    cfg = cfg_for(
        "jsonl", tmp_path, path=str(train), val_path=str(val), test_path=str(test), id_column="id"
    )
    splits = load_prompts(cfg)
    assert sorted(texts(splits.train)) == sorted(numbered(6))
    assert sorted(texts(splits.val)) == ["val one", "val two"]
    assert texts(splits.test) == ["test one"]
    ids = {r.prompt: r.id for r in splits.train}
    assert ids == {p: str(i) for i, p in enumerate(numbered(6))}
    assert sorted(r.id for r in splits.val) == ["2", "v1"] and splits.test[0].id is None
    assert all(r.reference is None for r in splits.train + splits.val + splits.test)
    assert splits.held_out == []
    assert splits.reports["train"].rows == 6 and splits.reports["train"].kept == 6


def test_jsonl_messages_trailing_assistant_turn_dropped(tmp_path):
    records = [
        {"messages": CHAT},
        {"messages": [{"role": "user", "content": "sort 3 1", "name": "x"}]},
        {"messages": [*CHAT, {"role": "user", "content": "again"}]},
    ]
    chat = write_jsonl(tmp_path / "chat.jsonl", records)
    train = write_jsonl(tmp_path / "train.jsonl", [{"messages": p} for p in numbered(3)])
    cfg = cfg_for("jsonl", tmp_path, path=str(train), test_path=str(chat), val_size=1)
    cfg.prompt_column, cfg.test_size = "messages", None
    splits = load_prompts(cfg)
    assert splits.reports["test"].assistant_turns_dropped == 1
    assert (
        sorted(texts(splits.test), key=len)
        == [
            [{"role": "user", "content": "sort 3 1"}],  # keys other than role and content dropped
            CHAT[:2],  # the assistant answer dropped
            [*CHAT, {"role": "user", "content": "again"}],
        ]
    )
    assert len(splits.train) == 2 and len(splits.val) == 1


def test_same_file_for_train_and_test_is_an_overlap_error(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": CHAT}])
    cfg = cfg_for("jsonl", tmp_path, path=str(path), test_path=str(path), val_size=1)
    assert error_of(cfg) == (
        f"{path} (data.path): no prompts left after removing those also in data.test_path"
    )


def test_parquet_text_and_messages(tmp_path):
    text = tmp_path / "text.parquet"
    pd.DataFrame({"q": numbered(5), "uid": list("abcde")}).to_parquet(text)
    cfg = cfg_for("parquet", tmp_path, path=str(text), prompt_column="q", id_column="uid")
    cfg.val_size, cfg.test_size = 1, 2
    splits = load_prompts(cfg)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (2, 1, 2)
    everything = splits.train + splits.val + splits.test
    assert sorted((r.prompt, r.id) for r in everything) == list(
        zip(numbered(5), "abcde", strict=True)
    )

    chat = tmp_path / "chat.parquet"
    user_x = [{"role": "user", "content": "x"}]
    pd.DataFrame({"prompt": [CHAT, CHAT[1:2], user_x]}).to_parquet(chat)
    cfg = cfg_for("parquet", tmp_path, path=str(chat), val_size=1, test_size=1)
    splits = load_prompts(cfg)
    everything = texts(splits.train + splits.val + splits.test)
    assert sorted(everything, key=json.dumps) == sorted(
        [CHAT[:2], CHAT[1:2], user_x], key=json.dumps
    )
    assert splits.reports["train"].assistant_turns_dropped == 1
    cfg.test_path = str(text)  # val/test files are read with the same column names
    assert error_of(cfg) == f"{text}: no column 'prompt' (data.prompt_column); columns: q, uid"


def test_parquet_messages_deduplicated_against_their_answered_copy(tmp_path):
    chat = tmp_path / "chat.parquet"
    answered = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    others = [[{"role": "user", "content": p}] for p in numbered(2)]
    pd.DataFrame({"prompt": [CHAT, CHAT[:2], answered, answered[:1], *others]}).to_parquet(chat)
    text = tmp_path / "text.parquet"
    pd.DataFrame({"prompt": ["hi ", "other"]}).to_parquet(text)
    cfg = cfg_for("parquet", tmp_path, path=str(chat), test_path=str(text), val_size=1)
    splits = load_prompts(cfg)
    train = splits.reports["train"]
    assert train.rows == 6 and train.assistant_turns_dropped == 2
    assert train.dropped["duplicate"] == 2  # CHAT == CHAT[:2], answered == answered[:1]
    assert train.dropped["overlap"] == 1  # the test string "hi " equals the user turn "hi"
    assert sorted(texts(splits.test)) == ["hi ", "other"]
    kept = texts(splits.train + splits.val)
    assert sorted(kept, key=json.dumps) == sorted([CHAT[:2], *others], key=json.dumps)


def test_csv_cells_are_text(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('prompt,id\nNA,1\nNone,2\n"a, quoted\nprompt",3\n,4\n5,5\n')
    cfg = cfg_for("csv", tmp_path, path=str(path), id_column="id", val_size=1, test_size=1)
    splits = load_prompts(cfg)
    everything = splits.train + splits.val + splits.test
    assert sorted(texts(everything)) == sorted(["NA", "None", "a, quoted\nprompt", "5"])
    assert splits.reports["train"].dropped["empty"] == 1
    assert {r.prompt: r.id for r in everything}["None"] == "2"


def write_hub_folder(root: Path, train: list, test: list) -> Path:
    """A local copy of a hub dataset: data/<split>-00000-of-00001.parquet per split."""
    (root / "data").mkdir(parents=True)
    for split, rows in (("train_prefs", train), ("test_prefs", test)):
        frame = pd.DataFrame(
            {
                "prompt": [p for p, _ in rows],
                "prompt_id": [f"id-{p}" for p, _ in rows],
                "messages": [
                    [{"role": "user", "content": p}, {"role": "assistant", "content": a}]
                    for p, a in rows
                ],
            }
        )
        frame.to_parquet(root / "data" / f"{split}-00000-of-00001.parquet")
    return root


def test_ultrafeedback_local_folder(tmp_path):
    train = [(p, "answer") for p in numbered(8)]
    test = [("test prompt", "a"), (numbered(1)[0], "b")]  # the second one is also in train
    folder = write_hub_folder(tmp_path / "ufb", train, test)
    cfg = cfg_for("ultrafeedback", tmp_path, path=str(folder), val_size=2, test_size=None)
    splits = load_prompts(cfg)
    assert sorted(texts(splits.test)) == sorted(["test prompt", numbered(1)[0]])
    assert splits.reports["train"].dropped["overlap"] == 1
    assert len(splits.val) == 2 and len(splits.train) == 5
    ids = {r.prompt: r.id for r in splits.train + splits.val + splits.test}
    assert ids == {p: f"id-{p}" for p in numbered(8)[1:] + ["test prompt", numbered(1)[0]]}
    assert splits.held_out == ["val"]
    # the conversation column: trailing assistant answers dropped, same prompts as messages
    cfg.prompt_column = "messages"
    chat = load_prompts(cfg)
    assert chat.reports["test"].assistant_turns_dropped == 2
    assert sorted(p[0]["content"] for p in texts(chat.test)) == sorted(texts(splits.test))


def test_hub_id_offline_cached_and_not_cached(tmp_path, monkeypatch):
    from datasets import config, load_dataset

    monkeypatch.setattr(config, "HF_HUB_OFFLINE", True)
    folder = write_hub_folder(tmp_path / "ufb", [(p, "a") for p in numbered(6)], [("t", "a")])
    cache = tmp_path / "hf-cache"
    load_dataset(str(folder), cache_dir=str(cache))
    # what a download with network leaves in the cache: <owner>___<name>/<config>/<version>/<sha>
    (built,) = (p for p in (cache / "ufb" / "default" / "0.0.0").iterdir() if p.is_dir())
    target = cache / "someone___prompts" / "default" / "0.0.0" / "abc123"
    shutil.copytree(built, target)
    for arrow in target.glob("ufb-*.arrow"):
        arrow.rename(arrow.with_name(arrow.name.replace("ufb-", "prompts-")))

    cfg = cfg_for("ultrafeedback", tmp_path, path="someone/prompts", val_size=1)
    check_data(cfg)
    splits = load_prompts(cfg)
    assert texts(splits.test) == ["t"] and len(splits.train) == 5

    cfg.path = "someone/not-downloaded"
    message = (
        "data.path='someone/not-downloaded': not in the local datasets cache and "
        "HF_DATASETS_OFFLINE=1; download it once with network (HF_DATASETS_OFFLINE=0 python -m "
        "pad_lightning.run data=ultrafeedback) or set data.path to a local dataset folder"
    )
    for call in (check_data, load_prompts):
        with pytest.raises(DataError) as err:
            call(cfg)
        assert str(err.value) == message

    cfg.path = "someone/prompts"
    cfg.test_split = "test"
    with pytest.raises(DataError) as err:
        check_data(cfg)
    assert str(err.value) == (
        "data.test_split='test': not a split of someone/prompts; "
        "splits: ['test_prefs', 'train_prefs']"
    )


# ---------------------------------------------------------------- split


def split_sets(path: Path, tmp_path: Path, **keys) -> tuple[list, list, list]:
    cfg = cfg_for("jsonl", tmp_path, path=str(path), val_size=10, test_size=15, **keys)
    splits = load_prompts(cfg)
    return texts(splits.train), texts(splits.val), texts(splits.test)


def test_split_deterministic_disjoint_and_order_independent(tmp_path):
    prompts = numbered(100)
    first = split_sets(
        write_jsonl(tmp_path / "a.jsonl", [{"prompt": p} for p in prompts]), tmp_path
    )
    train, val, test = first
    assert (len(train), len(val), len(test)) == (75, 10, 15)
    assert set(train) | set(val) | set(test) == set(prompts)
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    assert split_sets(tmp_path / "a.jsonl", tmp_path) == first  # deterministic

    shuffled = prompts[:]
    random.Random(0).shuffle(shuffled)
    other = split_sets(
        write_jsonl(tmp_path / "b.jsonl", [{"prompt": p} for p in shuffled]), tmp_path
    )
    assert other == first  # same sets, same order: the file's order does not matter

    reseeded = split_sets(tmp_path / "a.jsonl", tmp_path, split_seed=1)
    assert set(reseeded[2]) != set(test)  # split_seed salts the hash

    capped = split_sets(tmp_path / "a.jsonl", tmp_path, train_size=20)
    assert capped[0] == train[:20] and capped[1:] == (val, test)


def test_split_keeps_test_when_more_prompts_arrive(tmp_path):
    """Held-out sets are the smallest hashes: new prompts change a set only by displacing."""
    base = split_sets(
        write_jsonl(tmp_path / "a.jsonl", [{"prompt": p} for p in numbered(100)]), tmp_path
    )
    more = split_sets(
        write_jsonl(tmp_path / "b.jsonl", [{"prompt": p} for p in numbered(101)]), tmp_path
    )
    assert len(set(more[2]) & set(base[2])) >= 14
    assert len(set(more[1]) & set(base[1])) >= 8


# ---------------------------------------------------------------- filters


def test_filter_and_dedup_counts(tmp_path):
    tok = build_char_tokenizer()
    records = (
        [{"prompt": p} for p in numbered(30)]
        + [{"prompt": "question   number 1 "}, {"prompt": "question number\n2"}]  # duplicates
        + [{"prompt": " \n"}, {"prompt": ""}]  # empty
        + [{"prompt": "x" * 40}]  # over max_prompt_chars
        + [{"prompt": "y" * 24}]  # within 25 chars, over the token limit
    )
    path = write_jsonl(tmp_path / "p.jsonl", records)
    limit = len(encode_prompt(tok, numbered(30)[-1]))
    assert len(encode_prompt(tok, "y" * 24)) > limit
    cfg = cfg_for("jsonl", tmp_path, path=str(path), val_size=2, test_size=3, max_prompt_chars=25)
    cfg.max_prompt_tokens = limit
    splits = load_prompts(cfg, tokenizer=tok)
    report = splits.reports["train"]
    assert report.rows == 36
    assert report.dropped == {
        "empty": 2,
        "duplicate": 2,
        "max_prompt_chars": 1,
        "max_prompt_tokens": 1,
        "overlap": 0,
    }
    assert report.kept == 25 and len(splits.val) == 2 and len(splits.test) == 3
    lines = splits.summary()
    assert lines[0] == (
        f"data train: {path}: 36 rows, dropped 2 empty, 2 duplicate, 1 max_prompt_chars, "
        "1 max_prompt_tokens, kept 25"
    )
    assert (
        lines[-1]
        == "data split: 25 train / 2 val / 3 test (test and val held out of train by hash)"
    )

    cfg.dedup = False
    cfg.max_prompt_tokens = None
    undeduped = load_prompts(cfg)
    report = undeduped.reports["train"]
    assert "duplicate" not in report.dropped
    # 30 prompts + 2 copies + the "y" prompt, minus 5 held out (and copies of held-out ones)
    assert len(undeduped.train) + report.dropped["overlap"] == 33 - 5
    held = {prompt_key(p) for p in texts(undeduped.val + undeduped.test)}
    assert not held & {prompt_key(p) for p in texts(undeduped.train)}
    with pytest.raises(DataError) as err:
        cfg.max_prompt_tokens = limit
        load_prompts(cfg)
    assert str(err.value) == (
        f"data.max_prompt_tokens={limit}: needs the student tokenizer "
        "(build_problems(cfg, tokenizer=...)); or set data.max_prompt_tokens=null"
    )


def test_prompt_key_normalises_whitespace_and_string_turns():
    assert prompt_key("a  b\n") == prompt_key([{"role": "user", "content": "a b"}])
    assert prompt_key("a b") != prompt_key([{"role": "system", "content": "a b"}])


def test_records_skip_reference_metrics_and_build_problems_logs(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in numbered(5)])
    lines: list[str] = []
    train, val, test = build_problems(
        cfg_for("jsonl", tmp_path, path=str(path), val_size=1, test_size=1), log=lines.append
    )
    assert (len(train), len(val), len(test)) == (3, 1, 1)
    assert quality_matrix([["a", "b"]], test) is None
    assert lines[-1].startswith("data split: 3 train / 1 val / 1 test")


# ---------------------------------------------------------------- errors


def error_of(cfg, tokenizer=None) -> str:
    with pytest.raises(DataError) as err:
        load_prompts(cfg, tokenizer)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_a_folder_given_as_the_file(tmp_path):
    cfg = cfg_for("jsonl", tmp_path, path=str(tmp_path))
    assert error_of(cfg) == (
        f"data.path={str(tmp_path)!r}: is a folder; data=jsonl reads one .jsonl file "
        "(data=ultrafeedback reads a dataset folder)"
    )


def test_prompt_that_does_not_fit_the_model_positions(tmp_path):
    tok = build_char_tokenizer()
    rows = [{"prompt": f"question {i}"} for i in range(6)] + [{"prompt": "x" * 300}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    splits = load_prompts(cfg_for("jsonl", tmp_path, path=str(path), val_size=1, test_size=1))
    sets = {"train": splits.train, "val": splits.val, "test": splits.test}
    with pytest.raises(DataError) as err:
        check_prompt_lengths(sets, tok, "teacher", 256, 8)
    message = str(err.value)
    assert message.startswith(f"{path} line 7: the prompt is 3")
    assert "with rollout.max_new_tokens=8 it does not fit the teacher's 256 positions" in message
    assert "data.max_prompt_tokens=248" in message and "\n" not in message
    check_prompt_lengths(sets, tok, "teacher", 1024, 8)  # fits
    with pytest.raises(DataError, match=r"^rollout.max_new_tokens=256: leaves no room"):
        check_prompt_lengths(sets, tok, "student", 256, 256)


def test_missing_file_and_bad_keys(tmp_path):
    cfg = cfg_for("jsonl", tmp_path, path=str(tmp_path / "nope.jsonl"))
    assert error_of(cfg) == f"data.path={str(tmp_path / 'nope.jsonl')!r}: no such file"
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}])
    cfg.path, cfg.test_path = str(path), "missing/test.jsonl"
    with pytest.raises(DataError, match=r"^data\.test_path='missing/test\.jsonl': no such file$"):
        check_data(cfg)
    cfg = cfg_for("jsonl", tmp_path)
    assert error_of(cfg) == "data.path=None: required for data=jsonl: set data.path=<a .jsonl file>"
    cfg = cfg_for("jsonl", tmp_path, path=str(path), val_size=None)
    assert error_of(cfg) == (
        "data.val_size=None: must be an integer >= 1 (null, i.e. all, only with data.val_path)"
    )
    cfg = cfg_for("ultrafeedback", tmp_path, test_size=0)
    assert error_of(cfg) == (
        "data.test_size=0: must be an integer >= 1 (null, i.e. all, only with data.test_split)"
    )
    cfg = cfg_for("csv", tmp_path, path=str(path), max_prompt_chars=-1)
    assert error_of(cfg) == "data.max_prompt_chars=-1: must be null or an integer >= 1"
    (tmp_path / "empty").mkdir()
    cfg = cfg_for("ultrafeedback", tmp_path, path=str(tmp_path / "empty"))
    assert error_of(cfg) == (
        f"data.path={str(tmp_path / 'empty')!r}: no data files in this folder (expected e.g. "
        "data/<split>-00000-of-00001.parquet or <split>.jsonl)"
    )
    cfg = cfg_for("jsonl", tmp_path, path=str(path), split_seed="a")
    assert error_of(cfg) == "data.split_seed='a': must be an integer"
    cfg = cfg_for("ultrafeedback", tmp_path, path="/no/such/folder")
    assert (
        error_of(cfg)
        == "data.path='/no/such/folder': no such local folder (and not a hub id owner/name)"
    )


def test_unknown_name():
    cfg = OmegaConf.create({"name": "hf"})
    with pytest.raises(DataError) as err:
        check_data(cfg)
    assert str(err.value) == "data.name='hf': valid: csv, jsonl, parquet, toy, ultrafeedback"
    with pytest.raises(DataError, match="valid: csv, jsonl"):
        build_problems(cfg)


def test_missing_column(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "a", "id": 1}, {"text": "b", "extra": 2}])
    cfg = cfg_for("jsonl", tmp_path, path=str(path))
    assert error_of(cfg) == (
        f"{path}: no column 'prompt' (data.prompt_column); columns: extra, id, text"
    )
    parquet = tmp_path / "p.parquet"
    pd.DataFrame({"text": ["a"], "uid": ["x"]}).to_parquet(parquet)
    cfg = cfg_for("parquet", tmp_path, path=str(parquet), prompt_column="text", id_column="id")
    assert error_of(cfg) == f"{parquet}: no column 'id' (data.id_column); columns: text, uid"


def test_malformed_jsonl_lines(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b",}\n')
    cfg = cfg_for("jsonl", tmp_path, path=str(path))
    assert error_of(cfg) == (
        f"{path} line 3: malformed JSON (Expecting property name enclosed in double quotes, "
        "column 16); each line must be one JSON object"
    )
    path.write_text('{"prompt": "a"}\n["prompt", "b"]\n')
    assert (
        error_of(cfg)
        == f"{path} line 2: a JSON list, not an object; each line must be one JSON object"
    )
    path.write_bytes(b'{"prompt": "a"}\n{"prompt": "\xff"}\n')
    assert error_of(cfg) == f"{path} line 2: not UTF-8 text (invalid start byte at byte 13)"
    path.write_text("")
    assert error_of(cfg) == f"{path}: no prompts (the file has no JSON lines)"


def test_unreadable_csv_and_parquet(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("prompt,id\na,1\nb,2,3\n")
    assert error_of(cfg_for("csv", tmp_path, path=str(path))) == (
        f"{path}: cannot be read as csv (Error tokenizing data. C error: Expected 2 fields in "
        "line 3, saw 3)"
    )
    path = tmp_path / "bad.parquet"
    path.write_text("not parquet")
    assert error_of(cfg_for("parquet", tmp_path, path=str(path))).startswith(
        f"{path}: cannot be read as parquet (Parquet magic bytes not found in footer."
    )


def test_prompt_of_the_wrong_kind(tmp_path):
    path = tmp_path / "bad.jsonl"
    cfg = cfg_for("jsonl", tmp_path, path=str(path))
    path.write_text('{"prompt": "a"}\n{"prompt": 42}\n')
    assert error_of(cfg) == (
        f"{path} line 2: 'prompt' is 42 (int), neither a string nor a list of {{role, content}} "
        "messages"
    )
    path.write_text('{"prompt": "a"}\n\n{"prompt": [{"role": "user", "content": "b"}]}\n')
    assert error_of(cfg) == (
        f"{path} line 3: 'prompt' is a list but line 1 holds a string; use one kind of prompt "
        "per file"
    )
    write_jsonl(path, [{"prompt": CHAT}, {"prompt": [{"role": "user", "text": "b"}]}], 1)
    assert error_of(cfg) == (
        f"{path} line 3: message 1 of 'prompt' is {{'role': 'user', 'text': 'b'}}, not a "
        "{role, content} dict of strings"
    )
    write_jsonl(path, [{"prompt": CHAT[:1]}])
    assert error_of(cfg) == (
        f"{path} line 1: the messages of 'prompt' must end with a user turn once trailing "
        "assistant turns are dropped; last role: system"
    )
    parquet = tmp_path / "bad.parquet"
    pd.DataFrame({"prompt": ["a", None]}).to_parquet(parquet)
    cfg = cfg_for("parquet", tmp_path, path=str(parquet))
    assert error_of(cfg) == (
        f"{parquet} row 2: 'prompt' is None (NoneType), neither a string nor a list of "
        "{role, content} messages"
    )


def test_empty_after_filter_and_too_few_for_holdout(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in numbered(4)])
    cfg = cfg_for("jsonl", tmp_path, path=str(path), max_prompt_chars=5)
    assert error_of(cfg) == (
        f"{path} (data.path): no prompts left after the data.max_prompt_chars=5 filter "
        "(it dropped all 4)"
    )
    cfg = cfg_for("jsonl", tmp_path, path=str(path), val_size=2, test_size=2)
    assert error_of(cfg) == (
        f"{path} (data.path): 4 prompts after filters, not more than data.test_size + "
        "data.val_size = 4 (no training prompt left); lower them or set data.test_path / "
        "data.val_path"
    )
    blank = write_jsonl(tmp_path / "blank.jsonl", [{"prompt": " "}])
    cfg = cfg_for("jsonl", tmp_path, path=str(path), test_path=str(blank))
    assert error_of(cfg) == (
        f"{blank} (data.test_path): no prompts left after the empty filter (it dropped all 1)"
    )
