"""Tests for benchmark answer exports (pad_lightning.generate) on a tiny local student folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import sharpen, tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from pad_lightning.export.answers import (
    check_export,
    load_questions,
    markdown_counts,
    resolve_run_student,
)
from pad_lightning.generate import main
from pad_lightning.lm.generation import SamplingConfig, generate
from pad_lightning.runtime.errors import ExportError
from pad_lightning.zoo.tokenizer import build_char_tokenizer

MAX_NEW = 10
ALPACA = [
    {"instruction": "rev abc", "dataset": "toy"},
    {"instruction": "sort 3 1 2", "dataset": "toy"},
    {"instruction": "123 plus 456"},
]
MT = [
    {"question_id": 81, "category": "writing", "turns": ["rev abc", "now rev xyz"]},
    {"question_id": 82, "category": "math", "turns": ["sort 9 1 5", "and 2 8 4"]},
    {"question_id": 83, "category": "coding", "turns": ["hello there", "say more"]},
]
ARENA = [
    {"uid": "a1b2", "category": "hard_prompt", "subcategory": "x", "prompt": "rev hello"},
    {"uid": "c3d4", "category": "hard_prompt", "subcategory": "y", "prompt": "count 1 2 3"},
]


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory) -> Path:
    """A saved tiny student whose greedy outputs depend strongly on the prompt.

    Weights are scaled up and special tokens other than <|end|> are suppressed (saved in
    generation_config.json), so answers are printable texts that reveal any change of prompt.
    """
    tok = build_char_tokenizer()
    model = sharpen(tiny_model(tok, seed=0), tok)
    path = tmp_path_factory.mktemp("run") / "student"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def loaded(student_dir):
    """The saved student loaded directly with transformers (the reference for the exports)."""
    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(student_dir)


def greedy(loaded, prompts, batch_size=2):
    model, tok = loaded
    sampling = SamplingConfig(max_new_tokens=MAX_NEW, batch_size=batch_size)
    return [t[0] for t in generate(model, tok, prompts, 1, sampling, greedy=True).texts]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def run_main(student_dir, fmt, questions, out, *extra):
    main(
        ["--model", str(student_dir), "--format", fmt, "--questions", str(questions)]
        + ["--out", str(out), "--max-new-tokens", str(MAX_NEW), "--batch-size", "2", *extra]
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def error_of(call) -> str:
    """The one-line message a failing `main` exits with."""
    with pytest.raises(SystemExit) as exc:
        call()
    message = str(exc.value.code)
    assert message.startswith("generate error: ") and "\n" not in message
    return message


def test_alpaca_eval_export_equals_rollout_greedy(student_dir, loaded, tmp_path, capsys):
    questions = tmp_path / "alpaca_eval.json"
    questions.write_text(json.dumps(ALPACA))
    out = tmp_path / "outputs.json"
    run_main(student_dir, "alpaca_eval", questions, out, "--model-id", "pad-s")
    records = json.loads(out.read_text())
    assert isinstance(records, list) and len(records) == len(ALPACA)
    expected = greedy(loaded, [q["instruction"] for q in ALPACA])
    for record, question, text in zip(records, ALPACA, expected, strict=True):
        assert record["instruction"] == question["instruction"]
        assert record["output"] == text
        assert record["generator"] == "pad-s"
        assert record.get("dataset") == question.get("dataset")
    assert "dataset" not in records[2]
    assert any(r["output"] for r in records)
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1 and "wrote 3 alpaca_eval answers" in summary[0]
    assert str(out) in summary[0]


def test_mt_bench_second_turn_is_conditioned_on_first_answer(student_dir, loaded, tmp_path):
    out = tmp_path / "model_answer" / "pad-s.jsonl"
    run_main(
        student_dir, "mt_bench", write_jsonl(tmp_path / "q.jsonl", MT), out, "--model-id", "pad-s"
    )
    records = read_jsonl(out)
    assert [r["question_id"] for r in records] == [q["question_id"] for q in MT]
    assert len({r["answer_id"] for r in records}) == len(MT)
    for r in records:
        assert r["model_id"] == "pad-s" and isinstance(r["tstamp"], float)
        assert len(r["choices"]) == 1 and r["choices"][0]["index"] == 0
        assert len(r["choices"][0]["turns"]) == 2
    first = [r["choices"][0]["turns"][0] for r in records]
    second = [r["choices"][0]["turns"][1] for r in records]
    assert first == greedy(loaded, [q["turns"][0] for q in MT])
    conversations = [
        [
            {"role": "user", "content": q["turns"][0]},
            {"role": "assistant", "content": a},
            {"role": "user", "content": q["turns"][1]},
        ]
        for q, a in zip(MT, first, strict=True)
    ]
    assert second == greedy(loaded, conversations)
    # the comparison is discriminative: without the history the second answers differ
    assert second != greedy(loaded, [q["turns"][1] for q in MT])


def test_arena_hard_export_fields(student_dir, loaded, tmp_path):
    out = tmp_path / "pad-s.jsonl"
    run_main(
        student_dir,
        "arena_hard",
        write_jsonl(tmp_path / "q.jsonl", ARENA),
        out,
        "--model-id",
        "pad-s",
    )
    records = read_jsonl(out)
    assert [r["uid"] for r in records] == [q["uid"] for q in ARENA]
    _, tok = loaded
    for r, q, text in zip(
        records, ARENA, greedy(loaded, [q["prompt"] for q in ARENA]), strict=True
    ):
        assert r["model"] == "pad-s" and r["ans_id"] and isinstance(r["tstamp"], float)
        assert r["messages"] == [
            {"role": "user", "content": q["prompt"]},
            {"role": "assistant", "content": {"answer": text}},
        ]
        meta = r["metadata"]
        assert meta["token_len"] == len(tok(text, add_special_tokens=False)["input_ids"])
        assert set(meta) == {"token_len", "header_count", "list_count", "bold_count"}


def test_markdown_counts_skip_code_blocks():
    text = "# Title\n## Part\n1. one\n2. two\n- item\n**bold** and __also__\n```\n# not a header\n- no\n```"
    counts = markdown_counts(text)
    assert counts["header_count"] == {"h1": 1, "h2": 1, "h3": 0, "h4": 0, "h5": 0, "h6": 0}
    assert counts["list_count"] == {"ordered": 2, "unordered": 1}
    assert counts["bold_count"] == {"**": 1, "__": 1}


def test_limit_sampling_and_default_model_id(student_dir, tmp_path):
    out = tmp_path / "answers.jsonl"
    questions = write_jsonl(tmp_path / "q.jsonl", MT)
    run_main(student_dir, "mt_bench", questions, out, "--limit", "2", "--temperature", "1.5")
    records = read_jsonl(out)
    assert [r["question_id"] for r in records] == [81, 82]
    # folder `student` is named after its run folder
    assert {r["model_id"] for r in records} == {f"{student_dir.parent.name}-student"}
    assert check_export("mt_bench", load_questions(questions, "mt_bench", limit=2), out) == 2


def test_cli_subprocess(student_dir, tmp_path):
    out = tmp_path / "pad-cli.jsonl"
    questions = write_jsonl(tmp_path / "q.jsonl", ARENA)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "pad_lightning.generate", "--model", str(student_dir)]
    cmd += ["--format", "arena_hard", "--questions", str(questions), "--out", str(out)]
    cmd += ["--model-id", "pad-cli", "--max-new-tokens", "4", "--device", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("wrote 2 arena_hard answers")
    assert [r["uid"] for r in read_jsonl(out)] == ["a1b2", "c3d4"]


# ---------------------------------------------------------------------------------------------
# --run: the student of an MLflow run


@pytest.fixture(scope="module")
def mlflow_runs(student_dir, tmp_path_factory):
    """Four runs in a temp sqlite store: local run_dir, artifact only, MLflow model only (as
    `pad_lightning.run` logs it), no student at all."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("gen", artifact_location=(root / "artifacts").as_uri())
    ids = {}
    for kind in ("local", "artifact", "model", "none"):
        run_dir = root / kind
        run_dir.mkdir()
        if kind == "local":
            shutil.copytree(student_dir, run_dir / "student")
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_param("output_dir", str(run_dir))
            summary = run_dir / "summary.json"
            summary.write_text(json.dumps({"run_dir": str(run_dir), "mlflow_run_id": "x"}))
            mlflow.log_artifact(str(summary))
            if kind == "artifact":
                mlflow.log_artifacts(str(student_dir), "student")
            ids[kind] = run.info.run_id
        if kind == "model":
            from types import SimpleNamespace

            from pad_lightning.tracking.mlflow_run import log_student_model

            logger = SimpleNamespace(run_id=ids[kind], _tracking_uri=uri)
            log_student_model(logger, student_dir)
    mlflow.set_tracking_uri(None)
    return uri, ids, root


