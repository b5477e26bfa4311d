"""The study: PAD against its alternatives, each of its parts ablated, in one command.

    python experiments/study.py            # the full study: 3 seeds, every section
    python experiments/study.py --quick    # 1 seed, shorter runs, methods + calibration probe

Sections (each a list of training runs of `experiment=study`, seeds paired across runs):

* ``methods``: no training, PPD (jsd), PPD (kl), VPD, DPO, SimPO, DPO-PL, LiPO, RRHF, GKD, seqKD,
  gold SFT (an oracle bound) and gold SFT run 4x longer (the student's capacity ceiling); equal
  epochs, prompts and samples per prompt; each at the preset's learning rate, or with
  ``--tuned`` at the one the ``tuning`` section picked for it on validation prompts;
* ``calibration``: alpha in {0, 0.2, 0.5, 0.8, 1} x {pairwise debiased, listwise rotations,
  pairwise one order (the paper code's)};
* always (unless --no-probe), a calibration probe without training: Kendall tau of r_T, p_sel
  and t_alpha with true quality q on the initial student's samples, every alpha and scheme;
* ``decomposition``: n in {2, 4, 8} x none / split / iterative at equal samples per prompt;
* ``beta``: beta_teacher in {1, 3, 10};
* ``judge``: the dose-response of calibration against judge accuracy: the synthetic judge
  (``calibration.judge=synthetic``, position bias 0) at accuracy in {0.55, 0.7, 0.85, 1}
  (``--judge-accuracies``), each at alpha = 0.8 against one shared control, alpha = 0 with r_T
  at the scale it has at alpha = 0.8 (the calibration section's); the gain on all, flaw and
  clean test prompts, and the accuracy the run's judge check measured;
* ``tuning``: the learning rate of each method (``--tune-methods``, default every trained method
  but the 4x ceiling) over a grid (``--tune-lrs``, default {3e-4, 1e-3, 3e-3, 1e-2}),
  ``--tune-seeds`` seeds (1), each student scored greedily on validation prompts only; the
  picked lr is the one of highest mean validation exact match, ties to the smaller lr.

Every trained student is evaluated again here, greedily, on the test prompts (a tuning run: on
the validation prompts; one that is also a run of another section: on both); every difference
the report states (each setting against its section's reference, the verdicts) gets a 95%
hierarchical bootstrap interval over training seeds and test prompts
(`pad_lightning.reporting.intervals`: the seeds pair the runs, the prompts are paired), each arm
its spread over seeds, each section a power note (the seeds its observed gaps would need), and
exact match is split into the prompts of the teacher's documented flaw and the others. Run
directories hold summary.json; a run whose summary exists is reused, so an interrupted study
resumes where it stopped. Outputs under --out: report.md, results.json, per_prompt.json (the
per-prompt, per-seed scores the intervals come from, kept across invocations in one --out;
`--report-only` derives the report from it and the runs' summaries), PNG plots; all logged to
one MLflow parent run whose children are the runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from _setup import run_config  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from pad_lightning.reporting.intervals import (  # noqa: E402
    NAN,
    Interval,
    combined_verdict,
    hierarchical_interval,
    seed_differences,
    seed_spread,
    seeds_needed,
    unpaired_interval,
    verdict,
)

REPO = Path(__file__).resolve().parents[1]
ALPHAS = (0.0, 0.2, 0.5, 0.8, 1.0)
SCHEMES = {  # calibration schemes: name -> overrides
    "pairwise debiased": ("calibration.mode=pairwise", "calibration.debias=true"),
    "listwise rotations": ("calibration.mode=listwise", "calibration.debias=true"),
    "pairwise one order": ("calibration.mode=pairwise", "calibration.debias=false"),
}
BOOTSTRAP = 4000  # bootstrap replicates of every interval
SCALE_CONTROL = "alpha=0, beta_T=0.2 (r_T at the scale of alpha=0.8)"
EVAL_PROMPTS = 512  # test prompts of the study's own greedy evaluation of every student
PER_PROMPT = "per_prompt.json"  # the per-prompt, per-seed scores of a study, under --out
VAL_PROMPTS = 512  # validation prompts of the tuning section's greedy evaluation
JUDGE_ACCURACIES = (0.55, 0.7, 0.85, 1.0)  # the judge section's synthetic judge accuracies
TUNE_LRS = (3e-4, 1e-3, 3e-3, 1e-2)  # the tuning section's grid of trainer.optim.lr
TUNE_SHARED = {"gold SFT x4 (ceiling)": "gold SFT"}
"""Methods not tuned by default that take another method's picked lr (the same loss, run longer)."""
TIE = 1e-12  # validation means within this of the best are tied: the smaller lr is picked
TEST_KEYS = ("exact_match", "quality")  # a run's per-prompt scores on the test prompts
VAL_KEYS = ("val_exact_match", "val_quality")  # ... and on the validation prompts


@dataclass(frozen=True)
class Config:
    """One training configuration of a section (run once per seed)."""

    label: str
    overrides: tuple[str, ...] = ()
    epochs_factor: int = 1  # gold SFT to convergence: a longer run
    value: float | None = None  # the varied value: judge accuracy (judge), lr (tuning)
    method: str = ""  # tuning: the methods section's label this run tunes

    def slug(self) -> str:
        text = "-".join(self.overrides) or "default"
        if self.epochs_factor != 1:
            text += f"-x{self.epochs_factor}"
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def judge_label(accuracy: float) -> str:
    return f"synthetic judge acc={accuracy:g}"


def tune_label(method: str, lr: float) -> str:
    return f"{method} lr={lr:g}"


def sections(
    quick: bool,
    *,
    judge_accuracies=JUDGE_ACCURACIES,
    tune_methods=None,
    tune_lrs=TUNE_LRS,
) -> dict[str, list[Config]]:
    """Section name -> its configurations; `quick`: the methods section only. `tune_methods`
    (methods-section labels; None: all but TUNE_SHARED's) and `tune_lrs` set the tuning grid."""
    methods = [
        Config("PPD (jsd)"),
        Config("PPD (kl)", ("loss.divergence=kl",)),
        Config("VPD", ("loss=vpd",)),
        Config("DPO", ("loss=dpo",)),
        Config("SimPO", ("loss=simpo",)),
        Config("DPO-PL", ("loss=dpo_pl",)),
        Config("LiPO", ("loss=lipo",)),
        Config("RRHF", ("loss=rrhf",)),
        Config("GKD", ("loss=gkd",)),
        Config("seqKD", ("loss=seqkd",)),
        Config("gold SFT", ("loss=sft",)),
        Config("gold SFT x4 (ceiling)", ("loss=sft",), epochs_factor=4),
    ]
    out = {"methods": methods}
    if quick:
        return out
    # t = 0.2 r_T + 0.8 log p_sel also scales r_T by 0.2: PPD's teacher distribution gets 5x
    # softer whatever the judge says. This control has that scale and no judge.
    control = Config(SCALE_CONTROL, ("calibration.alpha=0", "loss.beta_teacher=0.2"))
    calibration = [Config("alpha=0", ("calibration.alpha=0",)), control]
    for scheme, overrides in SCHEMES.items():
        for alpha in ALPHAS[1:]:
            calibration.append(
                Config(f"alpha={alpha} {scheme}", (f"calibration.alpha={alpha}", *overrides))
            )
    out["calibration"] = calibration
    out["decomposition"] = [
        Config("n=2", ("n=2",)),
        Config("n=4", ()),
        Config("n=4 split k=2", ("decomposition=split", "decomposition.group_size=2")),
        Config("n=4 iterative k=2", ("decomposition=iterative", "decomposition.group_size=2")),
        Config("n=8", ("n=8",)),
        Config("n=8 split k=4", ("n=8", "decomposition=split", "decomposition.group_size=4")),
        Config(
            "n=8 iterative k=4", ("n=8", "decomposition=iterative", "decomposition.group_size=4")
        ),
    ]
    out["beta"] = [
        Config(f"beta_T={b}", (f"loss.beta_teacher={b}",) if b != 1 else ()) for b in (1, 3, 10)
    ]
    out["judge"] = [control] + [
        Config(
            judge_label(float(a)),
            (
                "calibration.alpha=0.8",
                *SCHEMES["pairwise debiased"],
                "calibration.judge=synthetic",
                f"calibration.synthetic.accuracy={float(a)}",
                "calibration.synthetic.position_bias=0.0",
            ),
            value=float(a),
        )
        for a in sorted(judge_accuracies)
    ]
    out["tuning"] = tuning_configs(methods, tune_methods, tune_lrs)
    return out


