"""The study world: the teacher's documented flaw, judge training on both option orders and the
student's samples, the judge report, option templates, and the study command's smoke versions
(the quick study; the judge and tuning sections)."""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env

from pad_lightning.data.tasks import Problem, quality, sample_problems
from pad_lightning.lm.judge import mcq_prompt
from pad_lightning.zoo import builder as zoo
from pad_lightning.zoo.builder import ModelSpec, ZooConfig, ensure_zoo, flawed
from pad_lightning.zoo.tokenizer import build_char_tokenizer

REPO = Path(__file__).resolve().parents[2]


def test_the_flaw_drops_the_answers_last_letter_for_the_flaw_letters_only():
    assert flawed(Problem("rev abcd", "dcba", "reverse"), "ab") == "dcb"
    assert flawed(Problem("rev bcd", "dcb", "reverse"), "ab") == "dc"
    assert flawed(Problem("rev cde", "edc", "reverse"), "ab") == "edc"
    assert flawed(Problem("rev abcd", "dcba", "reverse"), "") == "dcba"
    assert flawed(Problem("sort 3 1", "1 3", "sort"), "s") == "1 3"
    share = sum(flawed(p, "ab") != p.reference for p in sample_problems(["reverse"], "val", 500, 0))
    assert 0.12 < share / 500 < 0.28  # about 2 letters of 10


def test_adding_the_study_fields_keeps_the_default_zoo_key():
    """Fields added later are hashed only when set: users' cached default zoos stay valid."""
    import sys as _sys

    _sys.path.insert(0, str(REPO / "experiments"))
    from _setup import run_config

    from pad_lightning.app.models import zoo_config

    assert zoo_config(run_config([]).model.zoo).key() == "reverse-62fe2e5593"
    study = zoo_config(run_config(["experiment=study"]).model.zoo)
    assert study.key() != "reverse-62fe2e5593" and study.flaw_letters == "ab"


def test_option_template_restates_the_question():
    text = mcq_prompt("rev ab", ["ba", "ab"], option_template="{letter}) {question} = {response}")
    assert text == "Q: rev ab\nA) rev ab = ba\nB) rev ab = ab\nBest:"


def test_teacher_answers_carry_the_flaw_and_judge_batches_come_in_both_orders():
    tok = build_char_tokenizer()
    spec = ModelSpec(batch_size=32, judge_both_orders=True, mcq_max_options=2)
    cfg = ZooConfig(flaw_letters="ab")
    problems = sample_problems(["reverse"], "train", 200, 0)
    samples = {p.prompt: [p.reference, p.reference[:-1], "x" + p.reference] for p in problems}
    maker = zoo._BatchMaker(cfg, spec, tok, "teacher", 1.0, problems, samples)
    batch = maker(0)
    texts = tok.batch_decode(batch["input_ids"])
    labels = [tok.decode([t for t in row if t != -100]).strip() for row in batch["labels"].tolist()]
    assert len(texts) == 32
    for i in range(0, 32, 2):  # question i + 1 is question i with its two options swapped
        first = [line for line in texts[i].splitlines() if line[:3] in ("A) ", "B) ")]
        second = [line for line in texts[i + 1].splitlines() if line[:3] in ("A) ", "B) ")]
        assert [x[3:] for x in first] == [x[3:] for x in second][::-1]
        assert {labels[i][0], labels[i + 1][0]} == {"A", "B"}
    for role, letters in (("teacher", "ab"), ("student", "")):
        answers = zoo._BatchMaker(cfg, spec, tok, role, 0.0)(1)
        for ids, labels in zip(answers["input_ids"], answers["labels"], strict=True):
            word = tok.decode(ids).split("rev ")[1].split("<")[0].split("\n")[0]
            target = tok.decode([t for t in labels.tolist() if t != -100]).split("<")[0]
            expected = flawed(Problem(f"rev {word}", word[::-1], "reverse"), letters)
            assert target.strip() == expected, (role, word, target)


def test_judge_questions_on_student_samples_have_one_best_option():
    rng = random.Random(0)
    p = Problem("rev abc", "cba", "reverse")
    pool = {p.prompt: ["cba", "cb", "cba", "abc"]}
    for _ in range(20):
        options = zoo.pool_candidates(p, rng, 2, pool)
        q = [quality(o, p.reference) for o in options]
        assert q.count(max(q)) == 1
    assert zoo.pool_candidates(p, rng, 2, {p.prompt: ["cba"] * 4}) is None


