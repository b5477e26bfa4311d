"""experiments/study.py's report from fabricated per-prompt results: every figure's labels name its
own section and reference and plot the numbers its table prints, the flaw/clean columns and
the seed spreads are the data's, the verdicts follow the hierarchical intervals, the judge
section's gains and verdicts and the tuning section's grid and picked lrs are the data's, and
the report is derived again, identically, from per_prompt.json."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "experiments"))

import study  # noqa: E402

from pad_lightning.reporting import intervals as iv  # noqa: E402

PROMPTS = 24
FLAW = [i < 6 for i in range(PROMPTS)]  # the first 6 prompts are on the teacher's flaw
SEEDS = (0, 1)
SCATTER = "VPD"  # its two seeds disagree: only the hierarchical interval sees it
VAL = 20  # validation prompts (the tuning section's)
TUNE_SEEDS = (0,)
INITIAL_VAL_HITS = 6  # the untrained student answers the first 6 validation prompts
# validation prompts answered (the first k) per method and lr; GKD ties 1e-3 with 1e-2 (the
# smaller is picked), DPO never beats the untrained student
HITS = {
    "PPD (jsd)": {3e-4: 4, 1e-3: 8, 3e-3: 12, 1e-2: 2},
    "GKD": {3e-4: 5, 1e-3: 10, 3e-3: 7, 1e-2: 10},
    "DPO": {3e-4: 6, 1e-3: 3, 3e-3: 1, 1e-2: 0},
}
PICKED = {"PPD (jsd)": 3e-3, "GKD": 1e-3, "DPO": 3e-4}


def hits(method: str, lr: float) -> int:
    if method in HITS:
        return HITS[method][lr]
    return 3 + (len(method) + study.TUNE_LRS.index(lr)) % 5


def judge_row(accuracy: float, seed: int) -> list[float]:
    """The synthetic judge's arm: the control's answers plus the first m prompts, m growing with
    the accuracy (0 at 0.55: no gain; every prompt at 1)."""
    m = round((accuracy - 0.55) / 0.45 * PROMPTS)
    return [1.0 if p < m else e for p, e in enumerate(scores(study.SCALE_CONTROL, seed))]


def scores(label: str, seed: int) -> list[float]:
    """Fabricated per-prompt exact match: arm k answers prompt p when (p + k) % 4 < level(k);
    the same for both seeds except VPD's, whose seeds are 0.5 apart."""
    k = sum(map(ord, label)) % 7
    level = 3 if label.startswith(("PPD", "alpha=0.8", "n=4")) else 1 + k % 2
    row = [float((p + k) % 4 < level) for p in range(PROMPTS)]
    if label == SCATTER:
        row = [1.0 - seed] * PROMPTS
    return row


