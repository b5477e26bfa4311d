"""GPU check of the PAD step (no Hydra/MLflow needed): bf16 on CUDA, throughput, a short fit.

python experiments/gpu_check.py --zoo <zoo folder with teacher/ and student/> [--epochs 40]

Prints: max |bf16 - fp32| of teacher rewards on CUDA, teacher scoring tokens/s (fp32 vs bf16,
ratio), generation tokens/s at n = 8, and test exact match before/after a short on-policy PPD
fit with Lightning on the GPU (bf16-mixed student training).
"""

from __future__ import annotations

import argparse
import time

import lightning as L
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pad_lightning.data.tasks import corrupt, sample_problems
from pad_lightning.lm.chat import encode_pairs
from pad_lightning.lm.generation import SamplingConfig, generate
from pad_lightning.lm.scoring import score_pairs
from pad_lightning.training.datamodule import RolloutConfig, RolloutDataModule
from pad_lightning.training.evaluation import EvalConfig, evaluate
from pad_lightning.training.module import LossConfig, OptimConfig, PADModule
from pad_lightning.training.rollout import CalibrationConfig


def timed(fn, repeats: int = 5) -> tuple[float, object]:
    fn()
    torch.cuda.synchronize()
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--zoo", required=True)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--precision", nargs="+", default=["bf16-mixed", "32-true"])
    args = parser.parse_args()
    dev = torch.device("cuda")
    print(torch.cuda.get_device_name(0), torch.__version__)
    teacher = AutoModelForCausalLM.from_pretrained(f"{args.zoo}/teacher").to(dev)
    tok = AutoTokenizer.from_pretrained(f"{args.zoo}/teacher")
    student = AutoModelForCausalLM.from_pretrained(f"{args.zoo}/student").to(dev)
    teacher.eval()

    import random

    rng = random.Random(0)
    problems = sample_problems(["reverse"], "train", 2048, 0)
    pairs = encode_pairs(
        tok,
        [p.prompt for p in problems],
        [[corrupt(p.reference, rng, "abcdefghij") for _ in range(4)] for p in problems],
    )
    tokens = sum(len(p.ids) for p in pairs)
    t32, r32 = timed(lambda: score_pairs(teacher, pairs, tok.pad_token_id, 65536, dev, None))
    t16, r16 = timed(
        lambda: score_pairs(teacher, pairs, tok.pad_token_id, 65536, dev, torch.bfloat16)
    )
    print(
        f"teacher scoring {len(pairs)} pairs / {tokens} tokens: fp32 {tokens / t32:,.0f} tok/s, "
        f"bf16 {tokens / t16:,.0f} tok/s (ratio {t32 / t16:.2f}x); "
        f"max |bf16-fp32| reward {float((r16 - r32).abs().max()):.4f}"
    )

    prompts = [p.prompt for p in problems[:512]]
    sampling = SamplingConfig(temperature=0.8, max_new_tokens=16, batch_size=4096)
    tg, gens = timed(
        lambda: generate(student, tok, prompts, 8, sampling, autocast_dtype=torch.bfloat16),
        repeats=3,
    )
    print(
        f"generation 512 prompts x n=8: {tg:.2f}s, {float(gens.lengths.sum()) / tg:,.0f} "
        "generated tok/s"
    )

    for precision in args.precision:
        fit(
            AutoModelForCausalLM.from_pretrained(f"{args.zoo}/student").to(dev),
            teacher,
            tok,
            precision,
            args.epochs,
        )


def fit(student, teacher, tok, precision: str, epochs: int) -> None:
    """A short on-policy PPD fit on the GPU; inference in bf16 when training in bf16."""
    inference = "bfloat16" if precision.startswith("bf16") else "float32"
    cal = CalibrationConfig(name="none")
    module = PADModule(
        student,
        teacher,
        tok,
        tok,
        LossConfig(),
        OptimConfig(lr=1e-3),
        EvalConfig(4, SamplingConfig(), cal),
        total_steps=epochs,
        inference_dtype=inference,
    )
    test = sample_problems(["reverse"], "test", 256, 0)
    before = evaluate(module, test, module.eval_cfg, module._autocast_dtype())
    dm = RolloutDataModule(
        sample_problems(["reverse"], "train", 20000, 0),
        test[:64],
        test,
        RolloutConfig(n=4, prompts_per_epoch=64, batch_size=64),
        SamplingConfig(),
        cal,
        seed=0,
    )
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="gpu",
        devices=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        reload_dataloaders_every_n_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    fit_s = time.perf_counter() - start
    after = evaluate(module, test, module.eval_cfg, module._autocast_dtype())
    print(
        f"PPD fit on GPU ({precision}, inference {inference}), {epochs} epochs in {fit_s:.1f}s "
        f"({fit_s / epochs:.3f}s/epoch): test exact match {before['exact_match']:.3f} -> "
        f"{after['exact_match']:.3f}, kendall tau {before['kendall_tau']:.3f} -> "
        f"{after['kendall_tau']:.3f}"
    )


if __name__ == "__main__":
    main()
