"""The run config's schema (app/schema/): every shipped config validates, each default has one
source (the schema's, which the shipped YAML repeats), runtime configs are built from it, and
unknown, moved or empty keys are refused with one line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from tiny_models import make_tiny_lm

from pad_lightning.app.checks import check
from pad_lightning.app.configs import config_dir
from pad_lightning.app.experiment import _configs
from pad_lightning.app.main import hydra_message
from pad_lightning.app.resume import resumed_config
from pad_lightning.app.schema import RunConfig
from pad_lightning.app.schema.calibration import CalibrationGroup
from pad_lightning.app.schema.data import FileData, HubData, ToyData
from pad_lightning.app.schema.decomposition import DecompositionGroup
from pad_lightning.app.schema.logger import LoggerGroup
from pad_lightning.app.schema.loss import LossGroup
from pad_lightning.app.schema.nodes import key_names
from pad_lightning.app.schema.rollout import RolloutGroup
from pad_lightning.app.schema.strategy import StrategyGroup
from pad_lightning.app.schema.trainer import TrainerGroup
from pad_lightning.runtime.errors import ConfigError
from pad_lightning.training.module import OptimConfig
from pad_lightning.training.objectives import LossConfig

CONF = Path(config_dir())
TYPED = {
    "loss": LossGroup,
    "calibration": CalibrationGroup,
    "decomposition": DecompositionGroup,
    "rollout": RolloutGroup,
    "trainer": TrainerGroup,
    "strategy": StrategyGroup,
    "logger": LoggerGroup,
}
DATA = {"toy": ToyData, "jsonl": FileData, "parquet": FileData, "csv": FileData}
DATA["ultrafeedback"] = HubData
PROMPTS = ["rev abc", "sort 3 1 2", "Say hello.", "Name a colour.", "Count to three.", "Spell cat."]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> SimpleNamespace:
    """Local stand-ins for what the shipped configs name: two tiny models, a prompt file of each
    format and an UltraFeedback-like dataset folder; a writable zoo cache and tracking store."""
    root = tmp_path_factory.mktemp("schema")
    frame = pd.DataFrame({"prompt": PROMPTS})
    files = {"jsonl": root / "p.jsonl", "parquet": root / "p.parquet", "csv": root / "p.csv"}
    files["jsonl"].write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    frame.to_parquet(files["parquet"])
    frame.to_csv(files["csv"], index=False)
    hub = root / "ultrafeedback"
    (hub / "data").mkdir(parents=True)
    for split in ("train_prefs", "test_prefs"):
        rows = frame.assign(prompt_id=[f"{split}-{i}" for i in range(len(frame))])
        rows.to_parquet(hub / "data" / f"{split}-00000-of-00001.parquet")
    return SimpleNamespace(
        root=root,
        files={**files, "ultrafeedback": hub},
        student=make_tiny_lm(root / "student", "metaspace", seed=0),
        teacher=make_tiny_lm(root / "teacher", "bytelevel", seed=1),
    )


@pytest.fixture(autouse=True)
def _cache(world, monkeypatch):
    monkeypatch.setenv("PAD_LIGHTNING_CACHE", str(world.root / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def local(world, *overrides: str) -> list[str]:
    """`overrides` plus a tracking store in the test's folder."""
    return [f"logger.tracking_uri=sqlite:///{world.root}/mlflow.db", *overrides]


def refusal(*overrides: str) -> str:
    with pytest.raises(ConfigError) as err:
        check(composed(*overrides))
    assert "\n" not in str(err.value)
    return str(err.value)


def defaults_of(cls) -> dict:
    """A schema's defaults as the YAML writes them (tuples are lists, groups are dicts)."""
    return json.loads(json.dumps(dataclasses.asdict(cls())))


# -- every shipped config validates ----------------------------------------------------------


def option_overrides(world, group: str, option: str) -> list[str]:
    """What an option needs besides itself: the local file or models it reads."""
    if group == "data" and option != "toy":
        return [f"data.path={world.files[option]}"]
    if group == "model" and option == "hf":
        return [f"model.student.path={world.student}", f"model.teacher.path={world.teacher}"]
    return []


GROUP_OPTIONS = [
    (group, option)
    for group in ("loss", "calibration", "decomposition", "model", "data", "strategy")
    for option in options(group)
]


