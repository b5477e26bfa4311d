"""The toy zoo: a strong teacher and a weak student, small Llama causal LMs trained here.

Both are trained with the framework's own Lightning SFT loop, deterministically from a seed,
and saved as ordinary HF folders (config, safetensors weights, tokenizer with chat template) in
`<cache_dir>/<key>/{teacher,student}`, where the key hashes everything that shapes them. Later
runs reuse them. The teacher also learns the MCQ judge prompt with labels from true quality q.

The entry's `card.json` records the size and sha256 of every file of both model folders; a reused
entry is verified against it (a few MB of hashing) and rebuilt, with one printed line, if a file
is missing, truncated or changed, or the card is broken. Entries written before the hashes were
recorded are checked by file presence, JSON parsing and safetensors header parsing, and get their
hashes then. Builds go to a staging folder renamed into place, so concurrent builders of the same
entry never see a half-written one; the later finisher keeps the earlier one's entry. A build
stopped by Ctrl-C or SIGTERM removes its staging folder: nothing half-built is ever cached;
one killed outright leaves it, and the next build removes it (`zoo.staging`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from rich.console import Console
from rich.table import Table
from safetensors import safe_open
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from pad_lightning.data.answers import answer_metrics
from pad_lightning.data.tasks import Problem, corrupt, quality, sample_problems
from pad_lightning.lm.chat import encode_pairs
from pad_lightning.lm.generation import SamplingConfig, generate
from pad_lightning.lm.judge import DEFAULT_OPTION_TEMPLATE, DEFAULT_TEMPLATE, LETTERS, mcq_prompt
from pad_lightning.runtime import interrupts
from pad_lightning.runtime.errors import ConfigError, described
from pad_lightning.training.progress import StepsProgress, quiet_libraries
from pad_lightning.training.sft import BatchStream, SFTModule, sft_batch
from pad_lightning.zoo.staging import new_staging, sweep_stale
from pad_lightning.zoo.tokenizer import build_char_tokenizer

ZOO_VERSION = 1
ROLES = ("teacher", "student")
# Files every model folder of an entry must hold (save_pretrained of the model and tokenizer).
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
console = Console()


@dataclass
class ModelSpec:
    """Architecture and SFT budget of one zoo model."""

    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 176
    max_steps: int = 1000
    batch_size: int = 128
    lr: float = 3e-3
    warmup_steps: int = 50
    eval_every: int = 50  # SFT steps between validation checks (early stop at target_accuracy)
    target_accuracy: float = 1.0  # stop answer training once validation exact match reaches this
    judge_steps: int = 0  # second phase: steps that mix MCQ judge questions into answer batches
    mcq_fraction: float = 0.5  # share of second-phase batches that are judge questions
    mcq_max_options: int = 4
    judge_lr: float | None = None  # learning rate of the judge phase (None: lr)
    judge_both_orders: bool = False  # every judge question also asked with options reversed
    judge_on_student: float = 0.0  # share of judge questions over the trained student's samples


@dataclass
class ZooConfig:
    cache_dir: str = "~/.cache/pad-lightning/zoo"
    tasks: list[str] = field(default_factory=lambda: ["reverse"])
    seed: int = 0
    eval_size: int = 256
    judge_temperature: float = 0.1
    judge_template: str = DEFAULT_TEMPLATE
    judge_option_template: str = DEFAULT_OPTION_TEMPLATE
    precision: str = "32-true"  # bf16 autocast measured no faster for models this small
    teacher: ModelSpec = field(default_factory=ModelSpec)
    student: ModelSpec = field(default_factory=ModelSpec)
    # A known, documented flaw of the teacher (the study world): in its answer SFT data, words
    # starting with one of these letters are answered without their first letter (the answer's
    # last character), so its likelihood favours that answer; its judge is trained on true q.
    flaw_letters: str = ""

    def key(self) -> str:
        """Folder name: task mix plus a hash of every field that changes the trained models
        (fields added later are left out at their defaults, so older entries keep their key)."""
        shaping = dataclasses.asdict(self)
        shaping.pop("cache_dir")
        for name, default in _LATER_FIELDS.items():
            if shaping.get(name) == default:
                shaping.pop(name)
        for role in ROLES:
            for name, default in _LATER_SPEC_FIELDS.items():
                if shaping[role].get(name) == default:
                    shaping[role].pop(name)
        shaping["version"] = ZOO_VERSION
        digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:10]
        return f"{'-'.join(self.tasks)}-{digest}"

    def root(self) -> Path:
        return Path(os.path.expanduser(self.cache_dir)) / self.key()


_LATER_FIELDS = {"flaw_letters": "", "judge_option_template": DEFAULT_OPTION_TEMPLATE}
_LATER_SPEC_FIELDS = {"judge_lr": None, "judge_both_orders": False, "judge_on_student": 0.0}
POOL_PROMPTS, POOL_SAMPLES = 2048, 8  # the student's samples the judge may train on


def flawed(problem: Problem, letters: str) -> str:
    """The teacher's SFT answer: the reference, or (a word starting with one of `letters`)
    the reference without its last character."""
    if letters and problem.task == "reverse" and problem.prompt[4:5] in letters:
        return problem.reference[:-1]
    return problem.reference


def build_model(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def judge_candidates(problem: Problem, rng: random.Random, k: int, flaw_letters: str = "") -> list:
    """k candidate answers: corruptions of the reference (and, for a word the teacher's answers
    get wrong, sometimes exactly its flawed answer, so the judge learns to recognise it)."""
    alphabet = (
        "".join(sorted(set(problem.reference))) if not problem.reference.isdigit() else "0123456789"
    )
    candidates = [corrupt(problem.reference, rng, alphabet) for _ in range(k)]
    wrong = flawed(problem, flaw_letters)
    if wrong != problem.reference and rng.random() < 0.5:
        candidates[rng.randrange(k)] = wrong
    return candidates


def student_pool(student, tokenizer, problems: list[Problem], n: int = POOL_SAMPLES) -> dict:
    """{prompt: n samples of the student at temperature 1}: the kind of mistakes it makes."""
    gens = generate(
        student,
        tokenizer,
        [p.prompt for p in problems],
        n,
        SamplingConfig(temperature=1.0, max_new_tokens=10, batch_size=1024),
    )
    return {p.prompt: texts for p, texts in zip(problems, gens.texts, strict=True)}


def pool_candidates(problem: Problem, rng: random.Random, k: int, pool: dict) -> list[str] | None:
    """k of the student's samples for the problem, with one best q, or None."""
    samples = pool.get(problem.prompt)
    if not samples or len(set(samples)) < 2:
        return None
    for _ in range(10):
        options = rng.sample(samples, min(k, len(samples)))
        q = [quality(o, problem.reference) for o in options]
        if q.count(max(q)) == 1:
            return options
    return None


