"""The paper presets (conf/experiment/pad_*.yaml): composition, recipe, start-up check, and one
real end-to-end `python -m pad_lightning.run experiment=<preset>` run of each.

The runs swap the hub models for two tiny local models of different families and tokenizers
(student: Metaspace BPE + Llama-3-like template, no pad token; teacher: byte-level BPE + ChatML)
and the prompt set for a small JSONL file, and shrink only the sizes (prompts per round, epochs,
response length, held-out sets); everything else runs as the preset sets it (bf16-mixed, fp32
student and bf16 teacher, gradient checkpointing, eager attention, listwise MCQ calibration with
alpha 0.8, beta 10, lr 8e-7 with warm-up and cosine decay, top_p 0.95, ...).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pandas as pd
import pytest
import torch
from conftest import subprocess_env
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file
from tiny_models import make_tiny_lm

from pad_lightning.app.checks import check

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
PRESETS = ("pad_gemma2", "pad_llama3", "pad_cross_family")
UF_TRAIN_PREFS = 61_135  # rows (prompts) of HuggingFaceH4/ultrafeedback_binarized train_prefs
PROMPTS = [
    "rev abcdef",
    "sort 3 1 2",
    "What is 123+456?",
    "Say hello to the teacher.",
    "Which option is better, A or B?",
    "Name a colour.",
    "Write one word.",
    "Count to three.",
    "Reverse the word fox.",
    "Is the dog lazy?",
    "Add 2 and 2.",
    "Spell cat.",
]
# Size overrides (and one CPU thread for tiny models) only: the rest of each preset runs as is.
SIZES = (
    "data.val_size=2",
    "data.test_size=3",
    "rollout.prompts_per_epoch=4",
    "rollout.max_new_tokens=8",
    "trainer.max_epochs=2",
    "trainer.num_threads=1",
    "calibration.check.refuse=false",  # random tiny models: their judge is at chance
)
METRICS = ("teacher_reward", "kendall_tau", "top1_agreement", "loss", "answer_length")


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> SimpleNamespace:
    """One tiny model pair of two tokenizer families, a JSONL prompt file and a local copy of an
    UltraFeedback-like hub dataset (data/<split>-00000-of-00001.parquet), shared by all tests."""
    root = tmp_path_factory.mktemp("presets")
    student = make_tiny_lm(root / "student", "metaspace", seed=0)
    teacher = make_tiny_lm(root / "teacher", "bytelevel", seed=1)
    jsonl = root / "prompts.jsonl"
    jsonl.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    data = root / "ultrafeedback" / "data"
    data.mkdir(parents=True)
    for split, rows in (("train_prefs", PROMPTS[:9]), ("test_prefs", PROMPTS[9:])):
        frame = pd.DataFrame(
            {"prompt": rows, "prompt_id": [f"{split}-{i}" for i in range(len(rows))]}
        )
        frame.to_parquet(data / f"{split}-00000-of-00001.parquet")
    return SimpleNamespace(
        root=root, student=student, teacher=teacher, jsonl=jsonl, ultrafeedback=data.parent
    )


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides)


def _group_overrides(preset: str) -> list[str]:
    """The group choices a preset makes in its defaults list (and in the presets it includes)."""
    out: list[str] = []
    for entry in OmegaConf.load(CONF / "experiment" / f"{preset}.yaml").get("defaults", []):
        if isinstance(entry, str):
            if entry != "_self_":
                out += _group_overrides(entry)
            continue
        for key, choice in entry.items():
            out.append(f"{key.removeprefix('override ').lstrip('/')}={choice}")
    return out


def _leaf_keys(node, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        if not prefix and key == "defaults":
            continue
        if OmegaConf.is_dict(value):
            keys += _leaf_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def _has_key(cfg, dotted: str) -> bool:
    """True if the composed config has the key, even with a missing (???) value."""
    node = cfg
    for part in dotted.split("."):
        if not OmegaConf.is_dict(node) or part not in list(node):  # `in` skips ??? values
            return False
        node = node._get_node(part)
    return True


def _local(assets, preset: str) -> object:
    """The composed preset with its hub model and dataset ids swapped for local folders."""
    return _compose(
        [
            f"experiment={preset}",
            f"model.student.path={assets.student}",
            f"model.teacher.path={assets.teacher}",
            f"data.path={assets.ultrafeedback}",
        ]
    )


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_sets_only_keys_that_exist(preset):
    """Hydra merges a `_global_` experiment without struct checks, so a misspelt key would be
    added silently: every key the preset sets must exist in the config it overrides."""
    base = _compose(_group_overrides(preset))
    raw = OmegaConf.load(CONF / "experiment" / f"{preset}.yaml")
    keys = _leaf_keys(raw)
    assert keys
    for key in keys:
        assert _has_key(base, key), f"{preset}.yaml sets {key}, not a key of the composed config"


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_holds_the_paper_recipe(preset):
    cfg = _compose([f"experiment={preset}"])
    assert (cfg.model.student.path, cfg.data.name) != (None, "toy")
    assert cfg.n == 4
    assert (cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.top_k) == (1.0, 0.95, 0)
    assert (cfg.loss.name, cfg.loss.divergence) == ("ppd", "jsd")
    assert cfg.loss.beta_student == cfg.loss.beta_teacher == 10
    assert (cfg.calibration.name, cfg.calibration.alpha) == ("mcq", 0.8)
    assert cfg.trainer.precision == "bf16-mixed"
    assert cfg.trainer.optim.lr == 8e-7 and cfg.trainer.optim.min_lr_ratio == 0
    accumulate = cfg.trainer.accumulate_grad_batches
    assert cfg.rollout.batch_size * accumulate == 128  # the effective batch on one rank
    # Warm-up is 10% of the optimizer steps of the whole run.
    batches = math.ceil(cfg.rollout.prompts_per_epoch / cfg.rollout.batch_size)
    steps = cfg.trainer.max_epochs * math.ceil(batches / accumulate)
    assert cfg.trainer.optim.warmup_steps == round(0.1 * steps)
    # About one pass over UltraFeedback's training prompts, as rollout rounds.
    draws = cfg.rollout.prompts_per_epoch * cfg.trainer.max_epochs
    assert abs(draws - UF_TRAIN_PREFS) / UF_TRAIN_PREFS < 0.01
    # Prompts <= 1800 tokens and prompt + response <= 2048 for every prompt.
    assert cfg.data.name == "ultrafeedback" and cfg.data.max_prompt_tokens == 1800
    assert cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens == 2048
    student, teacher = cfg.model.student, cfg.model.teacher
    assert (student.dtype, teacher.dtype) == ("float32", "bfloat16")
    assert student.gradient_checkpointing and student.lora.r == 0
    for role in (student, teacher):  # Gemma-2 soft-caps attention logits: sdpa cannot
        if "gemma-2" in role.path.lower():
            assert role.attn_implementation == "eager", role.path
    if preset == "pad_cross_family":
        assert student.path.split("/")[0] != teacher.path.split("/")[0]


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_passes_the_start_up_check_with_local_models(assets, preset):
    cfg = _local(assets, preset)
    check(cfg)  # raises ConfigError (one line) on any invalid value


@pytest.mark.parametrize("preset", PRESETS)
def test_student_dtype_keeps_the_first_adamw_step_at_the_preset_lr(preset):
    """An AdamW step moves each weight by about the learning rate; at 8e-7 (and 1/warm-up of it
    on the first step) that is far below bf16's spacing at typical weight sizes, so bf16 student
    weights would never change. The preset's student dtype must keep the step."""
    cfg = _compose([f"experiment={preset}"])
    optim = cfg.trainer.optim
    first_lr = optim.lr / max(1, optim.warmup_steps)  # cosine_with_warmup's first factor

    def changed_fraction(dtype: torch.dtype) -> float:
        gen = torch.Generator().manual_seed(0)
        weight = torch.nn.Parameter((0.02 * torch.randn(4096, generator=gen)).to(dtype))
        before = weight.detach().clone()
        weight.grad = torch.randn(4096, generator=gen).to(dtype)
        opt = torch.optim.AdamW(
            [weight], lr=first_lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay
        )
        opt.step()
        return (weight.detach() != before).float().mean().item()

    assert changed_fraction(getattr(torch, cfg.model.student.dtype)) > 0.99
    assert changed_fraction(torch.bfloat16) < 0.01  # what a bfloat16 student would do