def test_run_uses_local_run_dir(mlflow_runs, tmp_path):
    uri, ids, root = mlflow_runs
    assert resolve_run_student(ids["local"], uri, tmp_path) == root / "local" / "student"


def test_run_downloads_student_artifact_and_exports(mlflow_runs, loaded, tmp_path, capsys):
    uri, ids, _ = mlflow_runs
    path = resolve_run_student(ids["artifact"], uri, tmp_path / "dl")
    assert path.is_relative_to(tmp_path / "dl") and (path / "model.safetensors").is_file()
    out = tmp_path / "outputs.json"
    questions = tmp_path / "q.json"
    questions.write_text(json.dumps(ALPACA[:2]))
    main(
        ["--run", ids["artifact"], "--tracking-uri", uri, "--format", "alpaca_eval"]
        + ["--questions", str(questions), "--out", str(out), "--max-new-tokens", str(MAX_NEW)]
    )
    records = json.loads(out.read_text())
    assert [r["output"] for r in records] == greedy(loaded, [q["instruction"] for q in ALPACA[:2]])
    assert {r["generator"] for r in records} == {f"pad-{ids['artifact'][:8]}"}
    assert "wrote 2 alpaca_eval answers" in capsys.readouterr().out


def test_run_loads_the_logged_mlflow_model(mlflow_runs, loaded, tmp_path):
    uri, ids, _ = mlflow_runs
    path = resolve_run_student(ids["model"], uri, tmp_path / "dl")
    assert path.is_relative_to(tmp_path / "dl")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    for name, value in loaded[0].state_dict().items():  # the same weights
        assert torch.equal(value, model.state_dict()[name]), name
    questions = tmp_path / "q.json"
    questions.write_text(json.dumps(ALPACA[:2]))
    out = tmp_path / "outputs.json"
    main(
        ["--run", ids["model"], "--tracking-uri", uri, "--format", "alpaca_eval"]
        + ["--questions", str(questions), "--out", str(out), "--max-new-tokens", str(MAX_NEW)]
    )
    records = json.loads(out.read_text())
    assert [r["output"] for r in records] == greedy(loaded, [q["instruction"] for q in ALPACA[:2]])