def judge_question(
    problem: Problem,
    rng: random.Random,
    max_options: int,
    temperature: float,
    flaw_letters: str = "",
    pool: dict | None = None,
    pool_share: float = 0.0,
) -> tuple[list[str], int]:
    """MCQ options and the label index, drawn with P ~ exp(q / temp): the student's own
    samples (share `pool_share`, where they differ in q) or corruptions of the reference."""
    k = rng.randint(2, max_options)
    candidates = None
    if pool and rng.random() < pool_share:
        candidates = pool_candidates(problem, rng, k, pool)
    if candidates is None:
        candidates = judge_candidates(problem, rng, k, flaw_letters)
    weights = [math.exp(quality(c, problem.reference) / temperature) for c in candidates]
    return candidates, rng.choices(range(len(candidates)), weights=weights)[0]


class _BatchMaker:
    """Deterministic batch `step`: task answers, or (with mcq_fraction) judge questions."""

    def __init__(
        self,
        cfg: ZooConfig,
        spec: ModelSpec,
        tokenizer: PreTrainedTokenizerBase,
        role: str,
        mcq_fraction: float = 0.0,
        pool: list[Problem] | None = None,
        samples: dict | None = None,
    ):
        self.cfg, self.spec, self.tokenizer, self.role = cfg, spec, tokenizer, role
        self.mcq_fraction = mcq_fraction
        self.pool, self.samples = pool, samples

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        rng = random.Random(f"{self.cfg.seed}-{self.role}-{self.mcq_fraction}-{step}")
        problems = sample_problems(
            self.cfg.tasks, "train", self.spec.batch_size, seed=rng.randrange(2**31), unique=False
        )
        if rng.random() < self.mcq_fraction:
            if self.pool:  # judge questions on prompts the student answered
                problems = [rng.choice(self.pool) for _ in problems]
            both = self.spec.judge_both_orders
            asked = problems[: len(problems) // 2] if both else problems
            pairs = []
            template, option = self.cfg.judge_template, self.cfg.judge_option_template
            for p in asked:
                options, label = judge_question(
                    p,
                    rng,
                    self.spec.mcq_max_options,
                    self.cfg.judge_temperature,
                    self.cfg.flaw_letters,
                    self.samples,
                    self.spec.judge_on_student,
                )
                pairs.append((mcq_prompt(p.prompt, options, template, option), LETTERS[label]))
                if both:  # the options reversed: a position-only rule gains nothing here
                    last = len(options) - 1
                    reverse = mcq_prompt(p.prompt, options[::-1], template, option)
                    pairs.append((reverse, LETTERS[last - label]))
        else:
            flaw = self.cfg.flaw_letters if self.role == "teacher" else ""  # the teacher's flaw
            pairs = [(p.prompt, flawed(p, flaw)) for p in problems]
        encoded = encode_pairs(self.tokenizer, [q for q, _ in pairs], [[a] for _, a in pairs])
        return sft_batch(encoded, self.tokenizer.pad_token_id)


def answer_accuracy(model, tokenizer, problems: list[Problem]) -> dict[str, float]:
    """Greedy exact match and mean quality of the model's answers."""
    gens = generate(
        model,
        tokenizer,
        [p.prompt for p in problems],
        1,
        SamplingConfig(max_new_tokens=8, batch_size=512),
        greedy=True,
    )
    return answer_metrics([t[0] for t in gens.texts], [p.reference for p in problems])


class _EarlyStopOnAccuracy(Callback):
    def __init__(self, tokenizer, problems: list[Problem], every: int, target: float):
        self.tokenizer, self.problems, self.every, self.target = tokenizer, problems, every, target
        self.history: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step % self.every:
            return
        acc = answer_accuracy(pl_module.model, self.tokenizer, self.problems)["exact_match"]
        self.history.append((step, acc))
        console.print(f"  step {step}: validation exact match {acc:.1%}")
        pl_module.log("val_exact_match", acc, prog_bar=True)
        if acc >= self.target:
            trainer.should_stop = True


def _fit(
    cfg: ZooConfig,
    spec: ModelSpec,
    model,
    tokenizer,
    role: str,
    steps: int,
    mcq_fraction: float,
    target: float,
    val: list[Problem],
    pool: list[Problem] | None = None,
    samples: dict | None = None,
) -> dict:
    module = SFTModule(model, spec.lr, steps, spec.warmup_steps)
    stopper = _EarlyStopOnAccuracy(tokenizer, val, spec.eval_every, target)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        precision=cfg.precision,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[stopper, StepsProgress(f"zoo: {role}", console)],
        num_sanity_val_steps=0,
    )
    maker = _BatchMaker(cfg, spec, tokenizer, role, mcq_fraction, pool, samples)
    # Ctrl-C or SIGTERM: Lightning ends the fit with sys.exit(1); `in_trainer` raises Preempted
    # instead, which removes the staging folder (nothing half-built is cached) and stops the run
    # with its one line and 128 + the signal number
    with interrupts.in_trainer():
        trainer.fit(module, torch.utils.data.DataLoader(BatchStream(maker), batch_size=None))
    return {"steps": trainer.global_step, "val_history": stopper.history}


