"""Config nodes <-> schema dataclasses: a group's dataclass is built from its node by keyword
(an unknown key is refused by name, with the valid keys), and the defaults of the keys a node
lacks are written back into it, so that code reads every key as an attribute."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from pad_lightning.app.schema.moved import MOVED
from pad_lightning.runtime.errors import ConfigError

T = TypeVar("T")


def key_names(cls) -> tuple[str, ...]:
    """The keys of a schema dataclass, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(cls))


def refuse_unknown(prefix: str, keys: Iterable, valid: Iterable[str]) -> None:
    """ConfigError on the first key not in `valid`: `prefix.key: unknown key; valid: ...`, or,
    for a key that moved (`MOVED`), where it went."""
    valid = tuple(valid)
    for key in keys:
        if key not in valid:
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if dotted in MOVED:
                raise ConfigError(f"{dotted}: moved; use {MOVED[dotted]}")
            raise ConfigError(f"{dotted}: unknown key; valid: {', '.join(valid)}")


def _default(f: dataclasses.Field):
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _plain(value):
    """A config value as plain Python (lists and dicts, interpolations resolved)."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def build(cls: type[T], node, prefix: str) -> T:
    """`cls` from the config node at `prefix` (None: every default). Values are taken as they
    are: the group's own `check` judges them, with its one-line messages."""
    names = key_names(cls)
    if node is None:
        node = {}
    if not isinstance(node, Mapping | DictConfig):
        raise ConfigError(f"{prefix}={node!r}: must be a group of keys ({', '.join(names)})")
    present = set(node.keys())  # `in node` would skip keys whose value is ??? (missing)
    refuse_unknown(prefix, present, names)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in present:
            continue
        value = node[f.name]
        default = _default(f)
        if dataclasses.is_dataclass(default):
            values[f.name] = build(type(default), value, f"{prefix}.{f.name}")
        else:
            values[f.name] = _plain(value)
    return cls(**values)


def _as_config_value(value):
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return list(value) if isinstance(value, tuple) else value


def fill(node: DictConfig, obj) -> None:
    """Write the values of `obj`'s keys that `node` lacks into `node` (nested groups too)."""
    present = set(node.keys())
    with open_dict(node):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.name not in present:
                node[f.name] = _as_config_value(value)
            elif dataclasses.is_dataclass(value) and isinstance(node[f.name], DictConfig):
                fill(node[f.name], value)