def fabricate(tmp_path: Path):
    chosen = study.sections(quick=False)
    jobs = {}
    for name, configs in chosen.items():
        for i, c in enumerate(configs):
            if c.label in jobs:  # the control, in calibration and judge: the same runs
                continue
            jobs[c.label] = []
            for seed in TUNE_SEEDS if name == "tuning" else SEEDS:
                # a folder per label: here runs of equal overrides differ
                folder = tmp_path / "runs" / f"{len(jobs)}-{i}-{c.slug()}" / f"seed{seed}"
                job = study.Job(c, seed, folder)
                job.summary = {
                    "after": {"teacher_reward": -1.0 - seed, "kendall_tau": 0.5},
                    "timings": {"fit_s": 10.0 + seed, "total_teacher_scoring_tokens": 1000},
                }
                if name == "tuning":
                    val = [float(p < hits(c.method, c.value)) for p in range(VAL)]
                    job.per_prompt = {"val_exact_match": val, "val_quality": val}
                else:
                    em = judge_row(c.value, seed) if name == "judge" else scores(c.label, seed)
                    job.per_prompt = {"exact_match": em, "quality": [0.5 + e / 2 for e in em]}
                if name == "judge":
                    job.per_prompt["judge"] = {"judge/accuracy": c.value - 0.01 * seed}
                jobs[c.label].append(job)
    teacher = [0.0 if f else 1.0 for f in FLAW]
    names = ["r_T"]
    for scheme in study.SCHEMES:
        names += [f"p_sel {scheme}"] + [f"t_{a} {scheme}" for a in study.ALPHAS]
    gen = torch.Generator().manual_seed(0)
    probe = {
        "prompts": 12,
        "n": 4,
        "defined": 10,
        "flaw_prompts": 3,
        "flaw": [i < 3 for i in range(10)],
        "per_prompt": {n: torch.rand(10, generator=gen).tolist() for n in names},
    }
    data = study.StudyData(
        flaw=FLAW,
        initial={"exact_match": scores("init", 0), "quality": [0.7] * PROMPTS},
        teacher={"exact_match": teacher, "quality": [0.9] * PROMPTS},
        probe=probe,
        val_flaw=[i < 4 for i in range(VAL)],
        initial_val={
            "exact_match": [float(p < INITIAL_VAL_HITS) for p in range(VAL)],
            "quality": [0.8] * VAL,
        },
    )
    meta = {
        "command": "python experiments/study.py --fabricated",
        "quick": False,
        "seeds": len(SEEDS),
        "tune_seeds": len(TUNE_SEEDS),
        "epochs": 1,
        "preset": "study",
        "card": {
            "key": "fake",
            "models": {
                "teacher": {"test": {"exact_match": 0.75}, "judge": {"pairwise": 0.55}},
                "student": {"test": {"exact_match": 0.3}},
            },
        },
    }
    return meta, chosen, jobs, data


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    meta, chosen, jobs, data = fabricate(tmp)
    report, results, figures = study.build_report(meta, chosen, jobs, data)
    return tmp, meta, chosen, jobs, data, "\n".join(report), results, figures