def train_model(
    cfg: ZooConfig, spec: ModelSpec, tokenizer, role: str, student=None
) -> tuple[torch.nn.Module, dict]:
    """SFT one zoo model with Lightning: answers until the target validation accuracy, then
    (if `judge_steps`) answers mixed with MCQ judge questions. Mixing the judge questions in
    from the start was measured to stall answer learning, hence the two phases."""
    L.seed_everything(cfg.seed, verbose=False)
    model = build_model(spec, tokenizer, seed=cfg.seed + (0 if role == "teacher" else 1))
    val = sample_problems(cfg.tasks, "val", cfg.eval_size, seed=cfg.seed)
    console.print(
        f"[bold]zoo[/bold]: training {role} "
        f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params)"
    )
    started = time.perf_counter()
    info = _fit(cfg, spec, model, tokenizer, role, spec.max_steps, 0.0, spec.target_accuracy, val)
    if spec.judge_steps:
        console.print(f"[bold]zoo[/bold]: teaching the {role} the MCQ judge prompt")
        judge_spec = dataclasses.replace(spec, lr=spec.judge_lr or spec.lr)
        pool = samples = None
        if spec.judge_on_student and student is not None:
            pool = sample_problems(cfg.tasks, "train", POOL_PROMPTS, seed=cfg.seed + 7)
            samples = student_pool(student, tokenizer, pool)
        judge = _fit(
            cfg,
            judge_spec,
            model,
            tokenizer,
            role,
            spec.judge_steps,
            spec.mcq_fraction,
            2.0,
            val,
            pool,
            samples,
        )
        info["judge_steps"] = judge["steps"]
        info["val_history"] += [(info["steps"] + s, a) for s, a in judge["val_history"]]
        info["judge_accuracy"] = judge_accuracy(model, tokenizer, val, cfg)
    info["seconds"] = time.perf_counter() - started
    return model, info