# -- end to end ------------------------------------------------------------------------------


def _run(assets, preset: str, name: str, *overrides: str) -> SimpleNamespace:
    """One `python -m pad_lightning.run experiment=<preset>` in a subprocess; its summary."""
    run_dir = assets.root / name
    cmd = [
        sys.executable,
        "-m",
        "pad_lightning.run",
        f"experiment={preset}",
        f"model.student.path={assets.student}",
        f"model.teacher.path={assets.teacher}",
        *overrides,
        *SIZES,
        f"logger.tracking_uri=sqlite:///{assets.root}/mlflow.db",
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.run(
        cmd,
        cwd=assets.root,
        env=subprocess_env(assets.root),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"{preset} run failed:\n{proc.stderr[-4000:]}"
    summary_file = Path(proc.stdout.strip().splitlines()[-1])
    assert summary_file == run_dir / "summary.json"
    summary = json.loads(summary_file.read_text())
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{assets.root}/mlflow.db")
    return SimpleNamespace(
        preset=preset,
        dir=run_dir,
        summary=summary,
        client=client,
        run=client.get_run(summary["mlflow_run_id"]),
    )


@pytest.fixture(scope="module", params=PRESETS)
def preset_run(request, assets) -> SimpleNamespace:
    preset = request.param
    return _run(assets, preset, preset, "data=jsonl", f"data.path={assets.jsonl}")


def test_preset_run_reports_the_metrics_before_and_after(preset_run):
    summary = preset_run.summary
    for side in ("before", "after"):
        metrics = summary[side]
        for key in METRICS:
            assert math.isfinite(metrics[key]), (side, key)
        assert "exact_match" not in metrics  # prompt datasets have no reference answers
        assert -1 <= metrics["kendall_tau"] <= 1 and 0 <= metrics["top1_agreement"] <= 1
        assert 0 <= metrics["loss"] <= math.log(2) + 1e-6  # a per-prompt JSD in nats
        assert metrics["teacher_reward"] < 0  # a mean log-likelihood
        assert 0 < metrics["answer_length"] <= 8
    for key in METRICS:
        assert summary["delta"][key] == pytest.approx(
            summary["after"][key] - summary["before"][key]
        )
    assert summary["timings"]["epochs"] == 2
    assert summary["timings"]["mean_calibration_s"] > 0  # alpha 0.8: the MCQ passes ran


def test_preset_run_logs_the_preset_params_and_per_epoch_times(preset_run):
    params = preset_run.run.data.params
    cfg = _compose([f"experiment={preset_run.preset}"])
    assert float(params["loss.beta_student"]) == float(params["loss.beta_teacher"]) == 10
    assert float(params["rollout.top_p"]) == 0.95
    assert float(params["rollout.temperature"]) == 1.0
    assert float(params["trainer.optim.lr"]) == 8e-7
    assert float(params["calibration.alpha"]) == 0.8
    assert params["trainer.precision"] == "bf16-mixed"
    assert params["data.max_prompt_tokens"] == "1800"
    assert params["trainer.optim.warmup_steps"] == str(cfg.trainer.optim.warmup_steps)
    assert params["model.student.gradient_checkpointing"] == "True"
    assert params["model.student.attn_implementation"] == str(cfg.model.student.attn_implementation)
    assert params["model.teacher.dtype"] == "bfloat16"
    assert params["rollout.prompts_per_epoch"] == "4"  # the size override was applied
    run_id = preset_run.run.info.run_id
    for part in ("generation", "teacher_scoring", "calibration", "training", "other"):
        history = preset_run.client.get_metric_history(run_id, f"system/time/{part}_s")
        assert len({m.step for m in history}) == 2, part  # one value per epoch
        assert all(m.value >= 0 for m in history)
    assert len(preset_run.client.get_metric_history(run_id, "train/loss")) == 2


def test_preset_run_saves_a_student_that_loads_and_has_trained(preset_run, assets):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = preset_run.dir / "student"
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template and model.dtype == torch.float32
    saved, initial = (
        load_file(folder / "model.safetensors"),
        load_file(assets.student / "model.safetensors"),
    )
    assert saved.keys() == initial.keys()
    # Two AdamW steps at the preset's (warm-up) learning rate moved the fp32 weights.
    assert any(not torch.equal(saved[k], initial[k]) for k in saved)


def test_lora_run_on_the_presets_own_data_group_saves_a_merged_student(assets):
    """pad_llama3 with LoRA, reading prompts through its own data=ultrafeedback group (a local
    dataset folder): the student folder is a plain HF model with the adapters merged in."""
    from transformers import AutoModelForCausalLM

    done = _run(
        assets,
        "pad_llama3",
        "lora",
        f"data.path={assets.ultrafeedback}",
        "model.student.lora.r=4",
        "trainer.checkpoint_every_n_epochs=1",
    )
    assert done.run.data.params["model.student.lora.r"] == "4"
    assert done.run.data.params["data.name"] == "ultrafeedback"
    folder = done.dir / "student"
    assert not (folder / "adapter_config.json").exists()
    AutoModelForCausalLM.from_pretrained(folder)  # loads without peft
    saved = load_file(folder / "model.safetensors")
    initial = load_file(assets.student / "model.safetensors")
    assert saved.keys() == initial.keys()  # no lora_A / lora_B / base_layer names
    changed = {k for k in saved if not torch.equal(saved[k], initial[k])}
    assert changed and all(k.endswith("proj.weight") for k in changed)  # only adapted linears
    # The checkpoint holds the trainable adapters only: no frozen base weights, no teacher.
    state = torch.load(done.dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert state and all(".lora_A." in k or ".lora_B." in k for k in state)
