"""The engines against the in-process paths, measured in one run (ratios, alone on the machine).

Needs the vLLM environment (`make vllm-env`). Models: the toy zoo's teacher (4 layers, hidden
192, 32-wide heads: vLLM's CPU backend runs no narrower head) with its vocabulary padded to
32k and 256k (`_setup.padded_vocab`: the added ids get small random embeddings), saved as
folders and served by vLLM from them. For every vocabulary:

* teacher scoring: the rewards of P x 4 responses (the student's samples) and the pairwise
  debiased MCQ selection, locally (`score_pairs`, `selection` with the model in this process)
  and on a vLLM server (`ServedLM`), median seconds of --repeats calls; the local path at 1 and
  2 threads, vLLM with its default CPU binding (one compute thread on two cores, the other
  reserved for its front end): "at equal threads" is local 1 thread against vLLM;
* rollouts: P prompts x n = 4 samples of --max-new-tokens tokens, the inverse-CDF sampler
  (`generate`, KV-cached decoding) against the vLLM engine (`generate` on the served model);
* memory: the training process's peak RSS (VmHWM, what the run prints) over a short run of the
  default world (and of a 32k-vocabulary teacher) with the teacher local and on a server, and
  the server's own peak.

Run: ``PAD_LIGHTNING_VLLM_PYTHON=.venv-vllm/bin/python python experiments/bench_engines.py``
(`make bench-engines`). On a GPU machine: ``--device cuda`` with PAD_LIGHTNING_VLLM_PYTHON naming
a GPU build of vLLM (the local path then runs on the GPU; the thread columns are the host's).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from _setup import median_time, padded_vocab, run_config

REPO = Path(__file__).resolve().parents[1]


def _peak_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _server_peak_mb(server) -> float:
    """Peak RSS of the server's process tree (API server, engine core, worker), summed."""
    out = subprocess.run(
        ["pgrep", "-g", str(server.process.pid)], capture_output=True, text=True
    ).stdout.split()
    return sum(_peak_mb(int(p)) for p in out)