@pytest.mark.parametrize(
    ("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS]
)
def test_each_option_of_each_group_validates_and_is_complete(world, group, option):
    cfg = composed(*local(world, f"{group}={option}", *option_overrides(world, group, option)))
    assert check(cfg) is cfg
    for name, cls in {**TYPED, "data": DATA[cfg.data.name]}.items():
        assert set(cfg[name].keys()) == set(key_names(cls)), name
    assert set(cfg.trainer.optim.keys()) == set(key_names(OptimConfig))


@pytest.mark.parametrize("preset", options("experiment"))
def test_each_preset_validates(world, preset):
    extra = []
    if preset.startswith("pad_"):  # hub models and dataset swapped for local stand-ins
        extra = option_overrides(world, "model", "hf") + [
            f"data.path={world.files['ultrafeedback']}"
        ]
    cfg = check(composed(*local(world, f"experiment={preset}", *extra)))
    assert RunConfig.of(cfg).n == cfg.n


# -- one source per default --------------------------------------------------------------------


def test_the_default_config_is_the_schema_default():
    """What conf/config.yaml composes to is, key by key, the schema's default (ppd's divergence
    is the one value its option sets)."""
    cfg = composed()
    for name, cls in {**TYPED, "data": ToyData}.items():
        node = OmegaConf.to_container(cfg[name], resolve=True)
        expected = defaults_of(cls)
        if name == "loss":
            assert node.pop("divergence") == "jsd"
            expected.pop("divergence")
            expected = {k: v for k, v in expected.items() if v is not None}  # unset knobs
        assert node == expected, name
    top = RunConfig()
    for key in ("n", "seed", "resume", "optimized_metric"):
        assert cfg[key] == getattr(top, key), key


def test_the_learning_rate_has_one_default():
    assert OptimConfig().lr == composed().trainer.optim.lr == 1e-3
    assert TrainerGroup().optim == OptimConfig()


# the keys each other option exists to set (the rest must equal the schema's defaults)
SETS = {
    ("calibration", "none"): {"name"},
    ("decomposition", "split"): {"name", "group_size"},
    ("decomposition", "iterative"): {"name", "group_size"},
    ("strategy", "ddp"): {"name"},
    ("strategy", "fsdp"): {"name"},
    ("data", "jsonl"): set(),
    ("data", "parquet"): {"name"},
    ("data", "csv"): {"name"},
    ("data", "ultrafeedback"): set(),
}


@pytest.mark.parametrize(("group", "option"), list(SETS), ids=[f"{g}={o}" for g, o in SETS])
def test_other_options_repeat_the_schema_defaults(group, option):
    node = OmegaConf.to_container(composed(f"{group}={option}")[group])
    cls = DATA[option] if group == "data" else TYPED[group]
    expected = defaults_of(cls)
    assert set(node) == set(expected)
    differ = {k for k in node if node[k] != expected[k]}
    assert differ == SETS[group, option]


def test_keys_a_config_leaves_out_take_the_schema_default(world):
    """A config without a key (one saved by an older version) runs with the schema's value:
    the values the code used to repeat in `.get(key, default)` calls."""
    cfg = composed(
        *local(
            world,
            "~trainer.num_nodes",
            "~trainer.accumulate_grad_batches",
            "~rollout.sampler",
            "~calibration.option_template",
            "~logger.print_time_every",
            "~strategy.teacher",
        )
    )
    check(cfg)
    assert (cfg.trainer.num_nodes, cfg.trainer.accumulate_grad_batches) == (1, 1)
    assert cfg.rollout.sampler == "inverse_cdf"
    assert cfg.calibration.option_template == "{letter}) {response}"
    assert cfg.logger.print_time_every == 10
    assert cfg.strategy.teacher == "replicated"


# -- runtime configs, built by keyword from the schema --------------------------------------


def test_loss_knobs_a_loss_config_leaves_out_keep_the_objectives_defaults(world):
    _, _, _, ppd, optim = _configs(check(composed(*local(world))))
    assert ppd == LossConfig(name="ppd", divergence="jsd")  # beta, gamma, ...: LossConfig's
    assert optim == OptimConfig(lr=1e-3, betas=[0.9, 0.98])
    _, _, _, simpo, _ = _configs(check(composed(*local(world, "loss=simpo"))))
    assert simpo == LossConfig(name="simpo", divergence=None, beta=10.0, gamma=3.0)
    _, _, rollout, split, _ = _configs(
        check(composed(*local(world, "n=8", "decomposition=iterative")))
    )
    assert (split.group_size, rollout.n, rollout.rounds) == (4, 4, 2)


def test_runtime_configs_carry_every_value_of_the_config(world):
    cfg = check(
        composed(
            *local(
                world,
                "rollout.temperature=0.5",
                "rollout.generation_batch_size=7",
                "rollout.sampler=hf",
                "calibration.alpha=0.3",
                "calibration.option_template='{letter}: {response}'",
                "rollout.sample_log_prompts=3",
            )
        )
    )
    sampling, calibration, rollout, _, _ = _configs(cfg)
    assert (sampling.temperature, sampling.batch_size, sampling.sampler) == (0.5, 7, "hf")
    assert (calibration.alpha, calibration.mode) == (0.3, "listwise")
    assert calibration.option_template == "{letter}: {response}"
    assert (rollout.n, rollout.sample_log_prompts, rollout.rounds) == (4, 3, 1)


# -- refusals ----------------------------------------------------------------------------------


def test_an_added_key_in_a_group_is_refused_with_the_valid_keys():
    assert refusal("+trainer.optim.lrr=1") == (
        "trainer.optim.lrr: unknown key; valid: lr, weight_decay, warmup_steps, min_lr_ratio, betas"
    )
    assert refusal("+rollout.temprature=1").startswith(
        "rollout.temprature: unknown key; valid: prompts_per_epoch, batch_size, every_n_epochs, "
        "temperature, "
    )
    assert refusal("+loss.betta=1") == (
        "loss.betta: unknown key; valid: name, divergence, beta_student, beta_teacher, beta, "
        "gamma, pairs, sft_weight, jsd_beta, temperature"
    )
    assert refusal("+data.foo=1") == (
        "data.foo: unknown key; valid: name, tasks, train_size, val_size, test_size, "
        "split_seed, eval_batch_size"
    )
    assert refusal("+model.foo=1") == "model.foo: unknown key; valid: student, teacher, zoo"
    assert refusal("+model.zoo.student.widht=3").startswith(
        "model.zoo.student.widht: unknown key; valid: hidden_size, "
    )


def test_an_unknown_top_level_key_is_refused():
    assert refusal("+foo=1") == (
        "foo: unknown key; valid: n, seed, resume, optimized_metric, output_dir, loss, "
        "calibration, decomposition, model, data, rollout, trainer, strategy, logger"
    )


def test_an_empty_resume_is_refused_instead_of_starting_a_new_run():
    assert refusal("resume=") == (
        "resume='': empty; set resume=<run directory> (outputs/<date>/<time>) or leave it out "
        "to start a new run"
    )


def test_the_old_objective_key_points_to_optimized_metric():
    moved = (
        "objective: moved; use optimized_metric=<val|after|delta>/<metric> (renamed; same values)"
    )
    with pytest.raises(HydraException) as err:
        composed("objective=val/loss")
    assert hydra_message(err.value) == moved
    assert refusal("~optimized_metric", "+objective=val/loss") == moved
    assert refusal("+trainer.strategy=ddp") == (
        "trainer.strategy: moved; use strategy=<auto|ddp|fsdp> (the strategy group, conf/strategy/)"
    )


def test_a_bad_optimized_metric_is_refused():
    assert refusal("optimized_metric=test/em") == (
        "optimized_metric='test/em': valid: null, val/<metric>, after/<metric> or "
        "delta/<metric> (e.g. val/exact_match)"
    )


def test_a_run_saved_with_the_old_keys_resumes(world, tmp_path):
    """config.yaml written by an older version: `objective:` and `trainer.strategy:`."""
    saved = OmegaConf.to_container(composed(*local(world, "strategy=ddp")), resolve=False)
    del saved["optimized_metric"]
    saved["objective"] = "after/exact_match"
    saved["trainer"]["strategy"] = saved.pop("strategy")["name"]
    del saved["output_dir"]
    del saved["logger"]["print_time_every"]  # a key added since
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    OmegaConf.save(OmegaConf.create(saved), run_dir / "config.yaml")
    state = {"overrides": [], "mlflow_run_id": "abc", "status": "KILLED"}
    (run_dir / "run_state.json").write_text(json.dumps(state))
    cfg, _ = resumed_config(run_dir, composed(), [f"resume={run_dir}"])
    check(cfg)
    assert cfg.optimized_metric == "after/exact_match" and "objective" not in cfg
    assert cfg.strategy.name == "ddp" and "strategy" not in cfg.trainer
    assert cfg.strategy.teacher == "replicated" and cfg.logger.print_time_every == 10


def test_engine_options_are_checked_before_anything_runs():
    """The served teacher's and the vLLM rollout engine's keys: one line each, naming the key."""
    assert refusal("model.teacher.backend=cloud") == (
        "model.teacher.backend='cloud': valid: local, server"
    )
    assert refusal("+model.student.backend=server") == (
        "model.student.backend=server: only the teacher is served; the student samples on a "
        "server with rollout.sampler=vllm"
    )
    assert refusal(
        "model.teacher.backend=server", "model.teacher.server.urls=[localhost:8000]"
    ) == (
        "model.teacher.server.urls: 'localhost:8000' is not a URL; give base URLs like "
        "http://127.0.0.1:8000 (or [] to start a server for the run)"
    )
    assert refusal("model.teacher.backend=server", "model.teacher.server.retries=-1") == (
        "model.teacher.server.retries=-1: must be an integer >= 0"
    )
    assert refusal("model.teacher.backend=server", "+model.teacher.server.port=1") == (
        "model.teacher.server.port: unknown key; valid: urls, model, concurrency, timeout, "
        "retries, backoff, python, max_model_len, args"
    )
    assert refusal("model.teacher.backend=server", "loss=gkd").startswith(
        "loss=gkd: trains on the teacher's full next-token distributions, which a served teacher "
        "does not send"
    )
    assert refusal("rollout.sampler=vllm", "strategy=ddp") == (
        "rollout.sampler=vllm: runs in one training process (strategy=auto); with strategy=ddp "
        "use rollout.sampler=inverse_cdf"
    )
    assert refusal("rollout.sampler=vllm", "rollout.vllm.url=8001") == (
        "rollout.vllm.url=8001: a base URL like http://127.0.0.1:8001, or null (the run starts a "
        "server)"
    )
    assert refusal("rollout.sampler=vllm", "rollout.vllm.concurrency=0").startswith(
        "rollout.vllm.concurrency=0: must be an integer >= 1"
    )
