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
entry never see a half-written one; the later finisher keeps the earlier one's entry.
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
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, RichProgressBar
from rich.console import Console
from rich.table import Table
from safetensors import safe_open
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from ..calibration import DEFAULT_TEMPLATE, LETTERS, mcq_prompt
from ..chat import encode_pairs
from ..metrics import answer_metrics
from ..rollout import SamplingConfig, generate
from ..sft import BatchStream, SFTModule, sft_batch
from ..validation import ConfigError
from .tasks import Problem, corrupt, quality, sample_problems
from .tokenizer import build_char_tokenizer

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


@dataclass
class ZooConfig:
    cache_dir: str = "~/.cache/pad-lightning/zoo"
    tasks: list[str] = field(default_factory=lambda: ["reverse"])
    seed: int = 0
    eval_size: int = 256
    judge_temperature: float = 0.1
    judge_template: str = DEFAULT_TEMPLATE
    precision: str = "32-true"  # bf16 autocast measured no faster for models this small
    teacher: ModelSpec = field(default_factory=ModelSpec)
    student: ModelSpec = field(default_factory=ModelSpec)

    def key(self) -> str:
        """Folder name: task mix plus a hash of every field that changes the trained models."""
        shaping = dataclasses.asdict(self)
        shaping.pop("cache_dir")
        shaping["version"] = ZOO_VERSION
        digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:10]
        return f"{'-'.join(self.tasks)}-{digest}"

    def root(self) -> Path:
        return Path(os.path.expanduser(self.cache_dir)) / self.key()


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


def judge_example(
    problem: Problem, rng: random.Random, max_options: int, temperature: float, template: str
) -> tuple[str, str]:
    """An MCQ over corrupted candidates; the label is drawn with P proportional to exp(q/temp)."""
    k = rng.randint(2, max_options)
    alphabet = (
        "".join(sorted(set(problem.reference))) if not problem.reference.isdigit() else "0123456789"
    )
    candidates = [corrupt(problem.reference, rng, alphabet) for _ in range(k)]
    weights = [math.exp(quality(c, problem.reference) / temperature) for c in candidates]
    label = rng.choices(range(k), weights=weights)[0]
    return mcq_prompt(problem.prompt, candidates, template), LETTERS[label]


class _BatchMaker:
    """Deterministic batch `step`: task answers, or (with mcq_fraction) judge questions."""

    def __init__(
        self,
        cfg: ZooConfig,
        spec: ModelSpec,
        tokenizer: PreTrainedTokenizerBase,
        role: str,
        mcq_fraction: float = 0.0,
    ):
        self.cfg, self.spec, self.tokenizer, self.role = cfg, spec, tokenizer, role
        self.mcq_fraction = mcq_fraction

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        rng = random.Random(f"{self.cfg.seed}-{self.role}-{self.mcq_fraction}-{step}")
        problems = sample_problems(
            self.cfg.tasks, "train", self.spec.batch_size, seed=rng.randrange(2**31), unique=False
        )
        if rng.random() < self.mcq_fraction:
            pairs = [
                judge_example(
                    p,
                    rng,
                    self.spec.mcq_max_options,
                    self.cfg.judge_temperature,
                    self.cfg.judge_template,
                )
                for p in problems
            ]
        else:
            pairs = [(p.prompt, p.reference) for p in problems]
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
        callbacks=[stopper, RichProgressBar(leave=True)],
        num_sanity_val_steps=0,
    )
    maker = _BatchMaker(cfg, spec, tokenizer, role, mcq_fraction)
    trainer.fit(module, torch.utils.data.DataLoader(BatchStream(maker), batch_size=None))
    return {"steps": trainer.global_step, "val_history": stopper.history}


def train_model(
    cfg: ZooConfig, spec: ModelSpec, tokenizer, role: str
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
        judge = _fit(
            cfg, spec, model, tokenizer, role, spec.judge_steps, spec.mcq_fraction, 2.0, val
        )
        info["judge_steps"] = judge["steps"]
        info["val_history"] += [(info["steps"] + s, a) for s, a in judge["val_history"]]
        info["judge_accuracy"] = judge_accuracy(model, tokenizer, val, cfg)
    info["seconds"] = time.perf_counter() - started
    return model, info


def judge_accuracy(model, tokenizer, problems: list[Problem], cfg: ZooConfig) -> float:
    """Share of (correct, corrupted) answer pairs, both orders, where the judge prefers the
    correct one (pairs whose corruption left the answer intact are skipped)."""
    from ..calibration import option_log_probs, option_token_ids
    from ..chat import encode_prompt

    rng = random.Random(f"{cfg.seed}-judge-eval")
    prompts, correct_first = [], []
    for p in problems:
        wrong = corrupt(p.reference, rng, "".join(sorted(set(p.reference))))
        if wrong == p.reference:
            continue
        for first_is_correct in (True, False):
            pair = [p.reference, wrong] if first_is_correct else [wrong, p.reference]
            prompts.append(encode_prompt(tokenizer, mcq_prompt(p.prompt, pair, cfg.judge_template)))
            correct_first.append(first_is_correct)
    logp = option_log_probs(
        model.eval(), prompts, option_token_ids(tokenizer, 2), tokenizer.pad_token_id
    )
    picks_first = logp[:, 0] > logp[:, 1]
    return float((picks_first == torch.tensor(correct_first)).float().mean())


def _say(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _error(err: BaseException) -> str:
    """`Type: first line of the message` of an exception."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


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
                return f"{role}/{path.name} is corrupt ({_error(err)})"
        try:
            with safe_open(root / role / "model.safetensors", "pt") as weights:
                weights.keys()
        except Exception as err:  # SafetensorError (not an OSError), or an OSError
            return f"{role}/model.safetensors is corrupt or truncated ({_error(err)})"
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
        return f"card.json is corrupt ({_error(err)})", None
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
        f"model.zoo.cache_dir={cfg.cache_dir!r}: {what} ({_error(err)}); {fix} "
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
        staging = Path(tempfile.mkdtemp(prefix=".building-", dir=root.parent))
    except OSError as err:
        raise _unwritable(cfg, f"cannot build the zoo entry {root}", err) from None
    tokenizer = build_char_tokenizer()
    card = {"key": cfg.key(), "config": dataclasses.asdict(cfg), "models": {}}
    test = sample_problems(cfg.tasks, "test", cfg.eval_size, seed=cfg.seed)
    try:
        for role, spec in (("teacher", cfg.teacher), ("student", cfg.student)):
            model, info = train_model(cfg, spec, tokenizer, role)
            info["test"] = answer_accuracy(model, tokenizer, test)
            info["params"] = sum(p.numel() for p in model.parameters())
            card["models"][role] = info
            model.save_pretrained(staging / role)
            tokenizer.save_pretrained(staging / role)
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
        )
    console.print(table)
