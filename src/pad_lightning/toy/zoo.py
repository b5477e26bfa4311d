"""The toy zoo: a strong teacher and a weak student, small Llama causal LMs trained here.

Both are trained with the framework's own Lightning SFT loop, deterministically from a seed,
and saved as ordinary HF folders (config, safetensors weights, tokenizer with chat template) in
`<cache_dir>/<key>/{teacher,student}`, where the key hashes everything that shapes them. Later
runs reuse them. The teacher also learns the MCQ judge prompt with labels from true quality q.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, RichProgressBar
from rich.console import Console
from rich.table import Table
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from ..calibration import DEFAULT_TEMPLATE, LETTERS, mcq_prompt
from ..chat import encode_pairs
from ..metrics import answer_metrics
from ..rollout import SamplingConfig, generate
from ..sft import BatchStream, SFTModule, sft_batch
from .tasks import Problem, corrupt, quality, sample_problems
from .tokenizer import build_char_tokenizer

ZOO_VERSION = 1
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


def ensure_zoo(cfg: ZooConfig) -> Path:
    """Path of the zoo folder for `cfg`, training and saving both models if not cached."""
    root = cfg.root()
    if (root / "card.json").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = build_char_tokenizer()
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=root.parent))
    card: dict = {"key": cfg.key(), "config": dataclasses.asdict(cfg), "models": {}}
    test = sample_problems(cfg.tasks, "test", cfg.eval_size, seed=cfg.seed)
    try:
        for role, spec in (("teacher", cfg.teacher), ("student", cfg.student)):
            model, info = train_model(cfg, spec, tokenizer, role)
            info["test"] = answer_accuracy(model, tokenizer, test)
            info["params"] = sum(p.numel() for p in model.parameters())
            card["models"][role] = info
            model.save_pretrained(staging / role)
            tokenizer.save_pretrained(staging / role)
        (staging / "card.json").write_text(json.dumps(card, indent=2))
        if root.exists():  # an incomplete folder from an interrupted build
            shutil.rmtree(root)
        staging.rename(root)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
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
