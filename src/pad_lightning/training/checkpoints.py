"""Checkpoints that survive crashes: atomic writes, the last two kept, never non-finite weights.

* `AtomicCheckpointIO` writes `<name>.partial`, flushes it to disk and renames it over `<name>`:
  a crash during the write leaves the previous files intact.
* `RollingCheckpoint` saves every `checkpoint_every_n_epochs` epochs and after the last epoch,
  keeps the newest `keep` epoch files (checkpoints/last.ckpt links to the newest), refuses to
  write weights that are not finite (`TrainingDiverged`), and commits the MLflow metrics held
  back since the previous checkpoint (see `tracking.RunLogger`).
* `pick_resume_checkpoint` finds the newest readable checkpoint of a run directory, falling back
  to the previous one if the newest is unreadable, and otherwise stops with one line naming it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from pad_lightning.runtime.errors import CheckpointError, TrainingDiverged, described
from pad_lightning.runtime.files import replaced_atomically
from pad_lightning.runtime.interrupts import fault
from pad_lightning.runtime.nonfinite import first_nonfinite, lr_hint


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with replaced_atomically(path) as partial:
            with open(partial, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            fault("checkpoint_write")  # tests: a crash after the write, before the rename


class RollingCheckpoint(ModelCheckpoint):
    """Epoch checkpoints `epochNNNN.ckpt` (the newest `keep` kept) and the `last.ckpt` link."""

    def __init__(self, dirpath: Path, every_n_epochs: int, run_logger=None, keep: int = 2):
        super().__init__(
            dirpath=dirpath,
            filename="epoch{epoch:04d}",
            auto_insert_metric_name=False,
            save_top_k=-1,
            save_last="link",
            every_n_epochs=every_n_epochs,
            save_on_train_epoch_end=True,
        )
        self.keep, self.run_logger = keep, run_logger
        self._commit_id = 0  # the global step of the checkpoint being written
        self._carried: tuple[list, int] | None = None

    def state_dict(self) -> dict:
        """Also the metrics held since the previous checkpoint (see `tracking.RunLogger`)."""
        state = super().state_dict()
        state["held_metrics"] = self.run_logger.held() if self.run_logger is not None else []
        state["commit_id"] = self._commit_id
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        if "held_metrics" in state_dict:
            self._carried = (state_dict["held_metrics"], state_dict["commit_id"])
        super().load_state_dict(state_dict)

    def on_train_start(self, trainer, pl_module) -> None:
        """Resumed: write the metrics the checkpoint carried, unless they were committed."""
        if self._carried is not None and self.run_logger is not None:
            self.run_logger.commit_carried(*self._carried)
        self._carried = None

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        module = trainer.lightning_module
        bad = first_nonfinite(list(module.named_parameters()))
        if bad is not None:
            kept = self.last_model_path or "none written yet"
            raise TrainingDiverged(
                f"step {trainer.global_step}: weight {bad} is not finite after the optimizer "
                f"step; the checkpoint was not written (last good: {kept}); "
                f"{lr_hint(module.optim_cfg.lr)}"
            )
        self._commit_id = trainer.global_step
        super()._save_checkpoint(trainer, filepath)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        before = self._last_checkpoint_saved
        super().on_train_epoch_end(trainer, pl_module)
        if (
            self._last_checkpoint_saved == before
            and trainer.current_epoch + 1 >= trainer.max_epochs
        ):
            candidates = self._monitor_candidates(trainer)  # the final epoch is always saved
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        if self._last_checkpoint_saved != before:
            fault("checkpoint_saved")  # tests: written and linked, its metrics not yet committed
            if trainer.is_global_zero:
                self._prune()
            if self.run_logger is not None:
                self.run_logger.commit(self._commit_id)

    def _prune(self) -> None:
        files = sorted(Path(self.dirpath).glob("epoch*.ckpt"))
        for old in files[: -self.keep]:
            if old.is_dir():  # a distributed (FSDP) checkpoint
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)


def read_header(path: Path) -> dict:
    """The loop state of a checkpoint (epoch, global step, ...): a Lightning file (memory-mapped,
    so the weights are not read) or a distributed checkpoint directory (its meta.pt)."""
    from pad_lightning.training.checkpoints import META

    path = Path(path)
    if path.is_dir():
        return torch.load(path / META, map_location="cpu", weights_only=True)
    return torch.load(path, map_location="cpu", mmap=True, weights_only=True)


def _readable(path: Path) -> str | None:
    """None if `path` loads as a Lightning checkpoint with a state dict (or is a complete
    distributed checkpoint directory), else why not."""
    if path.is_dir():
        from pad_lightning.training.checkpoints import META

        if not (path / ".metadata").is_file() or not (path / META).is_file():
            return "an incomplete distributed checkpoint (no .metadata or meta.pt)"
        try:
            header = read_header(path)
        except Exception as err:
            return described(err)
        return None if isinstance(header, dict) and "epoch" in header else "no loop state"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # as Lightning loads it
    except Exception as err:  # truncated zip, random bytes, pickle errors
        return described(err)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        return "not a Lightning checkpoint (no state_dict)"
    return None


def pick_resume_checkpoint(run_dir: Path, log=print) -> Path:
    """The checkpoint to resume `run_dir` from: `last.ckpt`, or if it cannot be read (or a stop
    came between writing a checkpoint and linking it), the newest readable epoch checkpoint,
    with a printed note. Raises CheckpointError otherwise."""
    folder = run_dir / "checkpoints"
    last = folder / "last.ckpt"
    epochs = sorted(folder.glob("epoch*.ckpt"), reverse=True)
    if not last.exists() and not last.is_symlink() and not epochs:
        raise CheckpointError(
            f"{last}: no checkpoint to resume from (the run stopped before its first one); "
            "start a new run"
        )
    problem = _readable(last) if last.exists() else "missing or a dangling link"
    if problem is None and (not epochs or last.resolve() == epochs[0].resolve()):
        return last
    target = last.resolve() if last.exists() else None
    for candidate in epochs:
        if candidate.resolve() != target and _readable(candidate) is None:
            why = problem or f"it links to {target.name}, not the newest"
            log(f"resume: {last} is unreadable or stale ({why}); resuming from {candidate.name}")
            return candidate
        if candidate.resolve() == target and problem is None:
            return last
    raise CheckpointError(
        f"{last}: cannot be read ({problem}) and no older readable checkpoint is in {folder}; "
        "start a new run"
    )


META = "meta.pt"  # Lightning's name for the non-tensor part of a distributed checkpoint


# -- checkpoints ----------------------------------------------------------------------------
def is_distributed_checkpoint(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / META).is_file()