def judge_accuracy(model, tokenizer, problems: list[Problem], cfg: ZooConfig) -> float:
    """Share of (correct, corrupted) answer pairs, both orders, where the judge prefers the
    correct one (pairs whose corruption left the answer intact are skipped)."""
    from pad_lightning.lm.chat import encode_prompt
    from pad_lightning.lm.judge import option_log_probs, option_token_ids

    rng = random.Random(f"{cfg.seed}-judge-eval")
    prompts, correct_first = [], []
    for p in problems:
        wrong = corrupt(p.reference, rng, "".join(sorted(set(p.reference))))
        if wrong == p.reference:
            continue
        for first_is_correct in (True, False):
            pair = [p.reference, wrong] if first_is_correct else [wrong, p.reference]
            question = mcq_prompt(p.prompt, pair, cfg.judge_template, cfg.judge_option_template)
            prompts.append(encode_prompt(tokenizer, question))
            correct_first.append(first_is_correct)
    logp = option_log_probs(
        model.eval(), prompts, option_token_ids(tokenizer, 2), tokenizer.pad_token_id
    )
    picks_first = logp[:, 0] > logp[:, 1]
    return float((picks_first == torch.tensor(correct_first)).float().mean())


@torch.no_grad()
def judge_report(
    model,
    tokenizer,
    problems: list[Problem],
    cfg: ZooConfig,
    student=None,
) -> dict[str, float]:
    """Held-out judge accuracies (validation problems, fresh candidates):

    * ``pairwise``: pairs of candidates whose q differ by >= 0.2, asked in both orders; a
      question counts as right when the better candidate's letter is the more probable;
    * ``flaw_pairwise``: the reference against the teacher's flawed answer (words it gets wrong),
      both orders (NaN without a flaw);
    * ``listwise_top1``: 4 candidates with one best q (asked whatever option count the judge
      was trained on): share of questions whose most probable
      letter is the best candidate;
    * ``student_pairwise`` / ``student_listwise_top1`` (given the `student`): the same on the
      student's own samples (8 per problem, temperature 1): the judge as calibration uses it.
    """
    from pad_lightning.lm.chat import encode_prompt
    from pad_lightning.lm.judge import option_log_probs, option_token_ids

    model.eval()
    rng = random.Random(f"{cfg.seed}-judge-report")
    template = cfg.judge_template

    def accuracy(questions: list[tuple[str, tuple[list[str], int]]]) -> float:
        if not questions:
            return float("nan")
        k = len(questions[0][1][0])
        option = cfg.judge_option_template
        prompts = [
            encode_prompt(tokenizer, mcq_prompt(p, o, template, option)) for p, (o, _) in questions
        ]
        logp = option_log_probs(
            model, prompts, option_token_ids(tokenizer, k), tokenizer.pad_token_id
        )
        best = torch.tensor([b for _, (_, b) in questions])
        return float((logp.argmax(-1) == best).float().mean())

    pairs, flaw, lists = [], [], []
    for p in problems:
        for _ in range(20):  # a pair of fresh candidates whose q differ by >= 0.2
            a, b = judge_candidates(p, rng, 2)
            qa, qb = quality(a, p.reference), quality(b, p.reference)
            if abs(qa - qb) >= 0.2:
                pairs += [(p.prompt, ([a, b], int(qb > qa))), (p.prompt, ([b, a], int(qa > qb)))]
                break
        wrong = flawed(p, cfg.flaw_letters)
        if wrong != p.reference:
            flaw += [(p.prompt, ([p.reference, wrong], 0)), (p.prompt, ([wrong, p.reference], 1))]
        for _ in range(20):
            options = judge_candidates(p, rng, 4)
            q = [quality(o, p.reference) for o in options]
            if q.count(max(q)) == 1:
                lists.append((p.prompt, (options, q.index(max(q)))))
                break
    report = {
        "pairwise": accuracy(pairs),
        "flaw_pairwise": accuracy(flaw),
        "listwise_top1": accuracy(lists),
    }
    if student is not None:
        samples = student_pool(student, tokenizer, problems)
        s_pairs, s_lists = [], []
        for p in problems:
            texts = samples[p.prompt]
            q = [quality(t, p.reference) for t in texts]
            for i in range(len(texts)):  # the first pair whose q differ by >= 0.2
                j = next((j for j in range(i + 1, len(texts)) if abs(q[i] - q[j]) >= 0.2), None)
                if j is not None:
                    best = int(q[j] > q[i])
                    a, b = texts[i], texts[j]
                    s_pairs += [(p.prompt, ([a, b], best)), (p.prompt, ([b, a], 1 - best))]
                    break
            options = pool_candidates(p, rng, 4, samples)
            if options is not None and len(options) == 4:
                oq = [quality(o, p.reference) for o in options]
                s_lists.append((p.prompt, (options, oq.index(max(oq)))))
        report["student_pairwise"] = accuracy(s_pairs)
        report["student_pairs"] = len(s_pairs)
        report["student_listwise_top1"] = accuracy(s_lists)
    return report


