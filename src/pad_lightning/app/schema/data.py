"""The `data` group (conf/data/): one dataclass per kind of source, picked by `data.name`; the
values are checked by `data.prompts.check_data`."""

from __future__ import annotations

from dataclasses import dataclass, field

from pad_lightning.app.schema.nodes import build
from pad_lightning.data.prompts import FILE_FORMATS, HUB, NAMES, check_data
from pad_lightning.runtime.errors import ConfigError, DataError


@dataclass
class ToyData:
    """`data=toy`: the embedded tasks (conf/data/toy.yaml)."""

    name: str = "toy"
    tasks: list[str] = field(default_factory=lambda: ["reverse"])
    train_size: int = 20000
    val_size: int = 128
    test_size: int = 256
    split_seed: int = 0
    eval_batch_size: int = 256


@dataclass
class PromptData:
    """What every prompt set has (conf/data/jsonl.yaml explains each key)."""

    name: str = "jsonl"
    path: str | None = None
    prompt_column: str = "prompt"
    id_column: str | None = None
    train_size: int | None = None
    val_size: int | None = 128
    test_size: int | None = 256
    split_seed: int = 0
    dedup: bool = True
    max_prompt_chars: int | None = None
    max_prompt_tokens: int | None = None
    cache_dir: str | None = None
    eval_batch_size: int = 32


@dataclass
class FileData(PromptData):
    """`data=jsonl|parquet|csv`: local files; val/test files, or hold-outs of `path`."""

    val_path: str | None = None
    test_path: str | None = None


@dataclass
class HubData(PromptData):
    """`data=ultrafeedback`: a hub dataset (or a local copy of one) and its splits."""

    name: str = HUB
    path: str | None = "HuggingFaceH4/ultrafeedback_binarized"
    id_column: str | None = "prompt_id"
    train_split: str = "train_prefs"
    val_split: str | None = None
    test_split: str | None = "test_prefs"


DataGroup = ToyData | FileData | HubData


def data_group(node) -> DataGroup:
    """The dataclass of `data.name` built from the `data` node (unknown keys refused)."""
    name = node["name"] if node is not None and "name" in node else None
    if name not in NAMES:
        raise ConfigError(f"data.name={name!r}: valid: {', '.join(NAMES)}")
    kind = {"toy": ToyData, HUB: HubData, **{f: FileData for f in FILE_FORMATS}}[name]
    return build(kind, node, "data")


def check_data_group(node) -> None:
    """`data.prompts.check_data` on the (filled) `data` node: values, and that files exist."""
    try:
        check_data(node)
    except DataError as err:
        raise ConfigError(str(err)) from err