def tuning_configs(methods: list[Config], wanted, lrs) -> list[Config]:
    """Every (method, lr) of the grid: the method's overrides plus trainer.optim.lr."""
    by_label = {c.label: c for c in methods}
    wanted = list(wanted) if wanted else [c.label for c in methods if c.label not in TUNE_SHARED]
    unknown = [m for m in wanted if m not in by_label]
    if unknown:
        raise ValueError(f"--tune-methods {unknown}: valid: {', '.join(by_label)}")
    return [
        Config(
            tune_label(m, float(lr)),
            (*by_label[m].overrides, f"trainer.optim.lr={float(lr)}"),
            by_label[m].epochs_factor,
            value=float(lr),
            method=m,
        )
        for m in dict.fromkeys(wanted)
        for lr in sorted(set(lrs))
    ]


def pick_lr(means: dict[float, float]) -> float | None:
    """The lr of the highest mean validation exact match, ties (within TIE) broken by the
    smaller lr; None when no lr has a result."""
    means = {lr: m for lr, m in means.items() if not math.isnan(m)}
    if not means:
        return None
    best = max(means.values())
    return min(lr for lr, m in means.items() if m >= best - TIE)


def tuned_methods(methods: list[Config], picked: dict) -> tuple[list[Config], dict]:
    """The methods section at the picked lrs (`picked`: method -> lr or None), and method ->
    the lr it uses (None: the preset's, when its method was not tuned or has no result)."""
    out, used = [], {}
    for c in methods:
        source = c.label if c.label in picked else TUNE_SHARED.get(c.label)
        lr = picked.get(source) if source else None
        used[c.label] = lr
        if lr is not None:
            c = dataclasses.replace(c, overrides=(*c.overrides, f"trainer.optim.lr={lr}"))
        out.append(c)
    return out, used


def effective(overrides: tuple[str, ...], cfg) -> tuple[str, ...]:
    """`overrides` without the `key=value` ones whose value the composed preset `cfg` has."""
    kept = []
    for item in overrides:
        key, _, value = item.partition("=")
        if "." in key:
            current = OmegaConf.select(cfg, key, default=None)
            if current is not None and str(current).lower() == value.lower():
                continue
        kept.append(item)
    return tuple(kept)


# -- running ------------------------------------------------------------------------------------
@dataclass
class Job:
    config: Config
    seed: int
    run_dir: Path
    summary: dict | None = None
    error: str | None = None
    seconds: float = 0.0
    reused: bool = False
    # lists over the test prompts (TEST_KEYS) and the validation prompts (VAL_KEYS), and the
    # judge check's judge/* metrics of a judge-section run ("judge")
    per_prompt: dict = field(default_factory=dict)
    splits: set = field(default_factory=set)  # "test", "val": the evaluations its sections need


def run_job(job: Job, args, parent_id: str, epochs: int, threads: int) -> Job:
    summary_file = job.run_dir / "summary.json"
    if summary_file.is_file():
        job.summary, job.reused = json.loads(summary_file.read_text()), True
        return job
    if args.report_only:
        job.error = "not run (--report-only)"
        return job
    command = [
        sys.executable,
        "-m",
        "pad_lightning.run",
        f"experiment={args.preset}",
        *job.config.overrides,
        f"seed={job.seed}",
        f"trainer.max_epochs={epochs * job.config.epochs_factor}",
        f"trainer.num_threads={threads}",
        f"logger.tracking_uri={args.tracking_uri}",
        f"logger.parent_run_id={parent_id}",
        f"logger.run_name='study: {job.config.label.replace(chr(39), '')} seed={job.seed}'",
        f"hydra.run.dir={job.run_dir}",
        *args.extra,
    ]
    started = time.perf_counter()
    if (job.run_dir / "run_state.json").is_file():  # an earlier attempt that did not finish:
        # kept aside (a new run is refused a folder that holds a run)
        job.run_dir.rename(
            job.run_dir.with_name(f"{job.run_dir.name}.unfinished-{int(time.time())}")
        )
    job.run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = job.run_dir.parent / f"{job.run_dir.name}.log"
    with open(log, "w") as out:
        proc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, text=True)
    job.seconds = time.perf_counter() - started
    if proc.returncode != 0 or not summary_file.is_file():
        tail = log.read_text().strip().splitlines()[-1:] or ["no output"]
        job.error = f"exit {proc.returncode}: {tail[0][:300]} (log: {log})"
    else:
        job.summary = json.loads(summary_file.read_text())
    return job


