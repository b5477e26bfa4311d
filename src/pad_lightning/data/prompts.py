"""Prompt datasets for real runs: local JSONL / Parquet / CSV files and Hugging Face datasets.

A prompt is a plain string (one user turn) or a chat message list ending with a user turn;
trailing assistant turns of a stored conversation are dropped, so a full chat works as its own
prompt. Every source is read with `datasets`, checked row by row (errors name the file and the
line or row), filtered (empty, exact duplicates after whitespace normalisation, too many
characters, too many student tokens) and split: val/test come from their own file or split when
configured, otherwise they are held out of the training prompts by a salted hash of the prompt,
so the split is deterministic and does not depend on the order of the file. Sets are ordered by
that hash too, and size caps keep the prompts with the smallest hashes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pad_lightning.lm.chat import prompt_text
from pad_lightning.runtime.errors import DataError, first_line

FILE_FORMATS = {"jsonl": "json", "parquet": "parquet", "csv": "csv"}  # data.name -> builder
HUB = "ultrafeedback"
NAMES = ("csv", "jsonl", "parquet", "toy", HUB)
ROLES = ("test", "val", "train")  # build order: test wins over val, val over train
HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
TOKEN_CHUNK = 1024  # prompts tokenised per call of the tokenizer

Prompt = str | list[dict[str, str]]


@dataclass
class PromptRecord:
    """One prompt of a split. `reference` is None: metrics that need a reference are skipped."""

    prompt: Prompt
    id: str | None = None
    reference: str | None = None
    where: str | None = field(default=None, compare=False, repr=False)  # file and line or row


@dataclass
class SourceReport:
    """What happened to the rows of one source (a file, or a split of a dataset)."""

    label: str
    rows: int = 0
    assistant_turns_dropped: int = 0  # prompts whose trailing assistant turn(s) were removed
    dropped: dict[str, int] = field(default_factory=dict)  # filter -> prompts it removed
    kept: int = 0

    def line(self) -> str:
        drops = ", ".join(f"{n} {name}" for name, n in self.dropped.items() if n) or "none"
        turns = (
            f"; trailing assistant turns removed from {self.assistant_turns_dropped}"
            if self.assistant_turns_dropped
            else ""
        )
        return f"{self.label}: {self.rows} rows, dropped {drops}, kept {self.kept}{turns}"


@dataclass
class PromptSplits:
    """Train pool, validation and test prompts, with per-source filter counts."""

    train: list[PromptRecord]
    val: list[PromptRecord]
    test: list[PromptRecord]
    reports: dict[str, SourceReport]  # role -> report of its own source (held-out roles: none)
    held_out: list[str]  # roles held out of the training source by hash

    def summary(self) -> list[str]:
        """Log lines: one per source, then the split sizes."""
        lines = [
            f"data {role}: {self.reports[role].line()}"
            for role in ROLES[::-1]
            if role in self.reports
        ]
        held = (
            f" ({' and '.join(self.held_out)} held out of train by hash)" if self.held_out else ""
        )
        lines.append(
            f"data split: {len(self.train)} train / {len(self.val)} val / "
            f"{len(self.test)} test{held}"
        )
        return lines


@dataclass(frozen=True)
class Source:
    """Where the prompts of one role come from; `key` is the config key that names it."""

    key: str
    fmt: str  # jsonl | parquet | csv | hub (a hub id or a local dataset folder)
    path: str
    split: str | None = None

    @property
    def label(self) -> str:
        return self.path if self.split is None else f"{self.path}[{self.split}]"


# ---------------------------------------------------------------------------------------------
# config checks


def _own_source_key(name: str, role: str) -> str:
    """The key that gives `role` (val / test) its own source instead of a hash hold-out."""
    return f"data.{role}_split" if name == HUB else f"data.{role}_path"


def _is_size(value: Any, allow_null: bool) -> bool:
    if value is None:
        return allow_null
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _looks_like_hub_id(path: str) -> bool:
    """`owner/name` or `name` that is not a local path (what `datasets` sends to the Hub)."""
    return not Path(path).expanduser().exists() and bool(HUB_ID.match(path))


def sources(cfg) -> dict[str, Source | None]:
    """The source of each role (None: held out of the training source) for a data config."""
    name = cfg.get("name")
    if name in FILE_FORMATS:
        out: dict[str, Source | None] = {"train": Source("data.path", name, str(cfg.path))}
        for role in ("val", "test"):
            path = cfg.get(f"{role}_path")
            out[role] = None if path is None else Source(f"data.{role}_path", name, str(path))
        return out
    out = {}
    for role in ROLES:
        split = cfg.get(f"{role}_split")
        out[role] = None if split is None else Source(f"data.{role}_split", "hub", cfg.path, split)
    return out


def check_data(cfg) -> None:
    """Cheap start-up checks of the `data` config node (name, keys, files exist); DataError."""
    name = cfg.get("name")
    if name not in NAMES:
        raise DataError(f"data.name={name!r}: valid: {', '.join(NAMES)}")
    if name == "toy":
        from pad_lightning.data.tasks import TASKS

        tasks = list(cfg.get("tasks") or [])
        if not tasks or any(t not in TASKS for t in tasks):
            raise DataError(f"data.tasks={tasks}: valid tasks: {sorted(TASKS)}")
        return
    batch = cfg.get("eval_batch_size")
    if not _is_size(batch, allow_null=False):
        raise DataError(f"data.eval_batch_size={batch!r}: must be an integer >= 1")
    for key in ("train_size", "max_prompt_chars", "max_prompt_tokens"):
        if not _is_size(cfg.get(key), allow_null=True):
            raise DataError(f"data.{key}={cfg.get(key)!r}: must be null or an integer >= 1")
    column = cfg.get("prompt_column")
    if not isinstance(column, str) or not column:
        raise DataError(f"data.prompt_column={column!r}: must be a column name")
    id_column = cfg.get("id_column")
    if id_column is not None and (not isinstance(id_column, str) or not id_column):
        raise DataError(f"data.id_column={id_column!r}: must be null or a column name")
    seed = cfg.get("split_seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise DataError(f"data.split_seed={seed!r}: must be an integer")
    if not isinstance(cfg.get("dedup"), bool):
        raise DataError(f"data.dedup={cfg.get('dedup')!r}: must be true or false")
    path = cfg.get("path")
    if not isinstance(path, str) or not path:
        where = "a hub id or a local dataset folder" if name == HUB else f"a .{name} file"
        raise DataError(f"data.path={path!r}: required for data={name}: set data.path=<{where}>")
    if name == HUB and not isinstance(cfg.get("train_split"), str):
        raise DataError(f"data.train_split={cfg.get('train_split')!r}: must be a split name")
    srcs = sources(cfg)
    for role in ("val", "test"):
        size = cfg.get(f"{role}_size")
        if not _is_size(size, allow_null=srcs[role] is not None):
            raise DataError(
                f"data.{role}_size={size!r}: must be an integer >= 1 "
                f"(null, i.e. all, only with {_own_source_key(name, role)})"
            )
    if name == HUB:
        _hub_splits(cfg.path, cfg.get("cache_dir"), [s for s in srcs.values() if s])
    else:
        for src in srcs.values():
            if src is not None and not Path(src.path).expanduser().is_file():
                raise DataError(_not_a_file(src))


# ---------------------------------------------------------------------------------------------
# reading


def _not_a_file(src: Source) -> str:
    """Why the prompt file of `src` cannot be read: missing, or a folder."""
    if Path(src.path).expanduser().is_dir():
        return (
            f"{src.key}={src.path!r}: is a folder; data={src.fmt} reads one .{src.fmt} file "
            "(data=ultrafeedback reads a dataset folder)"
        )
    return f"{src.key}={src.path!r}: no such file"


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _root_reason(err: BaseException) -> str:
    """First line of the innermost cause (`datasets` wraps reader errors in a generic one)."""
    while (inner := err.__cause__ or err.__context__) is not None:
        err = inner
    return first_line(err)


def _offline() -> bool:
    from datasets import config

    return bool(config.HF_HUB_OFFLINE)


def _hub_builder(path: str, cache_dir: str | None):
    """`load_dataset_builder` for a hub id or local folder, its failures as one-line DataErrors."""
    from datasets import load_dataset_builder
    from datasets.exceptions import DatasetNotFoundError

    local = Path(path).expanduser()
    if not local.exists() and not HUB_ID.match(path):
        raise DataError(f"data.path={path!r}: no such local folder (and not a hub id owner/name)")
    if local.is_file():
        raise DataError(
            f"data.path={path!r}: a file; data=ultrafeedback reads a hub id or a dataset folder "
            "(use data=jsonl, data=parquet or data=csv for a single file)"
        )
    try:
        return load_dataset_builder(str(local) if local.exists() else path, cache_dir=cache_dir)
    except (ConnectionError, DatasetNotFoundError, FileNotFoundError) as err:
        raise _hub_error(path, err) from err


def _hub_error(path: str, err: Exception) -> DataError:
    """One line for a hub id that could not be resolved: not cached offline, or not found."""
    if isinstance(err, ConnectionError):
        mode = "HF_DATASETS_OFFLINE=1" if _offline() else "the Hub cannot be reached"
        return DataError(
            f"data.path={path!r}: not in the local datasets cache and {mode}; download it once "
            "with network (HF_DATASETS_OFFLINE=0 python -m pad_lightning.run data=ultrafeedback) "
            "or set data.path to a local dataset folder"
        )
    if Path(path).expanduser().is_dir():
        return DataError(
            f"data.path={path!r}: no data files in this folder (expected e.g. "
            "data/<split>-00000-of-00001.parquet or <split>.jsonl)"
        )
    return DataError(f"data.path={path!r}: no such dataset on the Hub (nor a local folder)")


def _hub_splits(path: str, cache_dir: str | None, srcs: list[Source]) -> None:
    """Check that the splits of `srcs` exist (cheap: no data is read); DataError otherwise.

    Only done for local folders and in offline mode (a cache lookup); online, the Hub is
    asked when the data is loaded.
    """
    if _looks_like_hub_id(path) and not _offline():
        return
    builder = _hub_builder(path, cache_dir)
    known = sorted(map(str, builder.info.splits or builder.config.data_files or []))
    for src in srcs:
        if known and src.split not in known:
            raise DataError(f"{src.key}={src.split!r}: not a split of {path}; splits: {known}")


def _scan_jsonl(path: str, column: str, id_column: str | None) -> list[int]:
    """Line numbers of the records of a JSONL file, after checking every line by hand.

    `datasets` reports a malformed line or a column of mixed types with no line number.
    """
    lines: list[int] = []
    keys: set[str] = set()
    first_kind: tuple[str, int] | None = None
    with open(Path(path).expanduser(), "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{path} line {number}: not UTF-8 text ({err.reason} at byte {err.start + 1})"
                ) from err
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{path} line {number}: malformed JSON ({err.msg}, column {err.colno}); "
                    "each line must be one JSON object"
                ) from err
            if not isinstance(record, dict):
                raise DataError(
                    f"{path} line {number}: a JSON {type(record).__name__}, "
                    "not an object; each line must be one JSON object"
                )
            keys.update(record)
            lines.append(number)
            if column not in record:
                continue
            value = record[column]
            _normalise(value, column, f"{path} line {number}")  # raw values: exact errors
            kind = "string" if isinstance(value, str) else "list"
            if first_kind is None:
                first_kind = (kind, number)
            elif kind != first_kind[0]:
                raise DataError(
                    f"{path} line {number}: {column!r} is a {kind} but line {first_kind[1]} "
                    f"holds a {first_kind[0]}; use one kind of prompt per file"
                )
    if not lines:
        raise DataError(f"{path}: no prompts (the file has no JSON lines)")
    for key, name in ((column, "data.prompt_column"), (id_column, "data.id_column")):
        if key is not None and key not in keys:
            raise DataError(_missing_column(path, key, name, sorted(keys)))
    return lines


def _missing_column(label: str, column: str, key: str, columns: list[str]) -> str:
    return f"{label}: no column {column!r} ({key}); columns: {', '.join(columns)}"


def _not_a_prompt(where: str, column: str, value: Any) -> str:
    return (
        f"{where}: {column!r} is {_short(value)} ({type(value).__name__}), neither a string "
        "nor a list of {role, content} messages"
    )


def _load(src: Source, cfg) -> tuple[Any, Callable[[int], str]]:
    """The dataset of a source and a function naming row i (file and line or row) for errors."""
    from datasets import load_dataset
    from datasets.exceptions import DatasetNotFoundError

    column, id_column, cache_dir = cfg.prompt_column, cfg.get("id_column"), cfg.get("cache_dir")
    if src.fmt == "hub":
        _hub_splits(src.path, cache_dir, [src])
        local = Path(src.path).expanduser()
        target, kwargs = (str(local) if local.exists() else src.path), {"split": src.split}

        def locate(i: int) -> str:
            return f"{src.label} row {i + 1}"
    else:
        if not Path(src.path).expanduser().is_file():
            raise DataError(_not_a_file(src))
        target = FILE_FORMATS[src.fmt]
        files = str(Path(src.path).expanduser())
        kwargs = {"data_files": files, "split": "train"}
        if src.fmt == "jsonl":
            lines = _scan_jsonl(src.path, column, id_column)
            kwargs["parse_agent_traces"] = False

            def locate(i: int) -> str:
                return f"{src.path} line {lines[i]}"
        else:
            if src.fmt == "csv":
                kwargs["keep_default_na"] = False  # "NA", "None" and empty cells stay text

            def locate(i: int) -> str:
                return f"{src.path} row {i + 1}"

    try:
        dataset = load_dataset(target, cache_dir=cache_dir, **kwargs)
    except (ConnectionError, DatasetNotFoundError) as err:
        raise _hub_error(src.path, err) from err
    except Exception as err:  # any reader failure becomes one line naming the file
        kind = "a dataset" if src.fmt == "hub" else src.fmt
        raise DataError(f"{src.label}: cannot be read as {kind} ({_root_reason(err)})") from err
    for key, name in ((column, "data.prompt_column"), (id_column, "data.id_column")):
        if key is not None and key not in dataset.column_names:
            raise DataError(_missing_column(src.label, key, name, dataset.column_names))
    return dataset, locate


def _normalise(value: Any, column: str, where: str) -> tuple[Prompt, bool]:
    """The prompt of a row (message lists reduced to role/content) and whether a trailing
    assistant turn was removed."""
    if isinstance(value, str):
        return value, False
    if not isinstance(value, list) or not value:
        raise DataError(_not_a_prompt(where, column, value))
    messages = []
    for j, message in enumerate(value, 1):
        if not (
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise DataError(
                f"{where}: message {j} of {column!r} is {_short(message)}, not a "
                "{role, content} dict of strings"
            )
        messages.append({"role": message["role"], "content": message["content"]})
    stripped = False
    while messages and messages[-1]["role"] == "assistant":
        messages.pop()
        stripped = True
    if not messages or messages[-1]["role"] != "user":
        last = messages[-1]["role"] if messages else "none (only assistant turns)"
        raise DataError(
            f"{where}: the messages of {column!r} must end with a user turn once trailing "
            f"assistant turns are dropped; last role: {last}"
        )
    return messages, stripped


# ---------------------------------------------------------------------------------------------
# filters and split


def _contents(prompt: Prompt) -> list[str]:
    return [prompt] if isinstance(prompt, str) else [m["content"] for m in prompt]


def prompt_key(prompt: Prompt) -> str:
    """Dedup key: roles and whitespace-normalised contents (a string is one user turn)."""
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return json.dumps([[m["role"], " ".join(m["content"].split())] for m in turns])


def _hash(key: str, seed: int) -> bytes:
    return hashlib.sha256(f"{seed}\0{key}".encode()).digest()[:8]


def _token_lengths(tokenizer, prompts: list[Prompt]) -> list[int]:
    out: list[int] = []
    for start in range(0, len(prompts), TOKEN_CHUNK):
        texts = [prompt_text(tokenizer, p) for p in prompts[start : start + TOKEN_CHUNK]]
        out.extend(map(len, tokenizer(texts, add_special_tokens=False)["input_ids"]))
    return out


def first_too_long(prompts: list, tokenizer, limit: int) -> tuple[int, int] | None:
    """(index, tokens) of the first prompt whose chat-rendered tokenisation is longer than
    `limit` tokens, or None. Only renderings of more than `limit` bytes are tokenised: no
    tokenizer makes more tokens than the text has bytes (a margin covers a prefix token)."""
    texts = [prompt_text(tokenizer, p) for p in prompts]
    long = [i for i, text in enumerate(texts) if len(text.encode()) + 16 > limit]
    for start in range(0, len(long), TOKEN_CHUNK):
        chunk = long[start : start + TOKEN_CHUNK]
        ids = tokenizer([texts[i] for i in chunk], add_special_tokens=False)["input_ids"]
        for i, tokens in zip(chunk, ids, strict=True):
            if len(tokens) > limit:
                return i, len(tokens)
    return None


def check_prompt_lengths(
    splits: dict[str, list], tokenizer, role: str, positions: int, max_new_tokens: int
) -> None:
    """Refuse (one DataError naming the file and line or row) a prompt that, with a response of
    `max_new_tokens`, does not fit `positions` (the `role` model's max_position_embeddings):
    generating or scoring it would run past the positions the model was trained for, or out of
    memory. `splits` maps a split name to its prompts (records or toy problems)."""
    limit = positions - max_new_tokens
    if limit < 1:
        raise DataError(
            f"rollout.max_new_tokens={max_new_tokens}: leaves no room for a prompt in the "
            f"{role}'s {positions} positions (max_position_embeddings of model.{role}); "
            f"use at most {positions - 1}"
        )
    for split, problems in splits.items():
        found = first_too_long([p.prompt for p in problems], tokenizer, limit)
        if found is None:
            continue
        i, tokens = found
        where = getattr(problems[i], "where", None) or f"{split} prompt {i + 1}"
        raise DataError(
            f"{where}: the prompt is {tokens} tokens in the {role}'s chat template; with "
            f"rollout.max_new_tokens={max_new_tokens} it does not fit the {role}'s {positions} "
            f"positions (max_position_embeddings of model.{role}); drop prompts longer than "
            f"{limit} tokens with data.max_prompt_tokens={limit} (student tokens), or shorten it"
        )


def _read(src: Source, cfg, tokenizer) -> tuple[list[tuple[str, PromptRecord]], SourceReport]:
    """Filtered (key, record) pairs of one source, and its report."""
    dataset, locate = _load(src, cfg)
    column, id_column = cfg.prompt_column, cfg.get("id_column")
    values = dataset[column]
    ids = dataset[id_column] if id_column else [None] * len(values)
    report = SourceReport(src.label, rows=len(values))
    if not values:
        raise DataError(f"{src.label} ({src.key}): no prompts (no rows)")
    items: list[tuple[str, PromptRecord]] = []
    for i, (value, ident) in enumerate(zip(values, ids, strict=True)):
        prompt, stripped = _normalise(value, column, locate(i))
        report.assistant_turns_dropped += stripped
        record = PromptRecord(prompt, None if ident is None else str(ident), where=locate(i))
        items.append((prompt_key(prompt), record))

    def apply(name: str, keep: Callable[[list], list[bool]], detail: str) -> None:
        nonlocal items
        before = len(items)
        items = [item for item, ok in zip(items, keep(items), strict=True) if ok]
        report.dropped[name] = before - len(items)
        if before and not items:
            raise DataError(
                f"{src.label} ({src.key}): no prompts left after the {detail} filter "
                f"(it dropped all {before})"
            )

    apply(
        "empty", lambda its: ["".join(_contents(r.prompt)).strip() != "" for _, r in its], "empty"
    )
    if cfg.dedup:
        seen: set[str] = set()

        def first(its: list) -> list[bool]:
            out = []
            for key, _ in its:
                out.append(key not in seen)
                seen.add(key)
            return out

        apply("duplicate", first, "data.dedup")
    chars = cfg.get("max_prompt_chars")
    if chars is not None:
        apply(
            "max_prompt_chars",
            lambda its: [sum(map(len, _contents(r.prompt))) <= chars for _, r in its],
            f"data.max_prompt_chars={chars}",
        )
    tokens = cfg.get("max_prompt_tokens")
    if tokens is not None:
        if tokenizer is None:
            raise DataError(
                f"data.max_prompt_tokens={tokens}: needs the student tokenizer "
                "(build_problems(cfg, tokenizer=...)); or set data.max_prompt_tokens=null"
            )
        apply(
            "max_prompt_tokens",
            lambda its: [
                n <= tokens for n in _token_lengths(tokenizer, [r.prompt for _, r in its])
            ],
            f"data.max_prompt_tokens={tokens}",
        )
    return items, report


def load_prompts(cfg, tokenizer=None) -> PromptSplits:
    """Train / val / test prompts of a `data` config node (any name but toy)."""
    check_data(cfg)
    if cfg.name == "toy":
        raise DataError("data.name='toy': the toy world is built by pad_lightning.data")
    seed = int(cfg.split_seed)
    srcs = sources(cfg)
    read: dict[str, list[tuple[str, PromptRecord]]] = {}
    reports: dict[str, SourceReport] = {}
    for role in ROLES[::-1]:  # train first: its errors are the likeliest and the most useful
        src = srcs[role]
        if src is not None:
            read[role], reports[role] = _read(src, cfg, tokenizer)

    taken: set[str] = set()
    sets: dict[str, list[tuple[str, PromptRecord]]] = {}
    for role in ROLES:  # test, val, train: a prompt already taken is an overlap
        if role not in read:
            continue
        before = len(read[role])
        items = sorted(
            (item for item in read[role] if item[0] not in taken),
            key=lambda it: (_hash(it[0], seed), it[0]),
        )
        reports[role].dropped["overlap"] = before - len(items)
        if not items:
            others = " and ".join(srcs[r].key for r in ROLES if r in read and r != role)
            raise DataError(
                f"{srcs[role].label} ({srcs[role].key}): no prompts left after removing those "
                f"also in {others}"
            )
        taken.update(key for key, _ in items)
        sets[role] = items

    held_out = [role for role in ("test", "val") if srcs[role] is None]
    pool = sets["train"]
    need = sum(int(cfg[f"{role}_size"]) for role in held_out)
    if len(pool) <= need:
        sizes = " + ".join(f"data.{role}_size" for role in held_out)
        alternatives = " / ".join(_own_source_key(cfg.name, role) for role in held_out)
        raise DataError(
            f"{srcs['train'].label} ({srcs['train'].key}): {len(pool)} prompts after filters, "
            f"not more than {sizes} = {need} (no training prompt left); lower them or set "
            f"{alternatives}"
        )
    for role in held_out:  # smallest hashes first: test, then val
        size = int(cfg[f"{role}_size"])
        sets[role], pool = pool[:size], pool[size:]
    held_keys = {key for role in held_out for key, _ in sets[role]}
    sets["train"] = [item for item in pool if item[0] not in held_keys]  # dedup=false copies
    reports["train"].dropped["overlap"] += len(pool) - len(sets["train"])
    for role in ("val", "test"):
        size = cfg.get(f"{role}_size")
        if size is not None:
            sets[role] = sets[role][: int(size)]
    if cfg.get("train_size") is not None:
        sets["train"] = sets["train"][: int(cfg.train_size)]
    for role in ROLES:
        if srcs[role] is not None:
            reports[role].kept = len(sets[role])
    records = {role: [record for _, record in sets[role]] for role in ROLES}
    return PromptSplits(records["train"], records["val"], records["test"], reports, held_out)


__all__ = [
    "DataError",
    "PromptRecord",
    "PromptSplits",
    "SourceReport",
    "check_data",
    "load_prompts",
    "prompt_key",
    "sources",
]
