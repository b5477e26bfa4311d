"""PAD's training step against TRL's GKD and Distillation steps: same models, same sequences per
step, one run.

Needs the `bench` extra (`pip install 'pad-lightning[bench]'`: trl). For each vocabulary size
(the toy zoo's own, and the same models with the vocabulary padded to 32k and 256k; the added
token ids get small random embeddings, so they carry a little real probability mass, as unused
tokens of a real model do), both are timed back to back on the same student and teacher:

* PAD: one rollout round as the training loop runs it (`rollout.collect`: sample n = 4 responses
  for P prompts from the student, score them with the teacher, calibration off), then the PPD
  loss, backward and one AdamW step: P x 4 sequences;
* GKD: `trl.experimental.gkd.GKDTrainer.training_step` (fully on-policy, `lmbda=1`: the student
  samples one response per prompt with HF `generate`; teacher and student forward passes over
  the full vocabulary; generalized JSD; backward) and one AdamW step, on P x 4 prompts, i.e.
  the same number of sequences of the same maximum length.

* Distillation: TRL's stable `trl.DistillationTrainer.training_step` (the student samples one
  completion per prompt with HF `generate`; generalized JSD with beta = 0.5 computed in chunks of
  256 positions from the hidden states and the LM heads, so the [rows, length, vocab] logits are
  never held whole) and one AdamW step, on the same P x 4 prompts.

The throughput ratios printed are GKD's and Distillation's seconds per step over PAD's (median of --repeats steps
after a warm-up). At 256k the step holds 64 sequences for both (--big-rows), because GKD's
[rows, length, 262144] logits of two models would not fit in this machine's memory at 256.

Run: ``.venv/bin/python experiments/bench_vs_trl.py [--rows 256] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import warnings

import torch
from _setup import median_time, padded_vocab, run_config

TARGETS = {104: 1.2, 32768: 10.0}  # the throughput targets (GKD seconds / PAD seconds)


def pad_step(student, teacher, tok, prompts: list[str], max_new_tokens: int):
    """One PAD round as the training loop runs it: rollout (n = 4), the PPD objective on the
    batch `objectives.build_batch` makes, backward, an AdamW step."""
    from pad_lightning.lm.chat import pad_id
    from pad_lightning.lm.generation import SamplingConfig
    from pad_lightning.training.objectives import LossConfig, StudentView, build_batch, objective
    from pad_lightning.training.rollout import CalibrationConfig, collect

    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    ppd = objective("ppd")
    sampling = SamplingConfig(temperature=0.8, max_new_tokens=max_new_tokens, batch_size=4096)
    calibration = CalibrationConfig(name="none")

    def step() -> None:
        roll = collect(student, tok, teacher, tok, prompts, 4, sampling, calibration)
        student.train()
        batch = build_batch(roll, list(range(len(prompts))), pad_id(tok), ppd.needs, teacher)
        loss = ppd.loss(StudentView(student, batch), batch, LossConfig()).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def _trl_step(trainer_cls, config_cls, data, student, teacher, tok, workdir: str, **config):
    """A step function of a TRL trainer on one batch of `data`: `training_step` (which samples
    on-policy and computes the loss and its backward) and an AdamW step."""
    args = config_cls(
        output_dir=workdir,
        per_device_train_batch_size=len(data),
        beta=0.5,
        temperature=0.8,
        learning_rate=1e-5,
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        logging_strategy="no",
        dataloader_num_workers=0,
        **config,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trainer_cls(
            model=student,
            teacher_model=teacher,
            args=args,
            train_dataset=data,
            processing_class=tok,
        )
    trainer.create_optimizer_and_scheduler(num_training_steps=100)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which we bypass
    inputs = next(iter(trainer.get_train_dataloader()))

    def step() -> None:
        trainer.model.train()
        trainer.training_step(trainer.model, copy.copy(inputs), None)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()

    return step


def gkd_step(student, teacher, tok, prompts: list[str], max_new_tokens: int, workdir: str):
    """One TRL GKD step (lmbda = 1: on-policy) on `prompts`, and an AdamW step."""
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    # the collator wants an assistant turn; on-policy steps replace it with the student's sample
    data = Dataset.from_list(
        [
            {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": "x"}]}
            for p in prompts
        ]
    )
    return _trl_step(
        GKDTrainer, GKDConfig, data, student, teacher, tok, workdir,
        lmbda=1.0, max_new_tokens=max_new_tokens,
    )  # fmt: skip


def distill_step(student, teacher, tok, prompts: list[str], max_new_tokens: int, workdir: str):
    """One step of TRL's stable `DistillationTrainer` (on-policy: the student samples one
    completion per prompt with HF `generate`; generalized JSD, beta = 0.5, computed chunk by chunk
    from the two models' hidden states, never the full [tokens, vocab] logits) and an AdamW step."""
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    data = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])
    return _trl_step(
        DistillationTrainer, DistillationConfig, data, student, teacher, tok, workdir,
        max_completion_length=max_new_tokens,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256, help="sequences per step")
    parser.add_argument("--big-rows", type=int, default=64, help="sequences per step at 256k")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--vocabs", default="104,32768,262144")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pad_lightning.app.models import zoo_config
    from pad_lightning.data.tasks import sample_problems
    from pad_lightning.zoo.builder import ensure_zoo

    root = ensure_zoo(zoo_config(run_config([]).model.zoo))
    tok = AutoTokenizer.from_pretrained(root / "student")
    base_student = AutoModelForCausalLM.from_pretrained(root / "student")
    base_teacher = AutoModelForCausalLM.from_pretrained(root / "teacher").eval()
    print(
        f"{args.threads} threads; median of {args.repeats} steps after a warm-up; "
        f"{args.max_new_tokens} new tokens"
    )
    print(
        f"{'vocab':>7} {'seqs':>5} {'PAD s/step':>11} {'GKD s/step':>11} {'PAD/GKD throughput':>19} "
        f"{'Distill s/step':>14} {'PAD/Distill thrpt':>18}"
    )
    ratios = {}
    for vocab in (int(v) for v in args.vocabs.split(",")):
        rows = args.big_rows if vocab > 100_000 else args.rows
        prompts = [p.prompt for p in sample_problems(["reverse"], "val", rows // 4, seed=0)]
        teacher = padded_vocab(base_teacher, vocab, seed=1).eval().requires_grad_(False)
        torch.manual_seed(0)
        pad = median_time(
            pad_step(
                padded_vocab(base_student, vocab, 2), teacher, tok, prompts, args.max_new_tokens
            ),
            args.repeats,
        )
        with tempfile.TemporaryDirectory() as workdir:
            gkd, distill = (
                median_time(
                    make(
                        padded_vocab(base_student, vocab, 2),
                        teacher,
                        tok,
                        prompts * 4,
                        args.max_new_tokens,
                        workdir,
                    ),
                    args.repeats,
                )
                for make in (gkd_step, distill_step)
            )
        ratios[vocab] = gkd / pad
        print(
            f"{vocab:>7} {rows:>5} {pad:>11.3f} {gkd:>11.3f} {gkd / pad:>18.2f}x "
            f"{distill:>14.3f} {distill / pad:>17.2f}x",
            flush=True,
        )
    for vocab, target in TARGETS.items():
        if vocab in ratios:
            state = "met" if ratios[vocab] >= target else "NOT met"
            print(f"target >= {target}x at vocabulary {vocab}: {state} ({ratios[vocab]:.2f}x)")


if __name__ == "__main__":
    main()