@pytest.mark.slow
def test_a_micro_study_zoo_builds_student_first_and_reports_its_judge(tmp_path):
    teacher = ModelSpec(
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        max_steps=20,
        batch_size=16,
        eval_every=10,
        target_accuracy=1.0,
        judge_steps=6,
        judge_lr=1e-3,
        judge_both_orders=True,
        judge_on_student=0.5,
        mcq_max_options=2,
    )
    student = ModelSpec(
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        intermediate_size=32,
        max_steps=6,
        batch_size=16,
        eval_every=3,
        target_accuracy=1.0,
    )
    cfg = ZooConfig(
        cache_dir=str(tmp_path),
        eval_size=16,
        teacher=teacher,
        student=student,
        flaw_letters="ab",
        judge_option_template="{letter}) {question} = {response}",
    )
    root = ensure_zoo(cfg)
    card = json.loads((root / "card.json").read_text())
    assert list(card["models"]) == ["teacher", "student"]
    judge = card["models"]["teacher"]["judge"]
    for key in ("pairwise", "flaw_pairwise", "listwise_top1", "student_pairwise"):
        assert key in judge
    assert 0 <= judge["flaw_pairwise"] <= 1  # the eval split has words starting with a or b
    assert card["config"]["flaw_letters"] == "ab"
    plain = dataclasses.replace(cfg, flaw_letters="")
    assert plain.key() != cfg.key()


def run_study(tmp_path, *extra: str, quick: bool = True) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "experiments" / "study.py"),
            *(["--quick"] if quick else []),
            "--preset",
            "smoke",
            "--epochs",
            "1",
            "--probe-prompts",
            "8",
            "--out",
            str(tmp_path / "study"),
            "--tracking-uri",
            f"sqlite:///{tmp_path}/mlflow.db",
            *extra,
        ],
        cwd=tmp_path,
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_study_smoke_runs_every_method_and_writes_a_report(tmp_path):
    run_study(tmp_path)
    report = (tmp_path / "study" / "report.md").read_text()
    for label in ("PPD (jsd)", "DPO", "SimPO", "DPO-PL", "LiPO", "GKD", "seqKD", "gold SFT"):
        assert f"| {label} | 1 |" in report, label
    assert "Calibration probe" in report and "no training" in report
    results = json.loads((tmp_path / "study" / "results.json").read_text())
    runs = results["sections"]["methods"]
    assert all(r["runs"][0]["after"] is not None for r in runs)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    parents = [
        r
        for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
        if r.data.tags.get("study.dir")
    ]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = client.search_runs(
        [parents[0].info.experiment_id],
        f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'",
    )
    assert len(children) == len(runs)
    # the per-prompt scores the intervals come from: one row per run, and the report derived
    # again from them alone (--report-only evaluates nothing: the same report, to its timing)
    saved = json.loads((tmp_path / "study" / "per_prompt.json").read_text())
    assert len(saved["runs"]) == len(runs) and len(saved["test"]["flaw"]) == 512
    assert all(len(r["exact_match"]) == 512 for r in saved["runs"].values())
    run_study(tmp_path, "--report-only")

    def body(text: str) -> list[str]:
        return [x for x in text.splitlines() if not x.startswith(("Command:", "Wall clock:"))]

    assert body((tmp_path / "study" / "report.md").read_text()) == body(report)


@pytest.mark.slow
def test_study_smoke_judge_and_tuning_sections(tmp_path):
    """The judge section (a shared control and the synthetic judge at two accuracies, its judge
    check metrics read back from MLflow) and the tuning section (validation prompts only, the
    untrained student beside it), derived again by --report-only."""
    sections = (
        "--sections",
        "judge,tuning",
        "--seeds",
        "1",
        "--no-probe",
        "--judge-accuracies",
        "0.55,1.0",
        "--tune-methods",
        "PPD (jsd),GKD",
        "--tune-lrs",
        "0.001,0.01",
    )
    run_study(tmp_path, *sections, quick=False)
    out = tmp_path / "study"
    report = (out / "report.md").read_text()
    assert "### judge: calibration against judge accuracy" in report
    assert "| 0.55 | 1 |" in report and "| 1 | 1 |" in report
    assert "- (b''') calibration helps when the judge is good" in report
    assert "| no training | - | - |" in report
    for method in ("PPD (jsd)", "GKD"):
        row = next(x for x in report.splitlines() if x.startswith(f"| {method} | "))
        assert row.split(" | ")[3] in ("0.001", "0.01"), row  # the picked lr
    assert (out / "judge.png").is_file() and (out / "tuning.png").is_file()
    saved = json.loads((out / "per_prompt.json").read_text())
    assert len(saved["runs"]) == 3 + 4 and len(saved["validation"]["prompts"]) == 512
    assert not set(saved["validation"]["prompts"]) & set(saved["test"]["prompts"])
    for run in saved["runs"].values():
        if " lr=" in run["label"]:  # tuning: validation prompts only
            assert len(run["val_exact_match"]) == 512 and "exact_match" not in run
        else:
            assert len(run["exact_match"]) == 512 and "val_exact_match" not in run
        if run["label"].startswith("synthetic judge"):  # the judge check, from MLflow
            assert "judge/at_chance" in run["judge"]
    results = json.loads((out / "results.json").read_text())
    assert set(results["tuning"]["methods"]) == {"PPD (jsd)", "GKD"}
    run_study(tmp_path, *sections, "--report-only", quick=False)

    def body(text: str) -> list[str]:
        return [x for x in text.splitlines() if not x.startswith(("Command:", "Wall clock:"))]

    assert body((out / "report.md").read_text()) == body(report)