def test_run_errors(mlflow_runs, tmp_path):
    uri, ids, root = mlflow_runs
    questions = tmp_path / "q.json"
    questions.write_text(json.dumps(ALPACA))
    base = ["--format", "alpaca_eval", "--questions", str(questions), "--out", str(tmp_path / "o")]
    message = error_of(lambda: main(["--run", ids["none"], "--tracking-uri", uri, *base]))
    assert f"--run {ids['none']}: no student" in message
    assert "'student' model or artifact" in message
    message = error_of(lambda: main(["--run", "0" * 32, "--tracking-uri", uri, *base]))
    assert "no such MLflow run" in message
    missing_db = f"sqlite:///{root}/nothing.db"
    message = error_of(lambda: main(["--run", ids["local"], "--tracking-uri", missing_db, *base]))
    assert "no such MLflow database file" in message
    assert not (root / "nothing.db").exists()


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming the file (and line) or the key


@pytest.mark.parametrize(
    ("fmt", "content", "expected"),
    [
        ("mt_bench", '{"question_id": 1, "category": "x", "turns": ["a", "b"]}\n{"question_id": 2,\n',
         "q.jsonl:2: malformed JSONL line"),
        ("alpaca_eval", '[{"instruction": "a"},\n {"instruction": }]', "q.jsonl:2: malformed JSON"),
        ("mt_bench", '{"question_id": 1, "turns": ["a", "b"]}\n', "q.jsonl:1: missing field 'category'"),
        ("mt_bench", '{"question_id": 1, "category": "x", "turns": ["a"]}\n',
         "field 'turns' has 1 turn(s); mt_bench questions have exactly 2"),
        ("arena_hard", '{"uid": "u", "category": "c", "prompt": "p"}\n{"uid": "u", "category": "c", "prompt": "q"}\n',
         "q.jsonl:2: duplicate uid 'u' (first at"),
        ("alpaca_eval", '[{"instruction": "a"}, {"output": "b"}]', "q.jsonl[1]: missing field 'instruction'"),
        ("arena_hard", '["not an object"]', "expected a JSON object, got str"),
        ("arena_hard", "\n\n", "no records"),
    ],
)  # fmt: skip
def test_question_file_errors(student_dir, tmp_path, fmt, content, expected):
    questions = tmp_path / "q.jsonl"
    questions.write_text(content)
    message = error_of(lambda: run_main(student_dir, fmt, questions, tmp_path / "o.jsonl"))
    assert expected in message and str(questions) in message
    assert not (tmp_path / "o.jsonl").exists()