def _run_peak(overrides: list[str], root: Path) -> float:
    """The training process's peak RSS as the run prints it (its last epoch line)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    out = subprocess.run(
        [sys.executable, "-m", "pad_lightning.run", *overrides, f"hydra.run.dir={root}"],
        cwd=root.parent,
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    peaks = re.findall(r"peak RSS (\d+) MB", out.stdout)
    return float(peaks[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--vocabs", default="104,32768,262144")
    parser.add_argument("--memory-epochs", type=int, default=5)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument(
        "--sync-vocabs", default="104,32768,262144", help="weight-sync timing ('' skips it)"
    )
    parser.add_argument("--device", default="cpu", help="of the local path: cpu, or cuda")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pad_lightning.app.models import zoo_config
    from pad_lightning.data.tasks import sample_problems
    from pad_lightning.engines import teacher_service, vllm_server
    from pad_lightning.lm.chat import encode_pairs, pad_id
    from pad_lightning.lm.generation import SamplingConfig, generate
    from pad_lightning.lm.scoring import score_pairs
    from pad_lightning.training.calibration import CalibrationConfig, selection
    from pad_lightning.zoo.builder import ensure_zoo

    root = ensure_zoo(zoo_config(run_config([]).model.zoo))
    tok = AutoTokenizer.from_pretrained(root / "teacher")
    base = AutoModelForCausalLM.from_pretrained(root / "teacher").eval()
    student = AutoModelForCausalLM.from_pretrained(root / "student").eval()
    prompts = [p.prompt for p in sample_problems(["reverse"], "val", args.prompts, seed=0)]
    sampling = SamplingConfig(temperature=0.8, max_new_tokens=args.max_new_tokens, batch_size=4096)
    torch.manual_seed(0)
    texts = generate(student, tok, prompts, 4, sampling).texts
    pairs = encode_pairs(tok, prompts, texts)
    cal = CalibrationConfig(alpha=0.8, mode="pairwise", debias=True)
    work = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    print(
        f"{args.prompts} prompts x 4 responses, {args.max_new_tokens} new tokens; median of "
        f"{args.repeats} after a warm-up; vLLM {vllm_server.vllm_python(None, 'vllm')}"
    )
    header = (
        f"{'vocab':>7} {'what':<22} {'local 1t s':>10} {'local 2t s':>10} {'vLLM s':>8} "
        f"{'local1t/vLLM':>12} {'local2t/vLLM':>12}"
    )
    print(header)
    for vocab in (int(v) for v in args.vocabs.split(",") if v):
        model = padded_vocab(base, vocab, seed=0).eval()
        folder = work / f"teacher-{vocab}"
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        model.to(args.device)
        server = vllm_server.launch(
            str(folder), str(folder), 512, work / f"vllm-{vocab}.log", "bench", say=lambda _: None
        )
        try:
            served = teacher_service.connect(
                teacher_service.ServerOptions(urls=[server.url], concurrency=4), str(folder)
            )
            served.generation_config = model.generation_config
            jobs = {
                "teacher rewards": lambda m: score_pairs(
                    m, pairs, pad_id(tok), device=next(m.parameters()).device
                ),
                "MCQ selection": lambda m: selection(cal, m, tok, prompts, texts),
                "rollout (n=4)": lambda m: generate(m, tok, prompts, 4, sampling),
            }
            for what, job in jobs.items():
                times = {}
                for threads in (1, 2):
                    torch.set_num_threads(threads)
                    times[threads] = median_time(lambda j=job, m=model: j(m), args.repeats)
                torch.set_num_threads(2)
                remote = median_time(lambda j=job, m=served: j(m), args.repeats)
                print(
                    f"{vocab:>7} {what:<22} {times[1]:>10.3f} {times[2]:>10.3f} {remote:>8.3f} "
                    f"{times[1] / remote:>11.2f}x {times[2] / remote:>11.2f}x",
                    flush=True,
                )
            print(f"{vocab:>7} vLLM server peak RSS {_server_peak_mb(server):.0f} MB", flush=True)
        finally:
            server.stop()
    if args.sync_vocabs:
        print("\nweight sync of the rollout engine (write safetensors, pause, reload, resume)")
        from pad_lightning.engines import vllm_rollout

        for vocab in (int(v) for v in args.sync_vocabs.split(",")):
            model = padded_vocab(base, vocab, seed=0).eval()
            folder = work / f"sync-{vocab}"
            model.save_pretrained(folder)
            tok.save_pretrained(folder)
            server = vllm_server.launch(
                str(folder),
                "student",
                512,
                work / "sync.log",
                "bench",
                weight_sync=True,
                say=lambda _: None,
            )
            try:
                engine = vllm_rollout.connect(
                    vllm_rollout.VllmEngineOptions(), server.url, "student", None
                )
                state = model.state_dict()
                seconds = median_time(lambda e=engine, st=state: e.sync(st), args.repeats)
                size = sum(
                    t.numel() * t.element_size()
                    for t in vllm_rollout.unique_tensors(state).values()
                )
                print(f"{vocab:>7} {size / 2**20:>8.1f} MB of weights: {seconds:.3f} s per sync")
                engine.close()
            finally:
                server.stop()
    if args.skip_memory:
        return
    print("\ntraining process peak RSS (MB), default world, teacher local vs served")
    epochs = [f"trainer.max_epochs={args.memory_epochs}", "trainer.val_every_n_epochs=1000"]
    big = work / "teacher-32768"
    if not big.exists():
        padded_vocab(base, 32768, seed=0).save_pretrained(big)
        tok.save_pretrained(big)
    hf = ["model=hf", f"model.student.path={root / 'student'}", f"model.teacher.path={big}"]
    cases = [("toy teacher (104)", [], root / "teacher"), ("32k-vocab teacher", hf, big)]
    for label, extra, teacher in cases:
        local = _run_peak([*epochs, *extra], work / f"mem-local-{teacher.name}")
        server = vllm_server.launch(
            str(teacher), str(teacher), 512, work / "mem.log", "bench", say=lambda _: None
        )
        try:
            remote = _run_peak(
                [
                    *epochs,
                    *extra,
                    "model.teacher.backend=server",
                    f"model.teacher.server.urls=[{server.url}]",
                ],
                work / f"mem-served-{teacher.name}",
            )
            server_mb = _server_peak_mb(server)
        finally:
            server.stop()
        print(
            f"{label:<22} local {local:.0f}  served {remote:.0f}  "
            f"(saves {local - remote:.0f}; the server's processes: {server_mb:.0f})"
        )


if __name__ == "__main__":
    main()
