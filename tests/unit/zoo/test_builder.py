"""The toy zoo builder: HF folders, determinism, reuse from the cache (verified, corrupt entries
rebuilt, concurrent builders), training signal."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pad_lightning.runtime.errors import ConfigError
from pad_lightning.zoo import builder as zoo
from pad_lightning.zoo import staging
from pad_lightning.zoo.builder import ModelSpec, ZooConfig, ensure_zoo, entry_problem, file_records

TEACHER = ModelSpec(
    hidden_size=32,
    num_layers=1,
    num_heads=2,
    intermediate_size=64,
    max_steps=40,
    batch_size=16,
    eval_every=20,
    target_accuracy=1.0,
    judge_steps=10,
)
STUDENT = ModelSpec(
    hidden_size=16,
    num_layers=1,
    num_heads=2,
    intermediate_size=32,
    max_steps=10,
    batch_size=16,
    eval_every=5,
    target_accuracy=1.0,
)


def _cfg(cache) -> ZooConfig:
    return ZooConfig(cache_dir=str(cache), eval_size=16, teacher=TEACHER, student=STUDENT)


def test_zoo_builds_hf_folders_deterministically_and_reuses_them(tmp_path):
    root = ensure_zoo(_cfg(tmp_path / "a"))
    card = json.loads((root / "card.json").read_text())
    assert card["models"]["teacher"]["steps"] == 40
    assert card["models"]["teacher"]["judge_steps"] == 10
    assert 0 <= card["models"]["teacher"]["judge_accuracy"] <= 1
    assert card["models"]["student"]["params"] < card["models"]["teacher"]["params"]
    for role in ("teacher", "student"):
        assert (root / role / "model.safetensors").exists()
        tokenizer = AutoTokenizer.from_pretrained(root / role)
        assert tokenizer.chat_template and tokenizer.eos_token == "<|end|>"
        model = AutoModelForCausalLM.from_pretrained(root / role)
        assert model.generation_config.eos_token_id == tokenizer.eos_token_id

    assert card["files"] == file_records(root)  # size and sha256 of every model file
    assert {"teacher/model.safetensors", "student/tokenizer.json"} <= set(card["files"])

    mtime = (root / "teacher" / "model.safetensors").stat().st_mtime_ns
    assert ensure_zoo(_cfg(tmp_path / "a")) == root  # cached: not rebuilt
    assert (root / "teacher" / "model.safetensors").stat().st_mtime_ns == mtime

    other = ensure_zoo(_cfg(tmp_path / "b"))  # same config elsewhere: identical weights
    a = AutoModelForCausalLM.from_pretrained(root / "teacher").state_dict()
    b = AutoModelForCausalLM.from_pretrained(other / "teacher").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_zoo_key_changes_with_anything_that_shapes_the_models(tmp_path):
    base = _cfg(tmp_path)
    assert base.key() == _cfg(tmp_path / "elsewhere").key()  # the cache dir is not part of it
    changed = _cfg(tmp_path)
    changed.student = ModelSpec(**{**STUDENT.__dict__, "max_steps": 11})
    assert changed.key() != base.key()
    assert ZooConfig(cache_dir=str(tmp_path), tasks=["add"]).key().startswith("add-")


def test_sft_learns_the_task(tmp_path):
    """A little SFT must beat the untrained model's validation quality."""
    from pad_lightning.data.tasks import sample_problems
    from pad_lightning.zoo.builder import answer_accuracy, build_model, train_model
    from pad_lightning.zoo.tokenizer import build_char_tokenizer

    cfg = _cfg(tmp_path)
    spec = ModelSpec(
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        intermediate_size=128,
        max_steps=120,
        batch_size=32,
        eval_every=60,
        target_accuracy=1.0,
    )
    tok = build_char_tokenizer()
    val = sample_problems(cfg.tasks, "val", 64, 0)
    untrained = answer_accuracy(build_model(spec, tok, 0), tok, val)["quality"]
    model, info = train_model(cfg, spec, tok, "student")
    trained = answer_accuracy(model, tok, val)["quality"]
    assert info["steps"] == 120
    assert trained > untrained + 0.2