# -- per-prompt evaluation ----------------------------------------------------------------------
def greedy_scores(model_dir: Path, problems: list, max_new_tokens: int) -> dict[str, list[float]]:
    """Exact match and quality of the model's greedy answer to each problem."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from pad_lightning.data.tasks import exact_match, quality
    from pad_lightning.lm.generation import SamplingConfig, generate

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per evaluated student otherwise
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    gens = generate(
        model,
        tok,
        [p.prompt for p in problems],
        1,
        SamplingConfig(max_new_tokens=max_new_tokens, batch_size=512),
        greedy=True,
    )
    answers = [t[0] for t in gens.texts]
    return {
        "exact_match": [
            float(exact_match(a, p.reference)) for a, p in zip(answers, problems, strict=True)
        ],
        "quality": [quality(a, p.reference) for a, p in zip(answers, problems, strict=True)],
    }


# -- intervals ----------------------------------------------------------------------------------
# An arm's scores: training seed -> per-prompt values on the test prompts; the key None marks a
# fixed model evaluated once (the initial student, the teacher), which has no seed level.
Arm = dict


def rows_of(arm: Arm, prompts: list[int] | None = None) -> list[list[float]]:
    """[seeds][prompts] of an arm, seeds in order, restricted to the prompt indices `prompts`."""
    keys = sorted(arm, key=lambda s: -1 if s is None else s)
    return [list(arm[k]) if prompts is None else [arm[k][i] for i in prompts] for k in keys]


def paired(a: Arm, b: Arm) -> bool:
    """Seeds pair the runs of two arms when both have the same trained seeds."""
    return None not in a and set(a) == set(b)


def difference(a: Arm, b: Arm, prompts: list[int] | None = None) -> Interval:
    """mean(a) - mean(b) and its 95% hierarchical bootstrap interval over seeds and prompts
    (pad_lightning.reporting.intervals): paired seeds when both arms have the same trained
    seeds, unpaired otherwise; prompts always paired; scores in [0, 1]."""
    if not a or not b or prompts == []:
        return NAN
    x, y = rows_of(a, prompts), rows_of(b, prompts)
    if paired(a, b):
        return hierarchical_interval(x, y, resamples=BOOTSTRAP, bounds=(0, 1))
    return unpaired_interval(x, y, resamples=BOOTSTRAP, bounds=(0, 1))


def difference_sd(a: Arm, b: Arm) -> float:
    """sd over seeds of one seed's difference of means: of the per-seed differences when the
    seeds are paired, else sqrt(sd_a^2 + sd_b^2) (a fixed model's sd is 0); nan when unknown."""
    if paired(a, b):
        d = seed_differences(rows_of(a), rows_of(b))
        return float(d.std()) if len(d) > 1 else math.nan
    sds = [0.0 if None in arm else seed_spread(rows_of(arm)).sd for arm in (a, b)]
    return math.hypot(*sds)


def arm_cell(arm: Arm, prompts: list[int] | None = None) -> str:
    """Mean ± sd over seeds of the per-seed means (a fixed model: its one value)."""
    if not arm or prompts == []:
        return "-"
    spread = seed_spread(rows_of(arm, prompts))
    return f"{spread.mean:.3f}" if None in arm else spread.text()


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    m = sum(values) / len(values)
    s = (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0
    return m, s


def run_key(job: Job, out: Path) -> str:
    """A run's key in per_prompt.json: its folder relative to the study's."""
    return str(job.run_dir.relative_to(out))


def per_prompt_file(
    data: StudyData,
    prompts: list[str],
    jobs: list[Job],
    out: Path,
    val_prompts: list[str] | None = None,
) -> dict:
    """per_prompt.json: the test prompts and their flaw flags, every finished run's per-prompt
    exact match and q (by run folder, with its label and seed; a tuning run's on the validation
    prompts, a judge-section run's judge check metrics), the fixed models' and the probe's
    per-prompt values: all the report's intervals are computed from these."""
    saved = {
        "test": {"prompts": prompts, "flaw": data.flaw},
        "initial": data.initial,
        "teacher": data.teacher,
        "runs": {
            run_key(j, out): {"label": j.config.label, "seed": j.seed, **j.per_prompt}
            for j in jobs
            if j.per_prompt
        },
        "probe": data.probe,
    }
    if val_prompts is not None:
        saved["validation"] = {"prompts": val_prompts, "flaw": data.val_flaw}
        saved["initial_val"] = data.initial_val
    return saved


def same_prompts(cache: dict, prompts: list[str], val_prompts: list[str] | None) -> tuple:
    """Whether an earlier per_prompt.json was made on these test and these validation prompts."""
    same_test = cache.get("test", {}).get("prompts") == prompts
    same_val = val_prompts is not None and cache.get("validation", {}).get("prompts") == val_prompts
    return same_test, same_val


def reuse_per_prompt(
    cache: dict,
    prompts: list[str],
    jobs: list[Job],
    out: Path,
    val_prompts: list[str] | None = None,
) -> dict:
    """Fill each reused job's per-prompt scores from an earlier per_prompt.json (`cache`) of this
    folder: its test scores when it was made on the same test prompts, its validation scores when
    on the same validation prompts, its judge metrics always; returns the fixed models' saved
    scores (initial, teacher: none if the test prompts differ; initial_val: none if the
    validation prompts differ)."""
    same_test, same_val = same_prompts(cache, prompts, val_prompts)
    keys = (*(TEST_KEYS if same_test else ()), *(VAL_KEYS if same_val else ()), "judge")
    saved = cache.get("runs", {})
    for job in jobs:
        key = run_key(job, out)
        if job.summary and job.reused and key in saved:
            job.per_prompt |= {k: saved[key][k] for k in keys if k in saved[key]}
    fixed = {}
    if same_test:
        fixed |= {name: cache[name] for name in ("initial", "teacher") if cache.get(name)}
    if same_val and cache.get("initial_val"):
        fixed["initial_val"] = cache["initial_val"]
    return fixed


def kept_runs(cache: dict, prompts: list[str], val_prompts: list[str] | None, keys) -> dict:
    """The runs of an earlier per_prompt.json of this folder that this invocation does not have
    (`keys`: its own), kept so that one --out accumulates every section's scores: those made on
    the same test prompts, without their validation scores if those prompts differ."""
    same_test, same_val = same_prompts(cache, prompts, val_prompts)
    if not same_test:
        return {}
    return {
        key: {k: v for k, v in entry.items() if same_val or k not in VAL_KEYS}
        for key, entry in cache.get("runs", {}).items()
        if key not in keys
    }


def judge_metrics(summary: dict, client) -> dict:
    """The judge check's judge/* metrics of a finished run, read from its MLflow run ({} when
    it has none: no check ran, or the tracking store is not reachable)."""
    import mlflow

    run_id, uri = summary.get("mlflow_run_id"), summary.get("tracking_uri")
    if not run_id:
        return {}
    try:
        if uri and uri != client.tracking_uri:
            client = mlflow.MlflowClient(tracking_uri=uri)
        metrics = client.get_run(run_id).data.metrics
    except Exception as err:  # noqa: BLE001 - another or a moved store: the column shows "-"
        print(f"study: no judge metrics of run {run_id}: {err}", flush=True)
        return {}
    return {k: v for k, v in metrics.items() if k.startswith("judge/")}


# -- calibration probe (no training) ------------------------------------------------------------
@torch.no_grad()
def calibration_probe(cfg, prompts: int, n: int, seed: int) -> dict:
    """Kendall tau with q of r_T, p_sel (each scheme) and t_alpha on the initial student's samples.

    n samples per validation prompt at rollout temperature; teacher scored once; each scheme's
    MCQs asked once. Returns per-prompt taus (for paired intervals) and their means, on all
    prompts and on the prompts of the teacher's documented flaw.
    """
    from pad_lightning.app.models import load_pair
    from pad_lightning.data.answers import quality_matrix
    from pad_lightning.data.problems import build_problems
    from pad_lightning.lm.chat import encode_pairs, pad_id
    from pad_lightning.lm.generation import SamplingConfig, generate
    from pad_lightning.lm.judge import selection_log_probs
    from pad_lightning.lm.scoring import score_pairs
    from pad_lightning.ranking.agreement import kendall_tau
    from pad_lightning.ranking.selection import mix
    from pad_lightning.zoo.builder import flawed

    student, tok_s, teacher, tok_t = load_pair(cfg.model)
    data = OmegaConf.merge(cfg.data, {"val_size": prompts}) if cfg.data.name == "toy" else cfg.data
    _, val, _ = build_problems(data, log=lambda _: None)
    problems = val[:prompts]  # the toy world draws `prompts` of them; a prompt set has its own
    roll = cfg.rollout
    sampling = SamplingConfig(roll.temperature, roll.top_p, roll.top_k, roll.max_new_tokens, 512)
    torch.manual_seed(seed)
    texts = generate(student.eval(), tok_s, [p.prompt for p in problems], n, sampling).texts
    q = quality_matrix(texts, problems)
    pairs = encode_pairs(tok_t, [p.prompt for p in problems], texts)
    r_t = score_pairs(teacher.eval(), pairs, pad_id(tok_t)).view(len(problems), n)
    flaw = [flawed(p, cfg.model.zoo.get("flaw_letters", "")) != p.reference for p in problems]
    taus = {"r_T": kendall_tau(r_t, q)}
    for scheme, overrides in SCHEMES.items():
        mode = overrides[0].split("=")[1]
        debias = overrides[1].endswith("true")
        log_p, _ = selection_log_probs(
            teacher,
            tok_t,
            [p.prompt for p in problems],
            texts,
            mode,
            debias,
            cfg.calibration.template,
            option_template=cfg.calibration.option_template,
        )
        taus[f"p_sel {scheme}"] = kendall_tau(log_p, q)
        for alpha in ALPHAS:
            taus[f"t_{alpha} {scheme}"] = kendall_tau(mix(r_t, log_p, alpha), q)
    defined = ~torch.isnan(taus["r_T"])  # prompts whose n samples differ in q
    for values in taus.values():
        defined &= ~torch.isnan(values)
    flaw_t = torch.tensor(flaw)
    out = {
        "prompts": len(problems),
        "n": n,
        "defined": int(defined.sum()),
        "flaw_prompts": int((defined & flaw_t).sum()),
        "per_prompt": {},
        "mean": {},
        "mean_flaw": {},
        "mean_clean": {},
        "flaw": flaw_t[defined].tolist(),  # of the prompts in per_prompt
    }
    for name, values in taus.items():
        out["per_prompt"][name] = values[defined].tolist()
        out["mean"][name] = float(values[defined].mean())
        out["mean_flaw"][name] = float(values[defined & flaw_t].mean())
        out["mean_clean"][name] = float(values[defined & ~flaw_t].mean())
    return out


# -- report -------------------------------------------------------------------------------------
OTHER_METRICS = (  # (summary key, column title): each run's own test table
    ("teacher_reward", "teacher reward"),
    ("kendall_tau", "tau(student, teacher)"),
    ("student_q_tau", "tau(student, q)"),
)
POWER = 0.8  # of the power note: the chance that a 95% interval excludes 0 at the observed gap


def teacher_cost(timings: dict) -> float:
    keys = ("teacher_scoring", "calibration", "teacher_generation", "teacher_tokens")
    return sum(timings.get(f"total_{k}_tokens", 0) for k in keys)


def fmt(m: float, s: float, digits: int = 3) -> str:
    return "-" if math.isnan(m) else f"{m:.{digits}f} ± {s:.{digits}f}"


REFERENCE = {"methods": 0, "calibration": 0, "decomposition": 1, "beta": 0, "judge": 0}
"""Index of the configuration each section's differences are taken from (PPD's defaults,
alpha = 0 for calibration, n = 4 for decomposition, beta_T = 1, the same-scale control for the
judge). The tuning section has none: it is scored on validation prompts, not in this table."""
FIXED = ("no training", "teacher")  # models evaluated once, in the methods table


@dataclass
class StudyData:
    """What the report is derived from, besides the runs' summaries (per_prompt.json)."""

    flaw: list[bool]  # per test prompt: on the teacher's documented flaw
    initial: dict  # exact_match, quality: per test prompt, the student before training
    teacher: dict  # the same for the teacher
    probe: dict | None = None
    val_flaw: list[bool] | None = None  # per validation prompt (the tuning section's)
    initial_val: dict | None = None  # exact_match, quality: the initial student, validation

    def prompts(self, which: str) -> list[int] | None:
        """Test prompt indices: all (None), "flaw" or "clean"."""
        if which == "all":
            return None
        return [i for i, f in enumerate(self.flaw) if f == (which == "flaw")]


def section_table(
    name: str, configs: list[Config], jobs: dict, arms: dict, data: StudyData
) -> tuple[list[str], list[dict], list[dict]]:
    """The section's table (markdown lines), its interval rows (for the figure) and its results.

    Exact match and q: greedy answers to the study's test prompts, mean ± sd over seeds of each
    seed's mean, on all prompts and split into the teacher's flaw prompts and the others; the
    difference from the reference: 95% hierarchical bootstrap interval over seeds and prompts.
    """
    reference = configs[REFERENCE[name]]
    head = [
        "setting",
        "seeds",
        "exact match",
        "EM flaw prompts",
        "EM clean prompts",
        "q",
        *(t for _, t in OTHER_METRICS),
        f"EM - {reference.label} [95% CI]",
        "wall s",
        "teacher tokens",
        "generated tokens",
    ]
    lines = [f"### {name}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows, results, power = [], [], []
    labels = [c.label for c in configs] + (list(FIXED) if name == "methods" else [])
    base = arms.get(reference.label, {})
    for label in labels:
        arm = arms.get(label, {})
        done = [j for j in jobs.get(label, []) if j.summary]
        quality = {s: (data.initial if label == FIXED[0] else data.teacher)["quality"] for s in arm}
        if label not in FIXED:
            quality = {j.seed: j.per_prompt["quality"] for j in done if "quality" in j.per_prompt}
        diff = NAN if label == reference.label else difference(arm, base)
        cells = [
            label,
            "-" if label in FIXED else str(len(done)),
            arm_cell(arm),
            arm_cell(arm, data.prompts("flaw")),
            arm_cell(arm, data.prompts("clean")),
            arm_cell(quality),
        ]
        for key, _ in OTHER_METRICS:
            values = [j.summary["after"].get(key, float("nan")) for j in done]
            cells.append(fmt(*mean_std(values)) if done else "-")
        cells.append(diff.text())
        timings = [j.summary["timings"] for j in done]
        generated = [
            t.get("total_generated_tokens", t.get("total_generation_tokens", 0)) for t in timings
        ]
        for values in ([t["fit_s"] for t in timings], [teacher_cost(t) for t in timings]):
            cells.append(fmt(*mean_std(values), 0) if timings else "-")
        cells.append(fmt(*mean_std(generated), 0) if timings else "-")
        lines.append("| " + " | ".join(cells) + " |")
        needed = math.nan
        if not math.isnan(diff.mean):
            rows.append({"label": label, "diff": diff.mean, "lo": diff.low, "hi": diff.high})
            needed = seeds_needed(difference_sd(arm, base), diff.mean, power=POWER)
            power.append(f"{label} {needed:.0f}" if math.isfinite(needed) else f"{label} -")
        results.append(
            {
                "label": label,
                "seeds": sorted(s for s in arm if s is not None),
                "exact_match": {
                    which: (
                        seed_spread(rows_of(arm, data.prompts(which)))._asdict() if arm else None
                    )
                    for which in ("all", "flaw", "clean")
                },
                "difference": diff._asdict(),
                "difference_sd": difference_sd(arm, base) if arm and base else None,
                "seeds_needed": needed,
            }
        )
    lines += [
        "",
        f"Power note: seeds per arm for {POWER:.0%} power, i.e. for a 95% interval to exclude 0 "
        "if the true difference were the observed one, n = ((1.96 + 0.84) sd / gap)^2 with sd "
        "the sd over seeds of one seed's difference ('-': unknown with one seed, or no gap): "
        + (", ".join(power) or "-")
        + f". This study has {max((len(r['seeds']) for r in results), default=0)} seed(s).",
        "",
    ]
    return lines, rows, results


def verdicts(
    arms: dict,
    probe_rows: list[dict] | None,
    jobs: dict,
    data: StudyData,
    judge_rows: list[dict] | None = None,
) -> list[str]:
    """One line per paper claim, labelled by its 95% hierarchical intervals only: *supported*
    when every interval that decides it excludes 0 on the claimed side, *refuted* when one
    excludes 0 on the other side, *inconclusive* otherwise. `judge_rows`: the judge section's
    (`judge_section`), one verdict per synthetic judge accuracy."""
    lines = [
        "## Verdicts on the paper's claims",
        "",
        "Rule: a claim is *supported* when every interval that decides it excludes 0 on the",
        "claimed side, *refuted* when one excludes 0 on the other side, *inconclusive* otherwise",
        "(a claim that a setting *keeps* quality is supported only by a higher one). Test exact",
        "match; 95% hierarchical bootstrap intervals over seeds and test prompts.",
        "",
    ]

    def compare(a: str, b: str, prompts=None) -> tuple[str, str] | None:
        """("a minus b: +x [lo, hi]", verdict of the claim a > b), None if an arm is missing."""
        if not arms.get(a) or not arms.get(b):
            return None
        diff = difference(arms[a], arms[b], prompts)
        return f"{a} minus {b}: {diff.text()}", verdict(diff)

    rivals = ["DPO", "SimPO", "DPO-PL", "LiPO", "RRHF", "GKD", "seqKD"]
    for pad in ("PPD (jsd)", "VPD"):
        found = [(r, c) for r in rivals if (c := compare(pad, r))]
        if not found:
            continue
        better = [r for r, (_, w) in found if w == "supported"]
        worse = [r for r, (_, w) in found if w == "refuted"]
        lines.append(
            f"- (a) {pad} beats the baselines: "
            f"**{combined_verdict([w for _, (_, w) in found])}** — higher than "
            f"{better or 'none'}, lower than {worse or 'none'}; "
            + "; ".join(text for _, (text, _) in found)
            + "."
        )
    if probe_rows:
        parts, top = [], None
        for row in probe_rows:
            alpha, scheme = row.get("alpha"), row.get("scheme")
            if alpha is None or alpha in (ALPHAS[0], ALPHAS[-1]):
                continue
            diff = row["diff"]
            parts.append(f"alpha {alpha} {scheme}: {diff.text()}")
            if top is None or diff.mean > top[0].mean:
                top = (diff, alpha, scheme)
        if top:
            diff, alpha, scheme = top
            found = verdict(diff)
            label = "inconclusive" if found == "supported" and alpha != 0.8 else found
            lines.append(
                f"- (b) calibration with alpha near 0.8 ranks samples closer to q than r_T "
                f"alone: **{label}** at the score level — best {scheme} alpha {alpha}: "
                f"{diff.text()} in Kendall tau; " + "; ".join(parts) + "."
            )
    trained = [compare(f"alpha=0.8 {s}", "alpha=0") for s in SCHEMES]
    judged = [compare(f"alpha=0.8 {s}", SCALE_CONTROL) for s in SCHEMES]
    for claim, found in (
        ("(b') training with alpha 0.8 beats alpha 0", trained),
        # the judge's share of (b'): alpha 0.8 against r_T at the same scale
        (
            "(b'') the judge, not the scale of t, makes alpha 0.8 better (against r_T scaled "
            "by 0.2, no judge)",
            judged,
        ),
    ):
        found = [t for t in found if t]
        if found:
            lines.append(
                f"- {claim}: **{combined_verdict([w for _, w in found])}** — "
                + "; ".join(t for t, _ in found)
                + "."
            )
    if judge_rows:
        lines.append(
            "- (b''') calibration helps when the judge is good (the synthetic judge at a known "
            f"accuracy, alpha 0.8, against {SCALE_CONTROL}; all test prompts): "
            + "; ".join(
                f"accuracy {r['accuracy']:g} **{r['verdict']}** ({r['all'].text()})"
                for r in judge_rows
            )
            + f"; {threshold(judge_rows)}."
        )
    for k, mode in (("4", "split"), ("4", "iterative")):
        c = compare(f"n=8 {mode} k={k}", "n=8")
        if c:
            cost = [
                mean_std([teacher_cost(j.summary["timings"]) for j in jobs[lab] if j.summary])[0]
                for lab in (f"n=8 {mode} k={k}", "n=8")
            ]
            found = c[1] if cost[0] < cost[1] or c[1] == "refuted" else "inconclusive"
            lines.append(
                f"- (c) {mode} decomposition keeps quality at lower cost (n = 8): "
                f"**{found}** — {c[0]}; teacher tokens {cost[0]:.0f} vs {cost[1]:.0f}."
            )
    trained_labels = [  # the oracles (gold SFT, the synthetic judge) read the references
        lab
        for lab in arms
        if lab not in FIXED and arms[lab] and not lab.startswith(("gold SFT", "synthetic judge"))
    ]
    best = max(trained_labels, key=lambda lab: seed_spread(rows_of(arms[lab])).mean, default=None)
    if best and arms.get("teacher"):
        text, found = compare(best, "teacher")
        lines.append(
            f"- (d) the student surpasses its teacher: **{found}** — best trained method "
            f"(picked by its mean, not corrected for the choice) {text}."
        )
    flaw = data.prompts("flaw")
    if arms.get("teacher") and flaw:  # decided by PAD's student; the best method shown too
        found = [
            (lab, c)
            for lab in dict.fromkeys(("PPD (jsd)", best))
            if lab and (c := compare(lab, "teacher", flaw))
        ]
        if found:
            lines.append(
                f"- (e) on the teacher's flaw prompts ({len(flaw)} of {len(data.flaw)}) the "
                f"student passes the teacher: **{found[0][1][1]}** ({found[0][0]}) — "
                + "; ".join(text for _, (text, _) in found)
                + "."
            )
    return lines + [""]


def probe_table(probe: dict) -> list[dict]:
    """The probe table's rows: score name, its alpha and scheme (t_alpha rows), mean Kendall tau
    on all defined prompts, on the flaw prompts and on the others, and the difference from r_T
    alone with its interval (one draw of samples, no seeds: the prompt bootstrap)."""
    flaw = probe.get("flaw")
    base = probe["per_prompt"]["r_T"]
    rows = []
    for name, values in probe["per_prompt"].items():
        row = {"score": name, "alpha": None, "scheme": None}
        if name.startswith("t_"):
            alpha, _, scheme = name[2:].partition(" ")
            row["alpha"], row["scheme"] = float(alpha), scheme
        if flaw is not None:  # from the per-prompt values
            parts = {
                "all": values,
                "flaw": [v for v, f in zip(values, flaw, strict=True) if f],
                "clean": [v for v, f in zip(values, flaw, strict=True) if not f],
            }
            for key, vals in parts.items():
                row[key] = sum(vals) / len(vals) if vals else math.nan
        else:  # a probe saved before the flags
            row |= {"all": probe["mean"][name], "flaw": probe["mean_flaw"][name]}
            row["clean"] = probe["mean_clean"][name]
        row["diff"] = (
            NAN
            if name == "r_T"
            else hierarchical_interval([values], [base], resamples=BOOTSTRAP, bounds=(-1, 1))
        )
        rows.append(row)
    return rows


def probe_lines(probe: dict, rows: list[dict]) -> list[str]:
    lines = [
        "### Calibration probe (no training)",
        "",
        f"Kendall tau with true quality q over {probe['defined']} validation prompts "
        f"(n = {probe['n']} samples of the initial student; prompts whose samples all have one q "
        f"are left out), {probe['flaw_prompts']} of them on the teacher's flaw. Interval: "
        "bootstrap over prompts of the difference from alpha = 0 (r_T alone); one draw of "
        "samples, so there is no seed level.",
        "",
        "| score | " + " | ".join(PROBE_COLUMNS.values()) + " | minus r_T [95% CI] |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        cells = ["-" if math.isnan(row[k]) else f"{row[k]:.3f}" for k in PROBE_COLUMNS]
        lines.append(f"| {row['score']} | " + " | ".join(cells) + f" | {row['diff'].text()} |")
    return lines + [""]


PROBE_COLUMNS = {"all": "all prompts", "flaw": "flaw prompts", "clean": "other prompts"}


SPLITS = {"all": "all prompts", "flaw": "flaw prompts", "clean": "clean prompts"}


def threshold(rows: list[dict]) -> str:
    """The smallest synthetic judge accuracy whose all-prompts interval excludes 0 (and on which
    side), and the smallest whose interval lies above 0, if another."""
    excluding = [r for r in rows if r["verdict"] != "inconclusive"]
    if not excluding:
        return "smallest accuracy whose interval excludes 0: none"
    first = excluding[0]
    side = "above 0: helps" if first["verdict"] == "supported" else "below 0: hurts"
    text = f"smallest accuracy whose interval excludes 0: {first['accuracy']:g} ({side})"
    if first["verdict"] != "supported":
        helps = [r for r in rows if r["verdict"] == "supported"]
        text += f"; smallest above 0: {helps[0]['accuracy']:g}" if helps else "; none above 0"
    return text


def judge_section(
    configs: list[Config], arms: dict, jobs: dict, data: StudyData
) -> tuple[list[str], list[dict], list[dict]]:
    """The judge section's dose-response table (markdown lines), its rows (for the figure and the
    verdicts) and results: per synthetic judge accuracy, the gain of alpha = 0.8 over the shared
    same-scale control (configs[0]) in test exact match on all, flaw and clean prompts, each with
    its hierarchical interval, the accuracy the runs' judge check measured (judge/accuracy of
    their MLflow runs: mean ± sd over seeds) and the verdict on the all-prompts gain."""
    control = configs[0].label
    base = arms.get(control, {})
    head = [
        "synthetic judge accuracy",
        "seeds",
        "judge check accuracy (measured)",
        "exact match",
        *(f"gain, {title} [95% CI]" for title in SPLITS.values()),
        "calibration helps (all prompts)",
    ]
    lines = [
        "### judge: calibration against judge accuracy",
        "",
        f"Gain in test exact match of alpha = 0.8 with the synthetic judge (pairwise debiased, "
        f"position bias 0) over the control **{control}** (no judge; {len(jobs.get(control, []))}"
        f" run(s), exact match {arm_cell(base)}), on all test prompts and split into the "
        "teacher's flaw prompts and the others; 95% hierarchical intervals over seeds and prompts "
        "(seeds paired). Judge check accuracy: what each run's judge check measured on graded "
        "pairs of the initial student's samples (MLflow judge/accuracy), mean ± sd over seeds.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    rows, results = [], []
    for c in configs[1:]:
        arm = arms.get(c.label, {})
        done = [j for j in jobs.get(c.label, []) if j.summary]
        measured = [
            j.per_prompt["judge"]["judge/accuracy"]
            for j in done
            if "judge/accuracy" in j.per_prompt.get("judge", {})
        ]
        gains = {w: difference(arm, base, data.prompts(w)) for w in SPLITS}
        row = {"label": c.label, "accuracy": c.value, **gains, "verdict": verdict(gains["all"])}
        rows.append(row)
        lines.append(
            "| "
            + " | ".join(
                [
                    f"{c.value:g}",
                    str(len(done)),
                    fmt(*mean_std(measured)) if measured else "-",
                    arm_cell(arm),
                    *(gains[w].text() for w in SPLITS),
                    row["verdict"],
                ]
            )
            + " |"
        )
        results.append(
            {
                "label": c.label,
                "accuracy": c.value,
                "seeds": sorted(s for s in arm if s is not None),
                "judge_accuracy_measured": measured,
                "gain": {w: gains[w]._asdict() for w in SPLITS},
                "verdict": row["verdict"],
            }
        )
    lines += ["", f"Calibration helps when the judge is good: {threshold(rows)}.", ""]
    return lines, rows, results


def val_arm(jobs: list[Job]) -> Arm:
    """seed -> per-prompt validation exact match of the jobs that have one."""
    return {
        j.seed: j.per_prompt["val_exact_match"] for j in jobs if "val_exact_match" in j.per_prompt
    }


def arm_mean(arm: Arm) -> float:
    return seed_spread(rows_of(arm)).mean if arm else math.nan


def picked_lrs(configs: list[Config], jobs: dict) -> dict[str, float | None]:
    """method -> its picked lr (`pick_lr` of the mean validation exact match of each lr)."""
    means: dict[str, dict[float, float]] = {}
    for c in configs:
        means.setdefault(c.method, {})[c.value] = arm_mean(val_arm(jobs.get(c.label, [])))
    return {method: pick_lr(by_lr) for method, by_lr in means.items()}


def tuning_section(
    configs: list[Config], jobs: dict, data: StudyData
) -> tuple[list[str], list[dict], dict]:
    """The tuning section's grid table (markdown lines), its rows (for the figure) and results:
    greedy exact match on the validation prompts of each method at each lr (mean ± sd over
    seeds), the picked lr (highest mean, ties to the smaller lr), and the picked lr's student
    minus the untrained student on the same prompts with its interval."""
    lrs = sorted({c.value for c in configs})
    cell = {(c.method, c.value): c for c in configs}
    methods = list(dict.fromkeys(c.method for c in configs))
    picked = picked_lrs(configs, jobs)
    initial = {None: data.initial_val["exact_match"]} if data.initial_val else {}
    n_val = len(data.initial_val["exact_match"]) if data.initial_val else 0
    seeds = max((len(val_arm(jobs.get(c.label, []))) for c in configs), default=0)
    head = [
        "method",
        *(f"lr={lr:g}" for lr in lrs),
        "picked lr",
        "EM at picked lr",
        "picked minus no training [95% CI]",
    ]
    lines = [
        "### tuning",
        "",
        f"Learning rate (trainer.optim.lr) per method: greedy exact match on {n_val} "
        f"validation prompts (never the test prompts), {seeds} seed(s), mean ± sd over seeds. "
        "Picked: the lr of the highest mean validation exact match, ties broken by the smaller "
        "lr; `--tuned` trains the methods section at these. The last column: the picked "
        "student minus the untrained one on the same validation prompts (unpaired: the untrained "
        "student is one model), picked on these prompts, so optimistic.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        "| " + " | ".join(["no training", *("-" for _ in lrs), "-", arm_cell(initial), "-"]) + " |",
    ]
    rows, results = [], {"lrs": lrs, "val_prompts": n_val, "methods": {}}
    results["no_training"] = arm_mean(initial)
    for method in methods:
        arms = {
            lr: val_arm(jobs.get(cell[(method, lr)].label, []))
            for lr in lrs
            if (method, lr) in cell
        }
        lr = picked[method]
        best = arms.get(lr, {}) if lr is not None else {}
        diff = difference(best, initial) if best and initial else NAN
        lines.append(
            "| "
            + " | ".join(
                [
                    method,
                    *(arm_cell(arms.get(x, {})) for x in lrs),
                    "-" if lr is None else f"{lr:g}",
                    arm_cell(best),
                    diff.text(),
                ]
            )
            + " |"
        )
        points = [(x, arm_mean(a)) for x, a in arms.items() if a]
        rows.append(
            {"method": method, "lrs": [x for x, _ in points], "means": [m for _, m in points]}
        )
        results["methods"][method] = {
            "picked_lr": lr,
            "by_lr": {
                str(x): seed_spread(rows_of(a))._asdict() if a else None for x, a in arms.items()
            },
            "minus_no_training": diff._asdict(),
        }
    ranked = [m for m in methods if picked[m] is not None]
    top = max(
        ranked, key=lambda m: arm_mean(val_arm(jobs[cell[(m, picked[m])].label])), default=None
    )
    if top and initial:
        best = val_arm(jobs[cell[(top, picked[top])].label])
        diff = difference(best, initial)
        lines += [
            "",
            f"Best on validation: {top} at lr {picked[top]:g}, {arm_mean(best):.3f}, against "
            f"{arm_mean(initial):.3f} untrained: {diff.text()}, **{verdict(diff)}** that the best "
            "tuned method beats the untrained student (picked on these prompts: optimistic; the "
            "test comparison is the methods section with `--tuned`).",
        ]
        results["best"] = {"method": top, "lr": picked[top], "minus_no_training": diff._asdict()}
    return lines + [""], rows, results


def new_figure(width: float, height: float, panels: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, panels, sharey=True, squeeze=False)[0]


def section_figure(section: str, reference: str, rows: list[dict]):
    """Each setting's difference from the section's reference with its interval (the table's
    difference column)."""
    fig, (ax,) = new_figure(9, 0.4 * len(rows) + 1.6)
    ys = list(range(len(rows)))
    ax.errorbar(
        [r["diff"] for r in rows],
        ys,
        xerr=[[r["diff"] - r["lo"] for r in rows], [r["hi"] - r["diff"] for r in rows]],
        fmt="o",
        capsize=3,
    )
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(ys, [r["label"] for r in rows])
    ax.invert_yaxis()  # the table's order, top to bottom
    ax.set_xlabel(
        f"{section}: test exact match minus {reference}\n"
        "(mean and 95% interval over seeds and prompts)"
    )
    ax.set_title(f"{section}: test exact match minus {reference}")
    fig.tight_layout()
    return fig


def probe_figure(rows: list[dict]):
    """Kendall tau(t_alpha, q) against alpha, one line per scheme, one panel per column of the
    probe table (the numbers it prints)."""
    fig, axes = new_figure(4 * len(PROBE_COLUMNS), 4, len(PROBE_COLUMNS))
    for ax, (key, title) in zip(axes, PROBE_COLUMNS.items(), strict=True):
        for scheme in SCHEMES:
            points = sorted((r["alpha"], r[key]) for r in rows if r["scheme"] == scheme)
            ax.plot([a for a, _ in points], [v for _, v in points], marker="o", label=scheme)
        ax.set_xlabel("alpha (weight of log p_sel)")
        ax.set_title(title)
    axes[0].set_ylabel("Kendall tau(t_alpha, q)")
    axes[0].legend()
    fig.suptitle("Calibration probe: calibrated teacher score t_alpha vs true quality q")
    fig.tight_layout()
    return fig


JUDGE_OFFSETS = {"all": 0.0, "flaw": -0.006, "clean": 0.006}
"""x offsets of the judge figure's three lines: an accuracy's points side by side."""


def judge_figure(rows: list[dict], control: str):
    """The gain over the control against the synthetic judge's accuracy, one line each for all,
    flaw and clean prompts, with interval bars (the dose-response table's gain columns)."""
    fig, (ax,) = new_figure(7, 4.5)
    for which, title in SPLITS.items():
        points = [r for r in rows if not math.isnan(r[which].mean)]
        if not points:
            continue
        ax.errorbar(
            [r["accuracy"] + JUDGE_OFFSETS[which] for r in points],
            [r[which].mean for r in points],
            yerr=[
                [r[which].mean - r[which].low for r in points],
                [r[which].high - r[which].mean for r in points],
            ],
            marker="o",
            capsize=3,
            label=title,
        )
    ax.axhline(0, color="grey", lw=1)
    ax.set_xlabel("synthetic judge accuracy on graded pairs")
    ax.set_ylabel(f"test exact match minus the control\n{SCALE_CONTROL}", fontsize=8)
    ax.set_title("judge: gain of alpha = 0.8 over the same-scale control (95% intervals)")
    ax.legend()
    fig.tight_layout()
    return fig


def tuning_figure(rows: list[dict], no_training: float, n_val: int):
    """Validation exact match against the learning rate, one line per method, and the
    untrained student (the tuning table's lr columns)."""
    from matplotlib import colormaps

    fig, (ax,) = new_figure(8, 5)
    colours = colormaps["tab20"]
    for i, row in enumerate(rows):
        ax.plot(row["lrs"], row["means"], marker="o", color=colours(i % 20), label=row["method"])
    if not math.isnan(no_training):
        ax.axhline(no_training, color="grey", ls="--", lw=1, label="no training")
    ax.set_xscale("log")
    lrs = sorted({lr for row in rows for lr in row["lrs"]})
    ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs])
    ax.minorticks_off()
    ax.set_xlabel("learning rate (trainer.optim.lr)")
    ax.set_ylabel(f"validation exact match (greedy, {n_val} prompts)")
    ax.set_title("tuning: validation exact match against the learning rate")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def build_report(meta: dict, chosen: dict, jobs: dict, data: StudyData):
    """Report lines, results (JSON-able) and figures (name -> Figure) of a finished study.

    `chosen`: section -> configs; `jobs`: config label -> its jobs (summary and per-prompt scores
    of each seed); `data`: the per-prompt evaluation of the fixed models, the flaw flags and the
    probe; `meta`: command, quick, seeds, epochs, preset, card, and optionally tune_seeds and
    tuned (method -> the lr the methods section was trained at, None: the preset's; absent
    without --tuned).
    """
    card, n_test = meta["card"], len(data.flaw)
    em_of = {
        lab: (sum(v["exact_match"]) / n_test)
        for lab, v in zip(FIXED, (data.initial, data.teacher), strict=True)
    }
    report = [
        f"# Study report ({'quick' if meta['quick'] else 'full'})",
        "",
        f"Command: `{meta['command']}`; {meta['seeds']} seed(s)"
        + (f" ({meta.get('tune_seeds', 1)} in the tuning section)" if "tuning" in chosen else "")
        + f"; {meta['epochs']} epochs per run; "
        f"preset `experiment={meta['preset']}`; zoo `{card['key']}`.",
        "",
        "## The world",
        "",
        f"- teacher: test exact match {card['models']['teacher']['test']['exact_match']:.3f}; "
        "judge accuracy "
        + ", ".join(
            f"{k} {v:.1%}" if isinstance(v, float) else f"{k} {v}"
            for k, v in card["models"]["teacher"].get("judge", {}).items()
        ),
        f"- student before training: test exact match {em_of['no training']:.3f}"
        f" (zoo card: {card['models']['student']['test']['exact_match']:.3f})",
        f"- teacher greedy on the same {n_test} test prompts: exact match "
        f"{em_of['teacher']:.3f}; {sum(data.flaw)} of them on its documented flaw",
        "",
        "Intervals: 95% hierarchical bootstrap over training seeds and test prompts "
        "(pad_lightning.reporting.intervals: seeds pair the runs of two settings, prompts are "
        "paired, the seed level is drawn from Student's t with seeds - 1 degrees of freedom, "
        "prompts resampled; with one seed it is the prompt bootstrap, conditional on the trained "
        "students). Exact match columns: mean ± sd over seeds of each seed's mean.",
        "",
    ]
    results = {
        "seeds": meta["seeds"],
        "epochs": meta["epochs"],
        "card": card,
        "sections": {},
        "probe": data.probe,
        "initial": data.initial,
        "teacher": data.teacher,
    }
    figures = {}
    table = None
    if data.probe is not None:
        table = probe_table(data.probe)
        report += probe_lines(data.probe, table)
        figures["calibration_tau"] = probe_figure(table)
        results["probe_table"] = [r | {"diff": r["diff"]._asdict()} for r in table]
    arms = {  # label -> seed -> per-prompt test exact match
        lab: {None: v["exact_match"]}
        for lab, v in zip(FIXED, (data.initial, data.teacher), strict=True)
    }
    for name, configs in chosen.items():
        if name == "tuning":  # scored on validation prompts: no test arms
            continue
        for c in configs:
            arms[c.label] = {
                j.seed: j.per_prompt["exact_match"]
                for j in jobs[c.label]
                if "exact_match" in j.per_prompt
            }
    judge_rows = None
    for name, configs in chosen.items():
        if name == "tuning":
            lines, rows, tuning = tuning_section(configs, jobs, data)
            report += lines
            figures["tuning"] = tuning_figure(rows, tuning["no_training"], tuning["val_prompts"])
            results["tuning"] = tuning
            results["sections"]["tuning"] = [
                {
                    "label": c.label,
                    "method": c.method,
                    "lr": c.value,
                    "runs": [
                        {
                            "seed": j.seed,
                            "run_dir": str(j.run_dir),
                            "overrides": j.config.overrides,
                            "val": (j.summary or {}).get("val"),
                            "timings": (j.summary or {}).get("timings"),
                            "error": j.error,
                        }
                        for j in jobs.get(c.label, [])
                    ],
                }
                for c in configs
            ]
            continue
        reference = configs[REFERENCE[name]].label
        lines, rows, section = section_table(name, configs, jobs, arms, data)
        report += lines
        if name == "methods" and meta.get("tuned") is not None:
            used = meta["tuned"]
            report += [
                "Learning rates (`--tuned`: picked on validation prompts by the tuning section; "
                "'-': the preset's): "
                + ", ".join(f"{lab} {'-' if lr is None else f'{lr:g}'}" for lab, lr in used.items())
                + ".",
                "",
            ]
            results["tuned_lrs"] = used
        if name == "judge":
            lines, judge_rows, dose = judge_section(configs, arms, jobs, data)
            report += lines
            figures["judge"] = judge_figure(judge_rows, reference)
            results["judge"] = dose
        elif rows:
            figures[name] = section_figure(name, reference, rows)
        for entry in section:
            runs = jobs.get(entry["label"], [])
            entry["runs"] = [
                {
                    "seed": j.seed,
                    "run_dir": str(j.run_dir),
                    "overrides": j.config.overrides,
                    "after": (j.summary or {}).get("after"),
                    "timings": (j.summary or {}).get("timings"),
                    "error": j.error,
                }
                for j in runs
            ]
        results["sections"][name] = [e for e in section if e["label"] not in FIXED]
        if name == "methods":  # the models evaluated once
            results["fixed_models"] = [e for e in section if e["label"] in FIXED]
    report += verdicts(arms, table, jobs, data, judge_rows)
    return report, results, figures


# -- main ---------------------------------------------------------------------------------------
def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, short runs, methods only")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per config (3; quick 1)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (preset's)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (threads split)")
    parser.add_argument(
        "--sections",
        default=None,
        help="comma list of sections to run: methods, calibration, decomposition, beta, judge, "
        "tuning (default: all; --quick: methods)",
    )
    parser.add_argument("--preset", default="study", help="experiment= preset of every run")
    parser.add_argument("--out", default=None, help="output folder (outputs/study/<time>)")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--probe-prompts", type=int, default=256)
    parser.add_argument("--no-probe", action="store_true", help="skip the calibration probe")
    parser.add_argument(
        "--judge-accuracies",
        type=floats,
        default=list(JUDGE_ACCURACIES),
        help="judge section: comma list of synthetic judge accuracies in [0.5, 1] "
        "(0.55,0.7,0.85,1.0)",
    )
    parser.add_argument(
        "--methods",
        default=None,
        help="methods section: comma list of its labels to train (all; the untrained student "
        "and the teacher are always reported)",
    )
    parser.add_argument(
        "--tune-methods",
        default=None,
        help="tuning section: comma list of methods-section labels (every trained method but "
        f"{', '.join(TUNE_SHARED)}, which takes {', '.join(TUNE_SHARED.values())}'s lr)",
    )
    parser.add_argument(
        "--tune-lrs",
        type=floats,
        default=list(TUNE_LRS),
        help="tuning section: comma list of trainer.optim.lr values (0.0003,0.001,0.003,0.01)",
    )
    parser.add_argument("--tune-seeds", type=int, default=1, help="tuning section: seeds (1)")
    parser.add_argument(
        "--tuned",
        action="store_true",
        help="train the methods section at the lrs the tuning section picks on validation "
        "prompts (adds the tuning section; its runs are reused from --out when there)",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="train nothing: report the finished runs"
    )
    parser.add_argument("extra", nargs="*", help="Hydra overrides added to every run")
    args = parser.parse_args()
    started = time.perf_counter()
    seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    if seeds < 1 or args.tune_seeds < 1:
        sys.exit("study: --seeds and --tune-seeds must be at least 1")
    bad = [a for a in args.judge_accuracies if not 0.5 <= a <= 1]
    if bad or not args.judge_accuracies:
        sys.exit(f"study: --judge-accuracies {bad or 'empty'}: each in [0.5, 1]")
    if not args.tune_lrs or any(lr <= 0 for lr in args.tune_lrs):
        sys.exit(f"study: --tune-lrs {args.tune_lrs}: positive learning rates")
    options = {
        "judge_accuracies": args.judge_accuracies,
        "tune_methods": args.tune_methods.split(",") if args.tune_methods else None,
        "tune_lrs": args.tune_lrs,
    }
    try:
        every = sections(False, **options)
    except ValueError as err:
        sys.exit(f"study: {err}")
    chosen = sections(args.quick, **options)
    if args.sections:
        wanted = args.sections.split(",")
        unknown = [s for s in wanted if s not in every]
        if unknown:
            sys.exit(f"study: --sections {unknown}: valid: {', '.join(every)}")
        chosen = {k: v for k, v in every.items() if k in wanted}
    if args.methods:
        labels = [c.label for c in every["methods"]]
        picked = args.methods.split(",")
        unknown = [m for m in picked if m not in labels]
        if unknown:
            sys.exit(f"study: --methods {unknown}: valid: {', '.join(labels)}")
        if "methods" in chosen:
            chosen["methods"] = [c for c in chosen["methods"] if c.label in picked]
    if args.tuned:
        if "methods" not in chosen:
            sys.exit("study: --tuned trains the methods section at the picked lrs: add methods")
        chosen.setdefault("tuning", every["tuning"])
    out = Path(args.out or REPO / "outputs" / "study" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    out.mkdir(parents=True, exist_ok=True)
    if args.tracking_uri.startswith("sqlite:///") and not args.tracking_uri.startswith(
        "sqlite:////"
    ):
        args.tracking_uri = "sqlite:///" + str((REPO / args.tracking_uri[10:]).resolve())
    cfg = run_config([f"experiment={args.preset}", *args.extra])
    epochs = args.epochs or (cfg.trainer.max_epochs // 3 if args.quick else cfg.trainer.max_epochs)

    # models first (the zoo is built once, before any parallel job needs it)
    from pad_lightning.app.models import zoo_config
    from pad_lightning.data.problems import build_problems
    from pad_lightning.zoo.builder import ensure_zoo, flawed

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    root = ensure_zoo(zoo_config(cfg.model.zoo))
    card = json.loads((root / "card.json").read_text())
    print(f"study zoo {root}", flush=True)

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=args.tracking_uri)
    from pad_lightning.tracking.mlflow_run import experiment_id

    exp = experiment_id(client, cfg.logger.experiment_name)
    parent = client.create_run(
        exp,
        run_name=f"study{' (quick)' if args.quick else ''}: {out.name}",
        tags={
            "study.dir": str(out),
            "mlflow.note.content": "`python experiments/study.py " + " ".join(sys.argv[1:]) + "`",
        },
    )
    parent_id = parent.info.run_id
    print(f"MLflow parent run {parent_id}; runs in {out}", flush=True)

    # per-prompt results of an earlier invocation in this folder (reused runs keep theirs)
    cache_file = out / PER_PROMPT
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}

    # the calibration probe needs no training (--report-only reuses the saved one)
    probe = None
    if not args.no_probe:
        if args.report_only and cache.get("probe") is not None:
            probe = cache["probe"]
        else:
            print("calibration probe (no training) ...", flush=True)
            probe = calibration_probe(cfg, args.probe_prompts, cfg.n, seed=0)

    # the study's own evaluation sets: test prompts (every section but tuning) and validation
    # prompts (tuning); a run reused from an earlier invocation keeps its saved scores
    eval_cfg = run_config(
        [
            f"experiment={args.preset}",
            *args.extra,
            f"data.test_size={EVAL_PROMPTS}",
            f"data.val_size={VAL_PROMPTS}",
        ]
    )
    _, val, test = build_problems(eval_cfg.data, log=lambda _: None)
    new_tokens = cfg.rollout.max_new_tokens
    prompts, val_prompts = [p.prompt for p in test], [p.prompt for p in val]
    fixed: dict = {}

    # every distinct (config, seed) once, across sections (overrides the preset already has are
    # dropped first, so that e.g. alpha=0.8 pairwise debiased shares the runs of PPD's defaults)
    chosen = {
        name: [dataclasses.replace(c, overrides=effective(c.overrides, cfg)) for c in configs]
        for name, configs in chosen.items()
    }
    unique: dict[tuple, Job] = {}
    threads = max(1, (os.cpu_count() or 2) // args.jobs)
    counter = {"done": 0, "all": 0}

    def seeds_of(name: str) -> int:
        return args.tune_seeds if name == "tuning" else seeds

    def job_of(c: Config, seed: int) -> Job:
        key = (tuple(sorted(c.overrides)), c.epochs_factor, seed)
        return unique.setdefault(key, Job(c, seed, out / "runs" / c.slug() / f"seed{seed}"))

    def schedule(names: list[str]) -> list[Job]:
        """The jobs of these sections, each marked with the evaluations its sections need."""
        batch = []
        for name in names:
            for c in chosen[name]:
                for seed in range(seeds_of(name)):
                    job = job_of(c, seed)
                    job.splits.add("val" if name == "tuning" else "test")
                    if name == "judge" and c.value is not None:
                        job.splits.add("judge")
                    batch.append(job)
        return list({id(j): j for j in batch}.values())  # each job once

    def one(job: Job) -> Job:
        run_job(job, args, parent_id, epochs, threads)
        counter["done"] += 1
        state = "reused" if job.reused else ("FAILED " + job.error if job.error else "ok")
        print(
            f"[{counter['done']}/{counter['all']}] {job.config.label} seed={job.seed}: {state} "
            f"({job.seconds:.0f} s, study {time.perf_counter() - started:.0f} s)",
            flush=True,
        )
        return job

    ran: set[int] = set()

    def execute(batch: list[Job]) -> None:
        """Train the jobs not trained yet, then evaluate each on what its sections need."""
        todo = [j for j in batch if id(j) not in ran]
        ran.update(map(id, todo))
        counter["all"] += len(todo)
        print(f"{len(todo)} runs, {args.jobs} at a time, {epochs} epochs each", flush=True)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            list(pool.map(one, todo))
        fixed.update(reuse_per_prompt(cache, prompts, todo, out, val_prompts))
        for job in batch:
            if not job.summary:
                continue
            student = job.run_dir / "student"
            if "test" in job.splits and "exact_match" not in job.per_prompt:
                job.per_prompt |= greedy_scores(student, test, new_tokens)
            if "val" in job.splits and "val_exact_match" not in job.per_prompt:
                scores = greedy_scores(student, val, new_tokens)
                job.per_prompt |= {f"val_{k}": v for k, v in scores.items()}
            if "judge" in job.splits and not job.per_prompt.get("judge"):
                found = judge_metrics(job.summary, client)
                if found:
                    job.per_prompt["judge"] = found

    tuned = None
    if "tuning" in chosen:  # first: --tuned trains the methods at what it picks
        execute(schedule(["tuning"]))
        if args.tuned:
            by_label = {
                c.label: [job_of(c, s) for s in range(args.tune_seeds)] for c in chosen["tuning"]
            }
            methods, tuned = tuned_methods(
                chosen["methods"], picked_lrs(chosen["tuning"], by_label)
            )
            chosen["methods"] = [
                dataclasses.replace(c, overrides=effective(c.overrides, cfg)) for c in methods
            ]
            print("tuned lrs: " + ", ".join(f"{k} {v}" for k, v in tuned.items()), flush=True)
    execute(schedule([name for name in chosen if name != "tuning"]))
    jobs_list = list(unique.values())
    for job in jobs_list:  # runs reused from an earlier invocation join this parent too
        run_id = (job.summary or {}).get("mlflow_run_id")
        if job.reused and run_id:
            try:
                client.set_tag(run_id, "mlflow.parentRunId", parent_id)
            except mlflow.exceptions.MlflowException as err:  # another tracking store
                print(f"study: cannot attach reused run {run_id}: {err}", flush=True)

    # the initial student and the teacher on the test prompts, the initial student on the
    # validation prompts when tuning (saved in per_prompt.json, read back when reused)
    for name, model in (("initial", "student"), ("teacher", "teacher")):
        if name not in fixed:
            fixed[name] = greedy_scores(root / model, test, new_tokens)
    if "tuning" in chosen and "initial_val" not in fixed:
        fixed["initial_val"] = greedy_scores(root / "student", val, new_tokens)
    if "initial_val" not in fixed and same_prompts(cache, prompts, val_prompts)[1]:
        fixed["initial_val"] = cache.get("initial_val")  # kept for a later invocation
    letters = cfg.model.zoo.get("flaw_letters", "") or ""
    data = StudyData(
        flaw=[flawed(p, letters) != p.reference for p in test],
        initial=fixed["initial"],
        teacher=fixed["teacher"],
        probe=probe,
        val_flaw=[flawed(p, letters) != p.reference for p in val],
        initial_val=fixed.get("initial_val"),
    )
    saved = per_prompt_file(data, prompts, jobs_list, out, val_prompts)
    saved["runs"] = kept_runs(cache, prompts, val_prompts, saved["runs"]) | saved["runs"]
    cache_file.write_text(json.dumps(saved))

    meta = {
        "command": "python experiments/study.py " + " ".join(sys.argv[1:]),
        "quick": args.quick,
        "seeds": seeds,
        "tune_seeds": args.tune_seeds,
        "epochs": epochs,
        "preset": args.preset,
        "card": card,
        **({"tuned": tuned} if tuned is not None else {}),
    }
    jobs = {
        c.label: [job_of(c, s) for s in range(seeds_of(name))]
        for name, configs in chosen.items()
        for c in configs
    }
    report, results, figures = build_report(meta, chosen, jobs, data)
    failed = [j for j in jobs_list if j.error]
    wall = time.perf_counter() - started
    report += [
        f"Wall clock: {wall / 60:.1f} min on {os.cpu_count()} CPU cores "
        f"({sum(j.reused for j in jobs_list)} of {len(jobs_list)} runs reused).",
        "",
    ]
    if failed:
        report += ["Failed runs:", ""] + [
            f"- {j.config.label} seed={j.seed}: {j.error}" for j in failed
        ]
    (out / "report.md").write_text("\n".join(report) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    names = []
    for name, fig in figures.items():
        fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
        names.append(f"{name}.png")
    for name in ("report.md", "results.json", PER_PROMPT, *names):
        client.log_artifact(parent_id, str(out / name))
    client.log_metric(parent_id, "study/wall_clock_s", wall)
    client.set_terminated(parent_id, "FAILED" if failed else "FINISHED")
    print("\n".join(report))
    print(out / "report.md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