def table(report: str, heading: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the markdown table under `heading`."""
    lines = report.split(heading + "\n", 1)[1].splitlines()
    body = []
    for line in lines[1:]:
        if not line.startswith("|"):
            if body:
                break
            continue
        body.append([c.strip() for c in line.strip("|").split("|")])
    return body[0], body[2:]


def arms_of(jobs: dict) -> dict:
    """label -> seed -> per-prompt test exact match (the tuning runs have none)."""
    return {
        lab: {j.seed: j.per_prompt["exact_match"] for j in js}
        for lab, js in jobs.items()
        if all("exact_match" in j.per_prompt for j in js)
    }


INTERVAL = re.compile(r"([+-]\d\.\d+) \[([+-]\d\.\d+), ([+-]\d\.\d+)\]")
GENERIC = ("methods", "calibration", "decomposition", "beta")  # the generic section figure


def test_each_section_figure_names_its_section_and_reference(built):
    *_, chosen, _, _, _, _, figures = built
    for name, configs in ((n, chosen[n]) for n in GENERIC):
        reference = configs[study.REFERENCE[name]].label
        (ax,) = figures[name].axes
        assert name in ax.get_xlabel() and f"minus {reference}" in ax.get_xlabel()
        assert ax.get_title() == f"{name}: test exact match minus {reference}"
    assert "PPD" not in figures["calibration"].axes[0].get_xlabel()
    assert "alpha=0" in figures["calibration"].axes[0].get_xlabel()


def test_section_figures_plot_the_table_differences(built):
    *_, chosen, _, _, report, _, figures = built
    for name, configs in ((n, chosen[n]) for n in GENERIC):
        head, rows = table(report, f"### {name}")
        column = head.index(f"EM - {configs[study.REFERENCE[name]].label} [95% CI]")
        printed = {r[0]: INTERVAL.fullmatch(r[column]) for r in rows}
        printed = {k: tuple(map(float, m.groups())) for k, m in printed.items() if m}
        (ax,) = figures[name].axes
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert labels == list(printed)  # one point per printed difference, in table order
        container = ax.containers[0]
        xs = container.lines[0].get_xdata()
        segments = container.lines[2][0].get_segments()  # the error bars, lo to hi
        for label, x, segment, y in zip(labels, xs, segments, range(len(labels)), strict=True):
            mean, lo, hi = printed[label]
            assert x == pytest.approx(mean, abs=5e-4)
            assert (segment[0][0], segment[1][0]) == pytest.approx((lo, hi), abs=5e-4)
            assert segment[0][1] == segment[1][1] == y


def test_probe_figure_plots_the_probe_table(built):
    *_, report, _, figures = built
    head, rows = table(report, "### Calibration probe (no training)")
    printed = {r[0]: r for r in rows}
    fig = figures["calibration_tau"]
    assert [ax.get_title() for ax in fig.axes] == list(study.PROBE_COLUMNS.values())
    for ax in fig.axes:
        column = head.index(ax.get_title())
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert sorted(lines) == sorted(study.SCHEMES)
        for scheme, line in lines.items():
            assert list(line.get_xdata()) == list(study.ALPHAS)
            expected = [float(printed[f"t_{a} {scheme}"][column]) for a in study.ALPHAS]
            assert list(line.get_ydata()) == pytest.approx(expected, abs=5e-4)


def test_flaw_and_clean_columns_and_seed_spreads_are_the_data(built):
    *_, chosen, jobs, data, report, _, _ = built
    head, rows = table(report, "### methods")
    printed = {r[0]: r for r in rows}
    for label in ("PPD (jsd)", "DPO", SCATTER):
        ems = [j.per_prompt["exact_match"] for j in jobs[label]]
        for column, keep in (
            ("exact match", lambda i: True),
            ("EM flaw prompts", lambda i: FLAW[i]),
            ("EM clean prompts", lambda i: not FLAW[i]),
        ):
            means = [
                sum(e[i] for i in range(PROMPTS) if keep(i)) / sum(map(keep, range(PROMPTS)))
                for e in ems
            ]
            mean = sum(means) / len(means)
            sd = math.sqrt(sum((m - mean) ** 2 for m in means) / (len(means) - 1))
            assert printed[label][head.index(column)] == f"{mean:.3f} ± {sd:.3f}", (label, column)
        assert printed[label][head.index("seeds")] == str(len(SEEDS))
    teacher = printed["teacher"]
    assert teacher[head.index("EM flaw prompts")] == "0.000"
    assert teacher[head.index("EM clean prompts")] == "1.000"
    assert teacher[head.index("seeds")] == "-"


def test_verdicts_follow_the_hierarchical_intervals(built):
    *_, jobs, data, report, _, _ = built
    arms = arms_of(jobs)
    # VPD's seeds disagree: the prompt bootstrap alone would call its difference from PPD,
    # the hierarchical interval does not
    rows = lambda lab: [arms[lab][s] for s in SEEDS]  # noqa: E731
    fixed = iv.hierarchical_interval(rows(SCATTER), rows("PPD (jsd)"), seed_level="fixed")
    assert fixed.low > 0 or fixed.high < 0
    hier = study.difference(arms[SCATTER], arms["PPD (jsd)"])
    assert hier.low < 0 < hier.high
    line = next(x for x in report.splitlines() if x.startswith("- (a) VPD"))
    assert "**inconclusive**" in line
    rivals = ["DPO", "SimPO", "DPO-PL", "LiPO", "RRHF", "GKD", "seqKD"]
    words = [iv.verdict(study.difference(arms["PPD (jsd)"], arms[r])) for r in rivals]
    line = next(x for x in report.splitlines() if x.startswith("- (a) PPD (jsd)"))
    assert f"**{iv.combined_verdict(words)}**" in line
    for rival, word in zip(rivals, words, strict=True):
        diff = study.difference(arms["PPD (jsd)"], arms[rival])
        assert f"PPD (jsd) minus {rival}: {diff.text()}" in line
        assert word == (
            "supported" if diff.low > 0 else "refuted" if diff.high < 0 else "inconclusive"
        )
    # (e): the teacher is 0 on its flaw prompts, PPD's student answers most of them
    flaw = data.prompts("flaw")
    teacher = {None: data.teacher["exact_match"]}
    diff = study.difference(arms["PPD (jsd)"], teacher, flaw)
    line = next(x for x in report.splitlines() if x.startswith("- (e)"))
    assert diff.low > 0 and "**supported** (PPD (jsd))" in line and diff.text() in line
    assert f"({len(flaw)} of {PROMPTS})" in line


def test_power_note_per_section(built):
    *_, jobs, _, report, results, _ = built
    for name in (*GENERIC, "judge"):
        section = report.split(f"### {name}\n", 1)[1]
        note = next(x for x in section.splitlines() if x.startswith("Power note"))
        assert "((1.96 + 0.84) sd / gap)^2" in note
    entry = next(e for e in results["sections"]["methods"] if e["label"] == SCATTER)
    arms = arms_of(jobs)
    sd = float(
        iv.seed_differences(
            [arms[SCATTER][s] for s in SEEDS], [arms["PPD (jsd)"][s] for s in SEEDS]
        ).std()
    )
    assert entry["seeds_needed"] == iv.seeds_needed(sd, entry["difference"]["mean"])
    assert f"{SCATTER} {entry['seeds_needed']:.0f}" in report


def test_report_only_derives_the_same_report_from_per_prompt_json(built, tmp_path):
    out, meta, chosen, jobs, data, report, results, _ = built
    all_jobs = [j for js in jobs.values() for j in js]
    prompts = [f"rev w{i}" for i in range(PROMPTS)]
    val_prompts = [f"rev v{i}" for i in range(VAL)]
    saved = study.per_prompt_file(data, prompts, all_jobs, out, val_prompts)
    saved = json.loads(json.dumps(saved))
    fresh = {
        label: [study.Job(j.config, j.seed, j.run_dir, summary=j.summary, reused=True) for j in js]
        for label, js in jobs.items()
    }
    fixed = study.reuse_per_prompt(
        saved, prompts, [j for js in fresh.values() for j in js], out, val_prompts
    )
    for label, js in fresh.items():
        for job, old in zip(js, jobs[label], strict=True):
            assert job.per_prompt == old.per_prompt, label
    again = study.StudyData(
        flaw=saved["test"]["flaw"],
        initial=fixed["initial"],
        teacher=fixed["teacher"],
        probe=saved["probe"],
        val_flaw=saved["validation"]["flaw"],
        initial_val=fixed["initial_val"],
    )
    report2, results2, _ = study.build_report(meta, chosen, fresh, again)
    assert "\n".join(report2) == report
    # another test set: nothing is reused
    assert study.reuse_per_prompt(saved, prompts[:-1], [], out) == {}
    # another validation set: the test scores and judge metrics are, the validation ones not
    job = next(j for j in fresh["GKD lr=0.001"])
    judged = fresh["synthetic judge acc=1"][0]
    for j in (job, judged):
        j.per_prompt = {}
    fixed = study.reuse_per_prompt(saved, prompts, [job, judged], out, val_prompts[:-1])
    assert job.per_prompt == {} and "initial_val" not in fixed and "initial" in fixed
    assert judged.per_prompt["judge"] == {"judge/accuracy": 1.0}
    assert "exact_match" in judged.per_prompt
    # a later invocation keeps the runs it does not have (one --out accumulates its sections)
    kept = study.kept_runs(saved, prompts, val_prompts, {study.run_key(job, out): {}})
    assert study.run_key(job, out) not in kept and len(kept) == len(saved["runs"]) - 1
    stripped = study.kept_runs(saved, prompts, val_prompts[:-1], {})
    assert not any(k in e for e in stripped.values() for k in study.VAL_KEYS)
    assert study.kept_runs(saved, prompts[:-1], val_prompts, {}) == {}


# -- the judge section --------------------------------------------------------------------------
JUDGE_HEADING = "### judge: calibration against judge accuracy"


def test_judge_sections_arms_share_the_calibration_control_and_vary_only_the_judge():
    chosen = study.sections(quick=False)
    control, *arms = chosen["judge"]
    assert control == next(c for c in chosen["calibration"] if c.label == study.SCALE_CONTROL)
    assert [c.value for c in arms] == list(study.JUDGE_ACCURACIES)
    from _setup import run_config

    cfg = run_config(["experiment=study"])
    for c in arms:  # alpha 0.8, pairwise debiased, position bias 0: the preset's already
        assert study.effective(c.overrides, cfg) == (
            "calibration.judge=synthetic",
            f"calibration.synthetic.accuracy={c.value}",
        )
    custom = study.sections(quick=False, judge_accuracies=[1.0, 0.6])["judge"]
    assert [c.label for c in custom] == [
        study.SCALE_CONTROL,
        "synthetic judge acc=0.6",
        "synthetic judge acc=1",
    ]


def test_judge_table_gains_measured_accuracy_and_verdicts_are_the_data(built):
    *_, chosen, jobs, data, report, results, _ = built
    head, rows = table(report, JUDGE_HEADING)
    arms = arms_of(jobs)
    control = arms[study.SCALE_CONTROL]
    assert [r[0] for r in rows] == [f"{a:g}" for a in study.JUDGE_ACCURACIES]
    words = []
    for row, accuracy in zip(rows, study.JUDGE_ACCURACIES, strict=True):
        label = study.judge_label(accuracy)
        for which, title in study.SPLITS.items():
            prompts = data.prompts(which)
            diff = study.difference(arms[label], control, prompts)
            assert row[head.index(f"gain, {title} [95% CI]")] == diff.text(), (label, which)
            # the gain is the data's: mean over seeds and the split's prompts of arm - control
            gain = [[a - c for a, c in zip(arms[label][s], control[s], strict=True)] for s in SEEDS]
            keep = range(PROMPTS) if prompts is None else prompts
            mean = sum(g[i] for g in gain for i in keep) / (len(SEEDS) * len(keep))
            assert diff.mean == pytest.approx(mean)
        word = iv.verdict(study.difference(arms[label], control))
        words.append(word)
        assert row[head.index("calibration helps (all prompts)")] == word
        measured = [accuracy - 0.01 * s for s in SEEDS]
        cell = row[head.index("judge check accuracy (measured)")]
        assert cell == study.fmt(*study.mean_std(measured))
        assert row[head.index("seeds")] == str(len(SEEDS))
    # the fabricated dose-response: no gain at 0.55, a resolved one from 0.7 up
    assert words == ["inconclusive", "supported", "supported", "supported"]
    line = next(x for x in report.splitlines() if x.startswith("- (b''')"))
    for accuracy, word in zip(study.JUDGE_ACCURACIES, words, strict=True):
        assert f"accuracy {accuracy:g} **{word}**" in line
    assert "smallest accuracy whose interval excludes 0: 0.7 (above 0: helps)" in line
    assert [r["verdict"] for r in results["judge"]] == words


def test_smallest_accuracy_excluding_zero():
    def rows(*words):
        return [
            {"accuracy": a, "verdict": w} for a, w in zip((0.55, 0.7, 0.85, 1), words, strict=True)
        ]

    assert study.threshold(rows(*["inconclusive"] * 4)).endswith(": none")
    assert study.threshold(rows("inconclusive", "inconclusive", "supported", "supported")) == (
        "smallest accuracy whose interval excludes 0: 0.85 (above 0: helps)"
    )
    assert study.threshold(rows("refuted", "inconclusive", "inconclusive", "supported")) == (
        "smallest accuracy whose interval excludes 0: 0.55 (below 0: hurts); smallest above 0: 1"
    )
    assert study.threshold(rows("refuted", *["inconclusive"] * 3)).endswith("none above 0")


def test_judge_figure_plots_the_table_gains(built):
    *_, report, _, figures = built
    head, rows = table(report, JUDGE_HEADING)
    (ax,) = figures["judge"].axes
    assert ax.get_xlabel() == "synthetic judge accuracy on graded pairs"
    assert "minus the control" in ax.get_ylabel() and study.SCALE_CONTROL in ax.get_ylabel()
    containers = {c.get_label(): c for c in ax.containers}
    assert sorted(containers) == sorted(study.SPLITS.values())
    for which, title in study.SPLITS.items():
        container = containers[title]
        column = head.index(f"gain, {title} [95% CI]")
        printed = [tuple(map(float, INTERVAL.fullmatch(r[column]).groups())) for r in rows]
        xs = container.lines[0].get_xdata()
        ys = container.lines[0].get_ydata()
        segments = container.lines[2][0].get_segments()  # the error bars, lo to hi
        offset = study.JUDGE_OFFSETS[which]
        assert list(xs) == pytest.approx([a + offset for a in study.JUDGE_ACCURACIES])
        for (mean, lo, hi), y, segment in zip(printed, ys, segments, strict=True):
            assert y == pytest.approx(mean, abs=5e-4)
            assert (segment[0][1], segment[1][1]) == pytest.approx((lo, hi), abs=5e-4)


def test_the_synthetic_judge_is_not_the_best_trained_method(built):
    *_, jobs, _, report, _, _ = built
    arms = arms_of(jobs)
    best = study.judge_label(1.0)
    assert study.arm_mean(arms[best]) > max(  # the oracle judge is the highest arm here ...
        study.arm_mean(a) for lab, a in arms.items() if lab != best
    )
    line = next(x for x in report.splitlines() if x.startswith("- (d)"))
    assert "synthetic judge" not in line  # ... but it reads the references, as gold SFT


# -- the tuning section -------------------------------------------------------------------------
def test_pick_lr_is_the_validation_argmax_with_ties_to_the_smaller_lr():
    assert study.pick_lr({3e-4: 0.2, 1e-3: 0.5, 3e-3: 0.4}) == 1e-3
    assert study.pick_lr({1e-2: 0.5, 3e-4: 0.1, 1e-3: 0.5}) == 1e-3  # tie: the smaller
    assert study.pick_lr({1e-3: 0.5, 3e-3: 0.5 - 1e-15}) == 1e-3  # equal to rounding
    assert study.pick_lr({1e-3: math.nan, 3e-3: 0.0}) == 3e-3  # an lr without result
    assert study.pick_lr({1e-3: math.nan}) is None and study.pick_lr({}) is None


def test_tuning_grid_covers_every_trained_method_and_shares_the_default_lr_runs():
    chosen = study.sections(quick=False)
    tuned = {c.method for c in chosen["tuning"]}
    methods = [c.label for c in chosen["methods"]]
    assert tuned == set(methods) - set(study.TUNE_SHARED)
    assert {"PPD (jsd)", "GKD", "SimPO", "DPO"} <= tuned
    assert len(chosen["tuning"]) == len(tuned) * len(study.TUNE_LRS)
    from _setup import run_config

    cfg = run_config(["experiment=study"])
    by_label = {c.label: c for c in chosen["methods"]}
    for c in chosen["tuning"]:  # the preset's lr: the methods section's run, not a new one
        same = study.effective(c.overrides, cfg) == study.effective(
            by_label[c.method].overrides, cfg
        )
        assert same == (c.value == cfg.trainer.optim.lr), c.label
    grid = study.sections(False, tune_methods=["GKD", "DPO"], tune_lrs=[1e-2, 1e-3])["tuning"]
    assert [c.label for c in grid] == ["GKD lr=0.001", "GKD lr=0.01", "DPO lr=0.001", "DPO lr=0.01"]
    assert grid[1].overrides == ("loss=gkd", "trainer.optim.lr=0.01")
    with pytest.raises(ValueError, match="--tune-methods"):
        study.sections(False, tune_methods=["PAD"])


def test_tuning_table_and_the_picked_lr_are_the_validation_data(built):
    *_, jobs, data, report, results, _ = built
    head, rows = table(report, "### tuning")
    printed = {r[0]: r for r in rows}
    initial = [float(p < INITIAL_VAL_HITS) for p in range(VAL)]
    assert printed["no training"][head.index("EM at picked lr")] == (
        f"{INITIAL_VAL_HITS / VAL:.3f}"
    )
    methods = [c.method for c in study.sections(quick=False)["tuning"]]
    assert list(printed) == ["no training", *dict.fromkeys(methods)]
    for method in dict.fromkeys(methods):
        means = {lr: hits(method, lr) / VAL for lr in study.TUNE_LRS}
        for lr, mean in means.items():
            assert printed[method][head.index(f"lr={lr:g}")] == f"{mean:.3f} ± -"
        best = max(means.values())  # argmax, ties to the smaller lr, from the data
        picked = min(lr for lr, m in means.items() if m == best)
        if method in PICKED:
            assert picked == PICKED[method]
        assert printed[method][head.index("picked lr")] == f"{picked:g}"
        assert results["tuning"]["methods"][method]["picked_lr"] == picked
        arm = {0: [float(p < hits(method, picked)) for p in range(VAL)]}
        diff = study.difference(arm, {None: initial})
        assert printed[method][head.index("picked minus no training [95% CI]")] == diff.text()
    # the best method against the untrained student, on validation
    line = next(x for x in report.splitlines() if x.startswith("Best on validation"))
    assert line.startswith("Best on validation: PPD (jsd) at lr 0.003, 0.600, against 0.300")
    assert results["tuning"]["best"]["method"] == "PPD (jsd)"
    assert results["tuning"]["no_training"] == pytest.approx(INITIAL_VAL_HITS / VAL)


def test_tuning_figure_plots_the_table(built):
    *_, report, _, figures = built
    head, rows = table(report, "### tuning")
    printed = {r[0]: r for r in rows}
    (ax,) = figures["tuning"].axes
    assert ax.get_xlabel() == "learning rate (trainer.optim.lr)"
    assert ax.get_ylabel() == f"validation exact match (greedy, {VAL} prompts)"
    assert ax.get_xscale() == "log"
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert float(lines.pop("no training").get_ydata()[0]) == pytest.approx(
        float(printed["no training"][head.index("EM at picked lr")])
    )
    assert sorted(lines) == sorted(r for r in printed if r != "no training")
    for method, line in lines.items():
        assert list(line.get_xdata()) == list(study.TUNE_LRS)
        expected = [float(printed[method][head.index(f"lr={lr:g}")][:5]) for lr in study.TUNE_LRS]
        assert list(line.get_ydata()) == pytest.approx(expected, abs=5e-4)


def test_tuned_methods_train_at_the_picked_lrs():
    methods = study.sections(quick=True)["methods"]
    picked = {"PPD (jsd)": 3e-3, "gold SFT": 1e-2, "DPO": None}
    configs, used = study.tuned_methods(methods, picked)
    by_label = {c.label: c for c in configs}
    assert [c.label for c in configs] == [c.label for c in methods]  # labels kept
    assert by_label["PPD (jsd)"].overrides == ("trainer.optim.lr=0.003",)
    assert by_label["gold SFT x4 (ceiling)"].overrides == ("loss=sft", "trainer.optim.lr=0.01")
    assert by_label["gold SFT x4 (ceiling)"].epochs_factor == 4
    assert by_label["DPO"].overrides == ("loss=dpo",)  # no result: the preset's lr
    assert by_label["GKD"].overrides == ("loss=gkd",)  # not tuned
    assert used["PPD (jsd)"] == 3e-3 and used["DPO"] is None and used["GKD"] is None
    assert used["gold SFT x4 (ceiling)"] == 1e-2


def test_tuned_methods_report_their_lrs(built):
    out, meta, chosen, jobs, data, *_ = built
    used = {c.label: PICKED.get(c.label) for c in chosen["methods"]}
    report, results, _ = study.build_report(meta | {"tuned": used}, chosen, jobs, data)
    line = next(x for x in report if x.startswith("Learning rates (`--tuned`"))
    assert "PPD (jsd) 0.003" in line and "GKD 0.001" in line and "VPD -" in line
    assert results["tuned_lrs"] == used