# -- verified reuse: corrupt entries, read-only caches, concurrent builders ---------------------


@pytest.fixture
def quick_train(monkeypatch) -> list[str]:
    """Replace SFT by the untrained (seeded, deterministic) model: a zoo build takes a second.
    Returns the list of roles trained so far."""
    trained: list[str] = []

    def train(cfg, spec, tokenizer, role, student=None):
        trained.append(role)
        model = zoo.build_model(spec, tokenizer, seed=cfg.seed + (role == "student"))
        return model, {"steps": 0, "val_history": [], "seconds": 0.0}

    monkeypatch.setattr(zoo, "train_model", train)
    return trained


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # a weight byte: same size, valid header
    path.write_bytes(bytes(data))


def _rebuild_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("zoo ")]


@pytest.mark.parametrize(
    ("file", "corrupt", "problem"),
    [
        ("teacher/model.safetensors", _truncate, "teacher/model.safetensors is corrupt or "
         "truncated ({half} bytes, card.json records {size})"),
        ("teacher/model.safetensors", _flip_byte, "teacher/model.safetensors is corrupt (its "
         "sha256 differs from card.json's)"),
        ("student/model.safetensors", Path.unlink, "student/model.safetensors is missing"),
        ("student/tokenizer.json", _truncate, "student/tokenizer.json is corrupt or truncated "
         "({half} bytes, card.json records {size})"),
        ("card.json", lambda p: p.write_text('{"key": '), "card.json is corrupt "
         "(JSONDecodeError: Expecting value: line 1 column 9 (char 8))"),
        ("card.json", Path.unlink, "card.json is missing"),
    ],
)  # fmt: skip
def test_corrupt_entry_is_rebuilt_with_one_line(
    tmp_path, capsys, quick_train, file, corrupt, problem
):
    cfg = _cfg(tmp_path)
    root = ensure_zoo(cfg)
    records = json.loads((root / "card.json").read_text())["files"]
    size = (root / file).stat().st_size
    corrupt(root / file)
    capsys.readouterr()

    assert ensure_zoo(cfg) == root
    problem = problem.format(half=size // 2, size=size)
    assert _rebuild_lines(capsys.readouterr().out) == [f"zoo {cfg.key()}: {problem}; rebuilding"]
    assert quick_train == ["teacher", "student"] * 2
    assert entry_problem(root) == (None, json.loads((root / "card.json").read_text()))
    assert json.loads((root / "card.json").read_text())["files"] == records  # same models again
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no staging or stale folders

    capsys.readouterr()
    assert ensure_zoo(cfg) == root  # intact now: reused silently
    assert _rebuild_lines(capsys.readouterr().out) == [] and len(quick_train) == 4


def test_entry_without_file_records_is_checked_and_gets_them(tmp_path, capsys, quick_train):
    """Entries written before the records existed (ZOO_VERSION unchanged): presence, JSON and
    safetensors headers are checked, and the records are written on reuse."""
    cfg = _cfg(tmp_path)
    root = ensure_zoo(cfg)
    card = json.loads((root / "card.json").read_text())
    records = card.pop("files")
    (root / "card.json").write_text(json.dumps(card))
    mtime = (root / "teacher" / "model.safetensors").stat().st_mtime_ns

    assert ensure_zoo(cfg) == root
    assert json.loads((root / "card.json").read_text())["files"] == records
    assert (root / "teacher" / "model.safetensors").stat().st_mtime_ns == mtime  # not rebuilt
    assert len(quick_train) == 2

    (root / "card.json").write_text(json.dumps(card))  # old card again, and corrupt weights
    _truncate(root / "teacher" / "model.safetensors")
    capsys.readouterr()
    assert ensure_zoo(cfg) == root
    assert _rebuild_lines(capsys.readouterr().out) == [
        f"zoo {cfg.key()}: teacher/model.safetensors is corrupt or truncated (SafetensorError: "
        "Error while deserializing header: incomplete metadata, file not fully covered); "
        "rebuilding"
    ]
    assert json.loads((root / "card.json").read_text())["files"] == records

    (root / "card.json").write_text(json.dumps(card))  # old card, student without tokenizer
    (root / "student" / "tokenizer.json").unlink()
    assert entry_problem(root)[0] == "student/tokenizer.json is missing"


def _permission_denied(*args, **kwargs):
    raise PermissionError(13, "Permission denied")


def test_corrupt_entry_in_a_read_only_cache_is_a_config_error(tmp_path, monkeypatch, quick_train):
    cfg = _cfg(tmp_path)
    root = ensure_zoo(cfg)
    size = (root / "teacher" / "model.safetensors").stat().st_size
    _truncate(root / "teacher" / "model.safetensors")
    monkeypatch.setattr(Path, "rename", _permission_denied)  # as a read-only cache dir (any user)
    with pytest.raises(ConfigError) as info:
        ensure_zoo(cfg)
    assert str(info.value) == (
        f"model.zoo.cache_dir={str(tmp_path)!r}: the zoo entry {root} is corrupt "
        f"(teacher/model.safetensors is corrupt or truncated ({size // 2} bytes, card.json "
        f"records {size})) and cannot be rebuilt (PermissionError: [Errno 13] Permission denied); "
        f"remove it with `rm -rf {root}`, or set model.zoo.cache_dir (or PAD_LIGHTNING_CACHE) "
        "to a writable folder"
    )
    assert len(quick_train) == 2  # refused before any training

    fresh = _cfg(tmp_path / "fresh")
    monkeypatch.setattr(staging.tempfile, "mkdtemp", _permission_denied)
    with pytest.raises(ConfigError) as info:
        ensure_zoo(fresh)
    assert str(info.value) == (
        f"model.zoo.cache_dir={fresh.cache_dir!r}: cannot build the zoo entry {fresh.root()} "
        "(PermissionError: [Errno 13] Permission denied); set model.zoo.cache_dir (or "
        "PAD_LIGHTNING_CACHE) to a writable folder"
    )


def test_later_builder_keeps_the_entry_another_process_finished_first(
    tmp_path, capsys, monkeypatch, quick_train
):
    """Two processes build the same entry; the one finishing second discards its own staging
    folder and keeps the first one's entry (which that process may already be loading)."""
    done = ensure_zoo(_cfg(tmp_path / "done"))
    cfg = _cfg(tmp_path / "cache")
    root = cfg.root()
    first = zoo.train_model
    inode = []

    def other_process_finishes_meanwhile(cfg, spec, tokenizer, role, student=None):
        if not root.exists():
            shutil.copytree(done, root)
            inode.append((root / "teacher" / "model.safetensors").stat().st_ino)
        return first(cfg, spec, tokenizer, role)

    monkeypatch.setattr(zoo, "train_model", other_process_finishes_meanwhile)
    capsys.readouterr()
    assert ensure_zoo(cfg) == root
    assert (root / "teacher" / "model.safetensors").stat().st_ino == inode[0]  # not replaced
    assert f"zoo {cfg.key()}: another process built this entry first; using it" in (
        capsys.readouterr().out.splitlines()
    )
    assert [p.name for p in root.parent.iterdir()] == [root.name]  # its staging folder is gone
    assert entry_problem(root)[0] is None


def test_two_concurrent_builders_of_one_entry(tmp_path, monkeypatch, quick_train):
    """Both threads build, then rename their staging folder at the same moment: one installs,
    the other keeps that entry; neither fails."""
    cfg = _cfg(tmp_path)
    barrier = threading.Barrier(2, timeout=60)
    install = zoo._install
    installed, errors = [], []

    def synchronised_install(*args):
        barrier.wait()
        installed.append(install(*args))
        return installed[-1]

    def build():
        try:
            assert ensure_zoo(cfg) == cfg.root()
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    monkeypatch.setattr(zoo, "_install", synchronised_install)
    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(installed) == [False, True]
    assert entry_problem(cfg.root())[0] is None
    assert [p.name for p in tmp_path.iterdir()] == [cfg.root().name]