def test_missing_question_file_and_unknown_format(student_dir, tmp_path):
    missing = tmp_path / "absent.jsonl"
    message = error_of(lambda: run_main(student_dir, "mt_bench", missing, tmp_path / "o"))
    assert f"--questions {missing}: no such file" in message
    message = error_of(lambda: run_main(student_dir, "mmlu", missing, tmp_path / "o"))
    assert "--format: invalid choice: 'mmlu'" in message and "alpaca_eval" in message
    with pytest.raises(ExportError, match="unknown format; valid: alpaca_eval, mt_bench"):
        load_questions(missing, "mmlu")


def test_model_folder_errors(student_dir, tmp_path):
    questions = write_jsonl(tmp_path / "q.jsonl", ARENA)
    broken = {}
    for name, drop in [("weights", "model.safetensors"), ("tokenizer", "tokenizer.json"),
                       ("template", "chat_template.jinja")]:  # fmt: skip
        broken[name] = shutil.copytree(student_dir, tmp_path / name)
        (broken[name] / drop).unlink()
    out = tmp_path / "o.jsonl"
    message = error_of(lambda: run_main(broken["weights"], "arena_hard", questions, out))
    assert f"--model {broken['weights']}: no weights" in message
    message = error_of(lambda: run_main(broken["tokenizer"], "arena_hard", questions, out))
    assert "no tokenizer" in message
    message = error_of(lambda: run_main(broken["template"], "arena_hard", questions, out))
    assert "no chat template" in message and "--chat-template" in message
    message = error_of(lambda: run_main(tmp_path / "nowhere", "arena_hard", questions, out))
    assert "not a directory" in message
    template = tmp_path / "template.jinja"
    template.write_text((student_dir / "chat_template.jinja").read_text())
    run_main(broken["template"], "arena_hard", questions, out, "--chat-template", str(template))
    assert len(read_jsonl(out)) == len(ARENA)
    not_jinja = tmp_path / "plain.txt"
    not_jinja.write_text("just text")
    message = error_of(
        lambda: run_main(
            broken["template"],
            "arena_hard",
            questions,
            out,
            "--chat-template",
            str(not_jinja),
            "--overwrite",
        )
    )
    assert (
        message.startswith("generate error: --chat-template: ") and "no Jinja template" in message
    )