def _say(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_records(root: Path) -> dict[str, dict]:
    """{"teacher/model.safetensors": {"size": bytes, "sha256": hex}, ...}: every file of both
    model folders of the entry `root`."""
    records = {}
    for role in ROLES:
        for path in sorted((root / role).rglob("*")):
            if path.is_file():
                rel = path.relative_to(root).as_posix()
                records[rel] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    return records


def _unrecorded_problem(root: Path) -> str | None:
    """Checks of an entry whose card has no file hashes: JSON files parse, weights headers parse."""
    for role in ROLES:
        for path in sorted((root / role).glob("*.json")):
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                return f"{role}/{path.name} is corrupt ({described(err)})"
        try:
            with safe_open(root / role / "model.safetensors", "pt") as weights:
                weights.keys()
        except Exception as err:  # SafetensorError (not an OSError), or an OSError
            return f"{role}/model.safetensors is corrupt or truncated ({described(err)})"
    return None


def entry_problem(root: Path) -> tuple[str | None, dict | None]:
    """(why the zoo entry `root` cannot be reused, or None if it is intact; its card if readable).

    An intact entry has a card and the required files of both models; their sizes and sha256
    match the card's `files` records, or (an entry written before records existed) the JSON files
    and the safetensors header parse.
    """
    try:
        card = json.loads((root / "card.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "card.json is missing", None
    except (OSError, ValueError) as err:  # JSONDecodeError, UnicodeDecodeError
        return f"card.json is corrupt ({described(err)})", None
    files = card.get("files") if isinstance(card, dict) else None
    if (
        not isinstance(card, dict)
        or not isinstance(card.get("models"), dict)
        or not isinstance(files, dict | None)
        or (files and not all(isinstance(r, dict) for r in files.values()))
    ):
        return "card.json is corrupt (not a zoo card)", None
    for role in ROLES:
        for name in REQUIRED_FILES:
            if not (root / role / name).is_file():
                return f"{role}/{name} is missing", card
    if files is None:
        return _unrecorded_problem(root), card
    for rel, record in files.items():
        path = root / rel
        try:
            size = path.stat().st_size
        except OSError:
            return f"{rel} is missing", card
        if size != record.get("size"):
            return (
                f"{rel} is corrupt or truncated ({size} bytes, card.json records "
                f"{record.get('size')})"
            ), card
        if _sha256(path) != record.get("sha256"):
            return f"{rel} is corrupt (its sha256 differs from card.json's)", card
    return None, card


def _write_card(root: Path, card: dict) -> None:
    """Write `root/card.json` atomically (a reader sees the old or the new card, never half)."""
    tmp = root / f".card-{uuid.uuid4().hex[:8]}.json"
    try:
        tmp.write_text(json.dumps(card, indent=2))
        os.replace(tmp, root / "card.json")
    finally:
        tmp.unlink(missing_ok=True)


def _unwritable(cfg: ZooConfig, what: str, err: OSError, remove: Path | None = None) -> ConfigError:
    fix = f"remove it with `rm -rf {remove}`, or set" if remove is not None else "set"
    return ConfigError(
        f"model.zoo.cache_dir={cfg.cache_dir!r}: {what} ({described(err)}); {fix} "
        "model.zoo.cache_dir (or PAD_LIGHTNING_CACHE) to a writable folder"
    )


def _discard(cfg: ZooConfig, root: Path, problem: str) -> None:
    """Move a corrupt entry out of the way (then delete it); ConfigError if it cannot be moved."""
    stale = root.with_name(f".stale-{root.name}-{uuid.uuid4().hex[:8]}")
    try:
        root.rename(stale)
    except FileNotFoundError:  # another process moved it first
        return
    except OSError as err:
        what = f"the zoo entry {root} is corrupt ({problem}) and cannot be rebuilt"
        raise _unwritable(cfg, what, err, remove=root) from None
    shutil.rmtree(stale, ignore_errors=True)


def _install(cfg: ZooConfig, staging: Path, root: Path) -> bool:
    """Rename the finished `staging` folder to `root`; True if it was installed, False if another
    process finished an intact entry first (that one is kept, the staging folder is discarded)."""
    for _ in range(5):
        try:
            staging.rename(root)
            return True
        except OSError:  # `root` exists (not empty): another builder, or a corrupt leftover
            if not root.exists():
                continue  # moved away meanwhile: try again
            problem, _ = entry_problem(root)
            if problem is None:
                return False
            _discard(cfg, root, problem)
    staging.rename(root)  # still contended after five tries: let the OSError surface
    return True


def ensure_zoo(cfg: ZooConfig) -> Path:
    """Path of the zoo folder for `cfg`, training and saving both models if not cached, and
    rebuilding a cached entry that fails verification (see the module docstring)."""
    root = cfg.root()
    if root.exists():
        problem, card = entry_problem(root)
        if problem is None:
            if "files" not in card:  # an entry from before the records: add them
                with contextlib.suppress(OSError):  # a read-only cache: verified again next time
                    _write_card(root, {**card, "files": file_records(root)})
            return root
        _say(f"zoo {cfg.key()}: {problem}; rebuilding")
        _discard(cfg, root, problem)
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        for path in sweep_stale(root.parent):  # left by builders killed outright
            _say(f"zoo: removed {path.name}, left by a build whose process is gone")
        staging = new_staging(root.parent)
    except OSError as err:
        raise _unwritable(cfg, f"cannot build the zoo entry {root}", err) from None
    quiet_libraries()
    tokenizer = build_char_tokenizer()
    card = {"key": cfg.key(), "config": dataclasses.asdict(cfg), "models": {}}
    test = sample_problems(cfg.tasks, "test", cfg.eval_size, seed=cfg.seed)
    try:
        # The student first when the judge learns from its samples (see ModelSpec).
        order = ["teacher", "student"]
        if cfg.teacher.judge_on_student:
            order.reverse()
        trained = {}
        for role in order:
            spec = cfg.teacher if role == "teacher" else cfg.student
            model, info = train_model(cfg, spec, tokenizer, role, trained.get("student"))
            trained[role] = model
            info["test"] = answer_accuracy(model, tokenizer, test)
            info["params"] = sum(p.numel() for p in model.parameters())
            card["models"][role] = info
            model.save_pretrained(staging / role)
            tokenizer.save_pretrained(staging / role)
        card["models"] = {role: card["models"][role] for role in ROLES}
        if cfg.teacher.judge_steps:  # the judge on held-out questions and the student's samples
            val = sample_problems(cfg.tasks, "val", cfg.eval_size, seed=cfg.seed)
            card["models"]["teacher"]["judge"] = judge_report(
                trained["teacher"], tokenizer, val, cfg, student=trained["student"]
            )
        card["files"] = file_records(staging)
        (staging / "card.json").write_text(json.dumps(card, indent=2))
        installed = _install(cfg, staging, root)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    if not installed:
        _say(f"zoo {cfg.key()}: another process built this entry first; using it")
    show_card(card)
    return root


def show_card(card: dict) -> None:
    table = Table(title=f"toy zoo {card['key']}")
    for col in (
        "model",
        "params",
        "SFT steps",
        "seconds",
        "test EM",
        "test quality",
        "judge acc.",
        "judge pairs (dq>=0.2)",
        "judge on flaw",
        "judge top-1 of 4",
    ):
        table.add_column(col)
    for role, info in card["models"].items():
        table.add_row(
            role,
            f"{info['params'] / 1e6:.2f}M",
            str(info["steps"]),
            f"{info['seconds']:.0f}",
            f"{info['test']['exact_match']:.1%}",
            f"{info['test']['quality']:.3f}",
            f"{info['judge_accuracy']:.1%}" if "judge_accuracy" in info else "-",
            *(
                f"{info['judge'][k]:.1%}"
                if math.isfinite(info.get("judge", {}).get(k, math.nan))
                else "-"
                for k in ("pairwise", "flaw_pairwise", "listwise_top1")
            ),
        )
    out = console
    if not console.is_terminal:  # piped or logged: the whole table, not cut at 80 columns
        out = Console(width=1000, file=console.file)  # a table takes its natural width
    out.print(table)
