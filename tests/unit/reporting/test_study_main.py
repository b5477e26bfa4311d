"""experiments/study.py's command end to end without training: the training subprocess and the
greedy evaluation are fabricated, everything else (sections, shared runs, the tuning phase that
--tuned trains the methods after, the evaluations each run gets, the judge check metrics read
back from MLflow, per_prompt.json and --report-only) is the study's own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "experiments"))

import study  # noqa: E402

RUN = subprocess.run

# validation exact match (share of the first prompts answered) of each tuning grid point: GKD is
# best at 0.01, PPD ties (the smaller lr, the preset's, is picked)
VAL_SHARE = {("loss_gkd", "0.01"): 0.5, ("loss_gkd", None): 0.25}
ARGS = [
    "--preset",
    "smoke",
    "--sections",
    "methods,judge",
    "--tuned",
    "--tune-methods",
    "PPD (jsd),GKD",
    "--tune-lrs",
    "0.01,0.001",
    "--judge-accuracies",
    "1.0",
    "--seeds",
    "2",
    "--no-probe",
    "--jobs",
    "1",
]


class Fake:
    """The training subprocess (writes a summary.json, and an MLflow run with the judge check's
    metrics for a synthetic judge run) and the greedy evaluation, recording their calls."""

    def __init__(self, uri: str):
        self.uri, self.commands, self.evaluated = uri, [], []

    def run(self, command, **kwargs):
        import mlflow

        if "pad_lightning.run" not in command:  # another caller of subprocess.run
            return RUN(command, **kwargs)
        options = dict(a.split("=", 1) for a in command if "=" in a and not a.startswith("-"))
        run_dir = Path(options["hydra.run.dir"])
        run_dir.mkdir(parents=True)
        self.commands.append(command)
        summary = {"after": {}, "timings": {"fit_s": 1.0}, "val": {}}
        if "calibration.synthetic.accuracy" in options:
            client = mlflow.MlflowClient(tracking_uri=self.uri)
            run = client.create_run(client.get_experiment_by_name("pad-lightning").experiment_id)
            accuracy = float(options["calibration.synthetic.accuracy"])
            client.log_metric(run.info.run_id, "judge/accuracy", accuracy - 0.01)
            client.log_metric(run.info.run_id, "judge/at_chance", 0.0)
            summary |= {"mlflow_run_id": run.info.run_id, "tracking_uri": self.uri}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        return subprocess.CompletedProcess(command, 0)

    def greedy(self, model_dir: Path, problems: list, max_new_tokens: int) -> dict:
        split = "val" if problems[0].prompt in self.val else "test"
        self.evaluated.append((model_dir, split))
        folder = model_dir.parent.parent.name  # runs/<slug>/seed<s>/student
        lr = folder.rsplit("trainer.optim.lr_", 1)[1] if "lr_" in folder else None
        share = VAL_SHARE.get((folder.split("-trainer")[0], lr), 0.1) if split == "val" else 0.3
        em = [float(i < share * len(problems)) for i in range(len(problems))]
        return {"exact_match": em, "quality": em}


@pytest.fixture
def world(tmp_path, monkeypatch):
    from _setup import run_config

    from pad_lightning.data.problems import build_problems
    from pad_lightning.zoo import builder

    zoo = tmp_path / "zoo"
    zoo.mkdir()
    card = {
        "key": "fake",
        "models": {
            "teacher": {"test": {"exact_match": 0.8}, "judge": {}},
            "student": {"test": {"exact_match": 0.3}},
        },
    }
    (zoo / "card.json").write_text(json.dumps(card))
    monkeypatch.setattr(builder, "ensure_zoo", lambda cfg: zoo)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    fake = Fake(uri)
    cfg = run_config(["experiment=smoke", f"data.val_size={study.VAL_PROMPTS}"])
    fake.val = {p.prompt for p in build_problems(cfg.data, log=lambda _: None)[1]}
    monkeypatch.setattr(study.subprocess, "run", fake.run)
    monkeypatch.setattr(study, "greedy_scores", fake.greedy)
    monkeypatch.chdir(tmp_path)  # MLflow's artifacts
    threads = torch.get_num_threads()
    yield tmp_path, uri, fake
    torch.set_num_threads(threads)


def study_main(monkeypatch, tmp_path, uri, *extra, args=ARGS) -> int:
    argv = ["study.py", *args, "--out", str(tmp_path / "out"), "--tracking-uri", uri, *extra]
    monkeypatch.setattr(sys, "argv", argv)
    return study.main()


def test_tuned_methods_train_at_the_lr_picked_on_validation(world, monkeypatch):
    tmp_path, uri, fake = world
    assert study_main(monkeypatch, tmp_path, uri) == 0
    out = tmp_path / "out"
    runs = {
        next(a for a in c if a.startswith("hydra.run.dir=")).split("/runs/")[1]: c
        for c in fake.commands
    }
    # tuning: 2 methods x 2 lrs, seed 0; methods: 12 x 2 seeds, of which PPD's seed 0 (picked
    # 0.001, the preset's: a tie) and GKD's seed 0 at its picked 0.01 are the tuning runs;
    # judge: the control and one accuracy, 2 seeds
    assert len(runs) == len(fake.commands) == 4 + 24 - 2 + 4  # each trained once
    gkd = [c for c in fake.commands if "loss=gkd" in c]
    assert sorted(tuple(a for a in c if a.startswith(("seed=", "trainer.optim"))) for c in gkd) == [
        ("seed=0",),  # 0.001: the preset's lr, no override
        ("trainer.optim.lr=0.01", "seed=0"),
        ("trainer.optim.lr=0.01", "seed=1"),
    ]
    assert "default/seed1" in runs and "trainer.optim.lr_0.01/seed1" not in runs
    # each run evaluated on what its sections need: tuning-only runs never on the test prompts
    by_split = {}
    for model_dir, split in fake.evaluated:
        where = model_dir.parent  # a run's folder under runs/, or the zoo (the fixed models)
        name = model_dir.name if where == tmp_path / "zoo" else str(where.relative_to(out / "runs"))
        by_split.setdefault(split, []).append(name)
    assert sorted(by_split["val"]) == sorted(
        [
            "default/seed0",
            "trainer.optim.lr_0.01/seed0",
            "loss_gkd/seed0",
            "loss_gkd-trainer.optim.lr_0.01/seed0",
            "student",  # the untrained student
        ]
    )
    test = by_split["test"]
    assert "loss_gkd/seed0" not in test and "trainer.optim.lr_0.01/seed0" not in test
    assert "loss_gkd-trainer.optim.lr_0.01/seed0" in test and "default/seed0" in test
    assert len(test) == 24 + 4 + 2 and {"student", "teacher"} <= set(test)  # and the fixed models
    report = (out / "report.md").read_text()
    line = next(x for x in report.splitlines() if x.startswith("Learning rates (`--tuned`"))
    assert "PPD (jsd) 0.001" in line and "GKD 0.01" in line and "VPD -" in line
    assert "| GKD | 0.250 ± - | 0.500 ± - | 0.01 |" in report  # the tuning table, lr ascending
    assert "| 1 | 2 | 0.990 ± 0.000 |" in report  # the judge check accuracy, from MLflow
    saved = json.loads((out / study.PER_PROMPT).read_text())
    assert len(saved["runs"]) == len(runs)
    assert saved["runs"]["runs/loss_gkd/seed0"].keys() >= {"val_exact_match", "val_quality"}
    assert "exact_match" not in saved["runs"]["runs/loss_gkd/seed0"]
    judged = [r for r in saved["runs"].values() if r["label"].startswith("synthetic judge")]
    assert [r["judge"]["judge/accuracy"] for r in judged] == pytest.approx([0.99, 0.99])

    # --report-only: nothing trained or evaluated again, the same report
    fake.commands.clear()
    fake.evaluated.clear()
    assert study_main(monkeypatch, tmp_path, uri, "--report-only") == 0
    assert fake.commands == [] and fake.evaluated == []

    def body(text: str) -> list[str]:
        return [x for x in text.splitlines() if not x.startswith(("Command:", "Wall clock:"))]

    assert body((out / "report.md").read_text()) == body(report)
    # a later invocation of one section keeps the others' scores in per_prompt.json
    judge_only = [a for a in ARGS if a != "--tuned"]
    judge_only[judge_only.index("methods,judge")] = "judge"
    assert study_main(monkeypatch, tmp_path, uri, "--report-only", args=judge_only) == 0
    again = json.loads((out / study.PER_PROMPT).read_text())
    assert again["runs"] == saved["runs"] and again["initial_val"] == saved["initial_val"]