def test_check_export_rejects_bad_answer_files(student_dir, tmp_path):
    questions_file = write_jsonl(tmp_path / "q.jsonl", MT)
    questions = load_questions(questions_file, "mt_bench")
    out = tmp_path / "pad-s.jsonl"
    run_main(student_dir, "mt_bench", questions_file, out, "--model-id", "pad-s")
    good = read_jsonl(out)
    assert check_export("mt_bench", questions, out) == 3

    def rejects(records, expected):
        write_jsonl(out, records)
        with pytest.raises(ExportError, match=expected):
            check_export("mt_bench", questions, out)

    rejects(good[:2], r"2 answers for 3 questions; first unanswered: .*q.jsonl:3")
    rejects([good[0], good[0], good[2]], "duplicate question_id 81")
    rejects([good[1], good[0], good[2]], "question_id 82 does not match question 81")
    rejects(
        [{k: v for k, v in good[0].items() if k != "tstamp"}, *good[1:]], "missing field 'tstamp'"
    )
    rejects([{**good[0], "model_id": " "}, *good[1:]], "non-empty model id")
    one_turn = {**good[0], "choices": [{"index": 0, "turns": ["only one"]}]}
    rejects([one_turn, *good[1:]], r"expected 2 answer text\(s\)")


# ---------------------------------------------------------------------------------------------
# --out: never the question file, an existing file only with --overwrite


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the export gets as far as loading (or looking up) a model."""
    import pad_lightning.generate as gen

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the --out check")

    monkeypatch.setattr(gen, "load_student", forbidden)
    monkeypatch.setattr(gen, "resolve_run_student", forbidden)


def test_existing_out_refused_without_overwrite(student_dir, tmp_path, no_model_load):
    questions = write_jsonl(tmp_path / "q.jsonl", ARENA)
    out = tmp_path / "pad-s.jsonl"
    out.write_text("previous answers\n")
    message = error_of(lambda: run_main(student_dir, "arena_hard", questions, out))
    assert message == (
        f"generate error: --out {out}: already exists; pass --overwrite to replace it, "
        "or choose another --out"
    )
    assert out.read_text() == "previous answers\n"
    # --run is refused the same way, before the run is looked up
    message = error_of(
        lambda: main(
            ["--run", "0" * 32, "--format", "arena_hard", "--questions", str(questions)]
            + ["--out", str(out)]
        )
    )
    assert f"--out {out}: already exists" in message


def test_overwrite_replaces_existing_out(student_dir, tmp_path, capsys):
    questions = write_jsonl(tmp_path / "q.jsonl", ARENA)
    out = tmp_path / "pad-s.jsonl"
    out.write_text("previous answers\n")
    run_main(student_dir, "arena_hard", questions, out, "--model-id", "pad-s", "--overwrite")
    assert [r["uid"] for r in read_jsonl(out)] == [q["uid"] for q in ARENA]
    assert "wrote 2 arena_hard answers" in capsys.readouterr().out


@pytest.mark.parametrize("spelling", ["same", "dotdot", "symlink", "hardlink"])
def test_out_is_question_file_always_refused(student_dir, tmp_path, no_model_load, spelling):
    questions = write_jsonl(tmp_path / "q.jsonl", ARENA)
    before = questions.read_text()
    (tmp_path / "sub").mkdir()
    out = {
        "same": questions,
        "dotdot": tmp_path / "sub" / ".." / "q.jsonl",
        "symlink": tmp_path / "link.jsonl",
        "hardlink": tmp_path / "hard.jsonl",
    }[spelling]
    if spelling == "symlink":
        out.symlink_to(questions)
    elif spelling == "hardlink":
        os.link(questions, out)
    for extra in ((), ("--overwrite",)):
        message = error_of(
            lambda extra=extra: run_main(student_dir, "arena_hard", questions, out, *extra)
        )
        assert message == (
            f"generate error: --out {out}: is the question file (--questions {questions}); "
            "write the answers to another file"
        )
    assert questions.read_text() == before
