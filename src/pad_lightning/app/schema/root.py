"""The whole run config: the top-level keys and one typed group per config group, built from a
composed (or resumed) config, checked group by group, and its defaults written back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pad_lightning.app.schema.calibration import CalibrationGroup
from pad_lightning.app.schema.data import DataGroup, ToyData, check_data_group, data_group
from pad_lightning.app.schema.decomposition import DecompositionGroup
from pad_lightning.app.schema.logger import LoggerGroup
from pad_lightning.app.schema.loss import LossGroup
from pad_lightning.app.schema.model import check_model, lora_rank
from pad_lightning.app.schema.nodes import build, fill, key_names, refuse_unknown
from pad_lightning.app.schema.rollout import RolloutGroup
from pad_lightning.app.schema.strategy import StrategyGroup
from pad_lightning.app.schema.trainer import TrainerGroup
from pad_lightning.app.schema.values import number, require, writable_dir_problem
from pad_lightning.training.objectives import objective

METRIC_PARTS = ("val", "after", "delta")  # summary.json sections a sweeper can optimise


@dataclass
class RunConfig:
    """conf/config.yaml's top-level keys and groups. `model` stays a config node: its schema is
    `lm.loading.role_options` per role (checked by `schema.model.check_model`)."""

    n: int = 4  # responses sampled per prompt
    seed: int = 0
    resume: str | None = None  # a run directory to resume
    optimized_metric: str | None = "val/exact_match"  # what the run returns to Hydra's sweeper
    output_dir: str | None = None  # Hydra's run directory
    loss: LossGroup = field(default_factory=LossGroup)
    calibration: CalibrationGroup = field(default_factory=CalibrationGroup)
    decomposition: DecompositionGroup = field(default_factory=DecompositionGroup)
    model: DictConfig | None = None
    data: DataGroup = field(default_factory=ToyData)
    rollout: RolloutGroup = field(default_factory=RolloutGroup)
    trainer: TrainerGroup = field(default_factory=TrainerGroup)
    strategy: StrategyGroup = field(default_factory=StrategyGroup)
    logger: LoggerGroup = field(default_factory=LoggerGroup)

    @classmethod
    def of(cls, cfg: DictConfig) -> RunConfig:
        """The typed config of `cfg`; an unknown key (top-level or in a group) is one
        ConfigError line naming it and the valid keys. Values are checked by `check`."""
        present = set(cfg.keys())
        refuse_unknown("", present, key_names(cls))
        groups = {
            name: build(kind, cfg[name] if name in present else None, name)
            for name, kind in (
                ("loss", LossGroup),
                ("calibration", CalibrationGroup),
                ("decomposition", DecompositionGroup),
                ("rollout", RolloutGroup),
                ("trainer", TrainerGroup),
                ("strategy", StrategyGroup),
                ("logger", LoggerGroup),
            )
        }
        top = {k: cfg[k] for k in ("n", "seed", "resume", "optimized_metric") if k in present}
        return cls(
            **top,
            # Hydra's run directory: unresolvable in a config composed outside a Hydra run
            output_dir=OmegaConf.select(cfg, "output_dir", throw_on_resolution_failure=False),
            model=cfg.model if "model" in present else None,
            data=data_group(cfg.data if "data" in present else None),
            **groups,
        )

    def responses_per_round(self) -> int:
        """Responses sampled per prompt in one rollout round: k for decomposition=iterative,
        else n."""
        return self.decomposition.per_round(self.n)

    def check(self, cfg: DictConfig) -> None:
        """Every value, group by group, then what needs the file system: the run directory,
        the tracking store, the data files, the model folders (nothing is loaded)."""
        number(self.n, "n", integer=True, low=2)
        number(self.seed, "seed", integer=True, low=0)
        resume = self.resume
        require(
            resume is None or (isinstance(resume, str) and resume.strip() != ""),
            f"resume={resume!r}: {'empty' if isinstance(resume, str) else 'not a run directory'}; "
            "set resume=<run directory> (outputs/<date>/<time>) or leave it out to start a new run",
        )
        metric = self.optimized_metric
        if metric is not None:
            part, _, name = str(metric).partition("/")
            require(
                part in METRIC_PARTS and bool(name),
                f"optimized_metric={metric!r}: valid: null, val/<metric>, after/<metric> or "
                "delta/<metric> (e.g. val/exact_match)",
            )
        self.loss.check()
        self.decomposition.check(self.n, self.loss.name, self.loss.divergence)
        self.calibration.check_keys(listed=self.responses_per_round())
        self.trainer.check()
        fsdp = self.strategy.name == "fsdp"
        lora = lora_rank(self.model) if fsdp and self.model is not None else 0
        self.strategy.check(self.trainer.accelerator, lora)
        self.rollout.check()
        require(
            self.rollout.sampler != "vllm" or self.strategy.name == "auto",
            f"rollout.sampler=vllm: runs in one training process (strategy=auto); with "
            f"strategy={self.strategy.name} use rollout.sampler=inverse_cdf",
        )
        self.logger.check()
        output_dir = self.output_dir
        problem = writable_dir_problem(Path(str(output_dir))) if output_dir else None
        require(
            problem is None,
            f"output_dir={str(output_dir)!r}: not writable ({problem}); run from a writable "
            "directory or set hydra.run.dir",
        )
        self.logger.check_store()
        check_data_group(cfg.data)
        served = (
            self.model is not None
            and str((self.model.get("teacher") or {}).get("backend") or "local") == "server"
        )
        require(
            not served or "teacher_tokens" not in objective(self.loss.name).needs,
            f"loss={self.loss.name}: trains on the teacher's full next-token distributions, "
            "which a served teacher does not send (only log-probabilities of given tokens); "
            "use model.teacher.backend=local, or loss=seqkd",
        )
        check_model(self.model)


def validated(cfg: DictConfig) -> DictConfig:
    """`cfg` checked (one ConfigError line on the first problem) and completed in place: every
    key of the typed groups present, absent ones at their schema default. Returns `cfg`."""
    run = RunConfig.of(cfg)
    fill(cfg, run)  # first: the checks that read `cfg` (data, model) see the defaults too
    run.check(cfg)
    return cfg
