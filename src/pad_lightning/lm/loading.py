"""Loading student and teacher (toy zoo entry, local HF folder or hub id), LoRA, saving the student.

Start-up order: every role's options are checked, its source resolved, its config and tokenizer
loaded and its chat template rendered once, for both roles, before any weights load, so a bad
teacher is refused before minutes of student loading. Every user error is a one-line
`ConfigError` naming the key.

Corrupt files: the JSON files transformers reads must parse as JSON objects, templates as UTF-8
and the weights files' headers must parse (safetensors headers; torch zip directories), checked
for both roles at start-up (a few KB read per weights file); a file that fails is named in a
`ConfigError` ("<file> is corrupt or truncated (...)"). A tokenizer that fails to load is traced
to its tokenizer.json where that file is the cause.

Safety: weights load from safetensors, or from `.bin` files through torch's `weights_only`
unpickler, which accepts tensors and refuses anything that would run code; custom modelling code
shipped with a model runs only with `trust_remote_code: true` (passed as False otherwise, so
transformers never asks interactively).
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import huggingface_hub
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError, safe_open
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from pad_lightning.engines.teacher_service import (
    BACKENDS,
    ServerOptions,
    check_reachable,
    server_options,
)
from pad_lightning.engines.vllm_server import vllm_python
from pad_lightning.lm.adapters import is_lora
from pad_lightning.lm.chat import ChatTemplateError, check_end_marker, prompt_text, response_suffix
from pad_lightning.runtime.errors import ConfigError, described, first_line

ROLES = ("student", "teacher")
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "auto": "auto",
}
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
LORA_SAVE = ("merged", "adapter")
ROLE_KEYS = (
    "path",
    "zoo",
    "dtype",
    "attn_implementation",
    "gradient_checkpointing",
    "chat_template",
    "trust_remote_code",
    "lora",
    "backend",
    "server",
)
LORA_KEYS = ("r", "alpha", "dropout", "target_modules", "save")
LORA_INSTALL = "pip install 'pad-lightning[lora]'"
# Files transformers reads from a model folder; each, where present, must be a JSON object.
JSON_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer_config.json",
    "tokenizer.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "adapter_config.json",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
TEXT_FILES = ("chat_template.jinja", "merges.txt")  # must decode as UTF-8
# A folder holds a tokenizer if it has one of these (fast tokenizer, sentencepiece, BPE, WordPiece).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")
# The first bytes of a torch.save file in the legacy (pre-zip) format: the pickled magic number.
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


@dataclass
class LoraOptions:
    """LoRA on the student (peft); `r` = 0 trains every weight instead."""

    r: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    save: str = "merged"  # merged: a plain HF folder; adapter: the peft adapter folder


@dataclass
class RoleOptions:
    """The checked options of `model.<role>`."""

    role: str
    path: str | None = None
    zoo: str | None = None
    dtype: str = "float32"
    attn_implementation: str | None = None
    gradient_checkpointing: bool = False
    chat_template: str | None = None
    trust_remote_code: bool = False
    lora: LoraOptions = field(default_factory=LoraOptions)
    backend: str = "local"  # teacher: local | server (engines.teacher_service)
    server: ServerOptions | None = None  # backend=server: model.teacher.server

    def key(self, name: str) -> str:
        return f"model.{self.role}.{name}"


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _as_dict(node: Mapping | None) -> dict:
    """A plain dict of a config node (OmegaConf DictConfig or dict); {} for a missing node."""
    return {} if node is None else dict(node)


def _check_keys(prefix: str, raw: dict, valid: tuple[str, ...]) -> None:
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}: unknown key; valid: {', '.join(valid)}")


def role_options(role: str, role_cfg) -> RoleOptions:
    """Check a `model.<role>` config node and return its options (ConfigError on bad values)."""
    if isinstance(role_cfg, DictConfig):
        for name in role_cfg:
            _require(
                not OmegaConf.is_missing(role_cfg, name),
                f"model.{role}.{name}: missing; set model.{role}.{name}=<hub id or local folder>",
            )
    raw = _as_dict(role_cfg)
    _check_keys(f"model.{role}", raw, ROLE_KEYS)
    opts = RoleOptions(role)
    opts.path = str(raw["path"]) if raw.get("path") else None
    opts.zoo = raw.get("zoo")
    _require(
        opts.path is not None or opts.zoo in ("student", "teacher"),
        f"model.{role}.zoo={opts.zoo!r}: valid: student, teacher (or set model.{role}.path)",
    )
    opts.dtype = raw.get("dtype") or "float32"
    _require(
        opts.dtype in DTYPES,
        f"{opts.key('dtype')}={opts.dtype!r}: valid: {', '.join(DTYPES)}",
    )
    opts.attn_implementation = raw.get("attn_implementation")
    _require(
        opts.attn_implementation is None or opts.attn_implementation in ATTN_IMPLEMENTATIONS,
        f"{opts.key('attn_implementation')}={opts.attn_implementation!r}: valid: null "
        f"(transformers' default), {', '.join(ATTN_IMPLEMENTATIONS)}",
    )
    for flag in ("gradient_checkpointing", "trust_remote_code"):
        value = raw.get(flag, False)
        _require(isinstance(value, bool), f"{opts.key(flag)}={value!r}: valid: true, false")
        setattr(opts, flag, value)
    _require(
        role == "student" or not opts.gradient_checkpointing,
        f"{opts.key('gradient_checkpointing')}=true: the teacher is frozen and never "
        "backpropagated; set it on model.student only",
    )
    template = raw.get("chat_template")
    _require(
        template is None or isinstance(template, str),
        f"{opts.key('chat_template')}: must be a Jinja template string or a .jinja file path",
    )
    opts.chat_template = template or None
    opts.lora = _lora_options(opts, _as_dict(raw.get("lora")))
    opts.backend = raw.get("backend") or "local"
    _require(
        opts.backend in BACKENDS,
        f"{opts.key('backend')}={opts.backend!r}: valid: {', '.join(BACKENDS)}",
    )
    _require(
        role == "teacher" or opts.backend == "local",
        f"{opts.key('backend')}={opts.backend}: only the teacher is served; the student samples "
        "on a server with rollout.sampler=vllm",
    )
    if opts.backend == "server":
        server = raw.get("server")
        opts.server = server_options(
            _as_dict(OmegaConf.to_container(server) if isinstance(server, DictConfig) else server)
        )
    return opts


def _lora_options(opts: RoleOptions, raw: dict) -> LoraOptions:
    _check_keys(opts.key("lora"), raw, LORA_KEYS)
    lora = LoraOptions()
    r = raw.get("r", 0)
    _require(
        isinstance(r, int) and not isinstance(r, bool) and r >= 0,
        f"{opts.key('lora.r')}={r!r}: must be an integer >= 0 (0 = LoRA off)",
    )
    lora.r = r
    _require(
        r == 0 or opts.role == "student",
        f"{opts.key('lora.r')}={r}: the teacher is frozen; LoRA applies to model.student only",
    )
    alpha = raw.get("alpha", lora.alpha)
    _require(
        isinstance(alpha, int | float) and alpha > 0,
        f"{opts.key('lora.alpha')}={alpha!r}: must be > 0",
    )
    lora.alpha = float(alpha)
    dropout = raw.get("dropout", lora.dropout)
    _require(
        isinstance(dropout, int | float) and 0 <= dropout < 1,
        f"{opts.key('lora.dropout')}={dropout!r}: must be in [0, 1)",
    )
    lora.dropout = float(dropout)
    targets = raw.get("target_modules", lora.target_modules)
    if not isinstance(targets, str):
        targets = list(targets or [])
    _require(
        bool(targets) and all(isinstance(t, str) and t for t in targets),
        f"{opts.key('lora.target_modules')}={targets!r}: 'all-linear' or a list of module names",
    )
    lora.target_modules = targets
    lora.save = raw.get("save", lora.save)
    _require(
        lora.save in LORA_SAVE,
        f"{opts.key('lora.save')}={lora.save!r}: valid: {', '.join(LORA_SAVE)}",
    )
    if r > 0:
        try:
            import peft  # noqa: F401
        except ImportError:
            raise ConfigError(
                f"{opts.key('lora.r')}={r}: LoRA needs peft, which is not installed; "
                f"run: {LORA_INSTALL}"
            ) from None
    return lora


def _looks_local(path: str) -> bool:
    return (
        path.startswith((".", "/", "~")) or path.count("/") > 1 or os.sep != "/" and os.sep in path
    )


def resolve_source(opts: RoleOptions, zoo_root: Path | None = None) -> str:
    """Where a role's files are: a local folder, a cached (or, online, downloadable) hub id, or
    the zoo entry `zoo_root / opts.zoo`."""
    if opts.path is None:
        _require(zoo_root is not None, f"model.{opts.role}.zoo is set but model.zoo is missing")
        return str(zoo_root / opts.zoo)
    key = f"{opts.key('path')}={opts.path!r}"
    local = Path(os.path.expanduser(opts.path))
    if local.is_dir():
        return str(local)
    _require(not local.exists(), f"{key}: is a file; expected a model folder or a hub id")
    try:
        if _looks_local(opts.path):
            raise ValueError
        huggingface_hub.utils.validate_repo_id(opts.path)
    except ValueError:
        raise ConfigError(f"{key}: no such folder, and not a hub id like 'org/name'") from None
    cached = huggingface_hub.try_to_load_from_cache(opts.path, "config.json")
    _require(
        isinstance(cached, str) or not huggingface_hub.constants.HF_HUB_OFFLINE,
        f"{key}: not a local folder and not in the Hugging Face cache, and HF_HUB_OFFLINE=1; "
        "run with HF_HUB_OFFLINE=0 to download it, or pass a local folder",
    )
    return opts.path


def _source_key(opts: RoleOptions, source: str) -> str:
    return f"{opts.key('path')}={opts.path or source!r}"


def local_folder(source: str) -> Path | None:
    """The folder a source's files are read from: the local folder, or a cached hub id's
    snapshot; None for a hub id that is not cached (transformers downloads it)."""
    folder = Path(os.path.expanduser(source))
    if folder.is_dir():
        return folder
    try:
        cached = huggingface_hub.try_to_load_from_cache(source, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def _remedy(opts: RoleOptions, folder: Path | None) -> str:
    if opts.path is None and folder is not None:  # a toy zoo entry
        return f"delete the zoo entry {folder.parent} to rebuild it"
    return "re-save or re-download the model"


def _corrupt(opts: RoleOptions, source: str, file: Path, reason: str) -> ConfigError:
    return ConfigError(
        f"{_source_key(opts, source)}: {file} is corrupt or truncated ({reason}); "
        f"{_remedy(opts, file.parent)}"
    )


def _safetensors_problem(path: Path) -> str | None:
    try:
        with safe_open(str(path), "pt") as weights:
            weights.keys()
    except (SafetensorError, OSError) as err:
        return described(err)
    return None


def _torch_problem(path: Path) -> str | None:
    """Why a torch.save file cannot be a checkpoint (zip directory or legacy header), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(LEGACY_TORCH_MAGIC))
        if head.startswith(b"PK"):
            zipfile.ZipFile(path).close()
            return None
    except (OSError, zipfile.BadZipFile) as err:
        return described(err)
    return None if head == LEGACY_TORCH_MAGIC else "not a torch checkpoint"


def check_weight_files(opts: RoleOptions, source: str) -> None:
    """Refuse weights files whose headers do not parse (truncated, garbled) or that an index
    lists but are missing: one ConfigError naming the file. Only headers are read; the
    safetensors files (sharded or not) are checked, or the .bin files when there are none."""
    folder = local_folder(source)
    if folder is None:
        return
    formats = (
        ("model.safetensors.index.json", "model.safetensors", _safetensors_problem),
        ("pytorch_model.bin.index.json", "pytorch_model.bin", _torch_problem),
    )
    for index_name, single, problem in formats:
        index, names = folder / index_name, []
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                names = sorted(set(weight_map.values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
                raise _corrupt(opts, source, index, described(err)) from None
        if (folder / single).is_file():
            names.append(single)
        for name in names:
            path = folder / name
            if not path.is_file():
                raise ConfigError(
                    f"{_source_key(opts, source)}: {path} is missing (listed in {index}); "
                    f"{_remedy(opts, folder)}"
                )
            reason = problem(path)
            if reason:
                raise _corrupt(opts, source, path, reason)
        if names:  # transformers loads safetensors where there are any, else .bin
            break
    adapter = folder / "adapter_model.safetensors"
    if adapter.is_file() and (reason := _safetensors_problem(adapter)):
        raise _corrupt(opts, source, adapter, reason)


def check_model_files(opts: RoleOptions, source: str) -> None:
    """Refuse a local (or cached) model folder with a corrupt file: JSON files that do not parse
    as objects, templates that are not UTF-8, weights whose headers do not parse (see
    `check_weight_files`); one ConfigError naming the file instead of a parser's traceback."""
    folder = local_folder(source)
    if folder is None:
        return
    for name in JSON_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:  # JSONDecodeError, UnicodeDecodeError
            raise _corrupt(opts, source, path, described(err)) from None
        if not isinstance(data, dict):
            raise _corrupt(opts, source, path, f"a JSON {type(data).__name__}, not an object")
    for name in TEXT_FILES:
        path = folder / name
        try:
            if path.is_file():
                path.read_text(encoding="utf-8")
        except (OSError, ValueError) as err:
            raise _corrupt(opts, source, path, described(err)) from None
    check_weight_files(opts, source)


def _tokenizer_error(opts: RoleOptions, source: str, err: BaseException) -> ConfigError:
    """A tokenizer that failed to load: blame tokenizer.json if the tokenizers library refuses it,
    else report the error against the folder's tokenizer files."""
    folder = local_folder(source)
    file = folder / "tokenizer.json" if folder is not None else None
    if file is not None and file.is_file():
        try:
            Tokenizer.from_file(str(file))
        except Exception as tok_err:  # the tokenizers library raises bare Exceptions
            return _corrupt(opts, source, file, described(tok_err))
    return ConfigError(
        f"{_source_key(opts, source)}: its tokenizer fails to load ({described(err)}); "
        f"{_remedy(opts, folder)}"
    )


def _no_tokenizer(opts: RoleOptions, source: str) -> ConfigError | None:
    """The error for a local folder without any tokenizer file, or None."""
    folder = local_folder(source)
    if folder is None or any((folder / name).is_file() for name in TOKENIZER_FILES):
        return None
    return ConfigError(
        f"{_source_key(opts, source)}: no tokenizer files in {folder} (one of "
        f"{', '.join(TOKENIZER_FILES)}); copy them from the model it was trained from, or save "
        "the tokenizer with the model"
    )


def _auto_tokenizer(opts: RoleOptions, source: str) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=opts.trust_remote_code)
    except Exception as err:
        # transformers' own message for a folder without tokenizer files lists three ways to
        # make one over several lines
        if (missing := _no_tokenizer(opts, source)) is not None:
            raise missing from None
        garbled = isinstance(err, KeyError | TypeError | AttributeError | IndexError)
        if garbled or type(err) is Exception:  # the tokenizers library raises bare Exceptions
            raise _tokenizer_error(opts, source, err) from None
        raise
    # Some model types get an empty tokenizer (special tokens only) when the files are missing:
    # it would turn every prompt into no tokens
    if not tokenizer("2+2=", add_special_tokens=False)["input_ids"]:
        raise _no_tokenizer(opts, source) or ConfigError(
            f"{_source_key(opts, source)}: its tokenizer turns text into no tokens (an empty "
            "vocabulary); re-save or re-download the model with its tokenizer"
        )
    return tokenizer


@contextmanager
def _loading(opts: RoleOptions, source: str) -> Iterator[None]:
    """Turn transformers' loading errors into one-line ConfigErrors naming the key to change."""
    key = _source_key(opts, source)
    try:
        yield
    except ConfigError:
        raise
    except SafetensorError as err:  # a file the start-up check did not see (a download)
        raise ConfigError(
            f"{key}: a safetensors weights file is corrupt or truncated ({described(err)}); "
            "re-save or re-download the model"
        ) from None
    except pickle.UnpicklingError:
        raise ConfigError(
            f"{key}: refused its .bin weights: they hold more than tensors, and loading them "
            "would run pickled code (torch weights_only loading); use safetensors weights"
        ) from None
    except (OSError, ValueError, ImportError) as err:
        message = str(err)
        if "trust_remote_code" in message:
            raise ConfigError(
                f"{key}: ships custom model code; set {opts.key('trust_remote_code')}=true to run "
                "it (only for sources you trust)"
            ) from None
        if opts.attn_implementation and (
            "attn_implementation" in message or "FlashAttention" in message
        ):
            raise ConfigError(
                f"{opts.key('attn_implementation')}={opts.attn_implementation!r}: {first_line(err)}"
            ) from None
        raise ConfigError(f"{key}: {first_line(err)}") from None


def template_override(opts: RoleOptions) -> str | None:
    """The `chat_template` override as template text (read from the file if it names one)."""
    value = opts.chat_template
    if value is None:
        return None
    key = f"{opts.key('chat_template')}={value!r}"
    if "{{" in value or "{%" in value:
        return value
    file = Path(os.path.expanduser(value))
    _require(
        file.is_file(),
        f"{key}: neither a Jinja template (no '{{{{' or '{{%') nor an existing .jinja file",
    )
    text = file.read_text()
    _require("{{" in text or "{%" in text, f"{key}: the file holds no Jinja template")
    return text


def check_chat_template(opts: RoleOptions, tokenizer: PreTrainedTokenizerBase, source: str) -> None:
    """Refuse a tokenizer without a chat template, or one that cannot render a user/assistant
    exchange the way scoring needs (see `chat`)."""
    key = opts.key("chat_template")
    _require(
        bool(tokenizer.chat_template),
        f"model.{opts.role}.path={opts.path or source!r}: its tokenizer has no chat template; "
        f"set {key} to a Jinja template string or a .jinja file",
    )
    try:
        prefix = prompt_text(tokenizer, "2+2=")
        response_suffix(tokenizer, "2+2=", "4", prefix)
    except ChatTemplateError:
        raise ConfigError(
            f"{key}: the template of {opts.path or source!r} renders the assistant turn so "
            "that it does not extend the generation prompt; override it"
        ) from None
    except Exception as err:  # jinja2 errors and template-raised exceptions
        raise ConfigError(
            f"{key}: the template of {opts.path or source!r} fails on a user/assistant "
            f"exchange: {first_line(err)}"
        ) from None
    # An empty response must have a scored span: the template's end-of-turn marker (see `chat`).
    try:
        check_end_marker(tokenizer, key)
    except ChatTemplateError as err:
        raise ConfigError(str(err)) from None
    except Exception as err:  # a template that refuses an empty assistant turn
        raise ConfigError(
            f"{key}: the template of {opts.path or source!r} fails on an empty assistant "
            f"turn: {first_line(err)}"
        ) from None


def load_tokenizer(opts: RoleOptions, source: str) -> PreTrainedTokenizerBase:
    """The role's tokenizer with its template checked; also reads the model config, so missing
    files and custom code that is not allowed are refused before any weights load.

    The tokenizer is not changed otherwise: the code pads by hand (left for generation, right for
    scoring, every padded position masked), so a tokenizer without a pad token works as is.
    """
    override = template_override(opts)
    check_model_files(opts, source)
    with _loading(opts, source):
        AutoConfig.from_pretrained(source, trust_remote_code=opts.trust_remote_code)
        tokenizer = _auto_tokenizer(opts, source)
    if override is not None:
        tokenizer.chat_template = override
    check_chat_template(opts, tokenizer, source)
    return tokenizer


def load_model(opts: RoleOptions, source: str) -> torch.nn.Module:
    """The role's causal LM (safetensors, or weights_only `.bin`), with its student options
    (gradient checkpointing, LoRA) applied."""
    kwargs = dict(
        dtype=DTYPES[opts.dtype], trust_remote_code=opts.trust_remote_code, weights_only=True
    )
    if opts.attn_implementation:
        kwargs["attn_implementation"] = opts.attn_implementation
    check_weight_files(opts, source)
    with _loading(opts, source):
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if opts.gradient_checkpointing:
        _require(
            model.supports_gradient_checkpointing,
            f"{opts.key('gradient_checkpointing')}=true: {type(model).__name__} does not "
            "support it",
        )
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable({"use_reentrant": False})
        else:  # transformers < 5
            model.gradient_checkpointing_enable({"use_reentrant": False})
    if opts.lora.r > 0:
        model = apply_lora(model, opts.lora, opts.gradient_checkpointing)
    return model


def apply_lora(
    model: torch.nn.Module, lora: LoraOptions, gradient_checkpointing: bool = False
) -> torch.nn.Module:
    """Wrap `model` in a peft LoRA model: only the adapters stay trainable."""
    from peft import LoraConfig, get_peft_model

    if gradient_checkpointing:
        # Checkpointed blocks must see inputs that require grad, or the frozen embedding output
        # would cut the graph before the first adapter.
        model.enable_input_require_grads()
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
    )
    return get_peft_model(model, config)


def check_model_config(model_cfg) -> tuple[dict[str, RoleOptions], dict[str, str]]:
    """Cheap start-up check of `model`: both roles' options, and the sources of those with a
    `path` (local folder, or hub id cached or downloadable); loads nothing.

    Returns ({role: options}, {role: source} for the roles with a path).
    """
    options = {role: role_options(role, model_cfg.get(role)) for role in ROLES}
    sources = {r: resolve_source(o) for r, o in options.items() if o.path is not None}
    server = options["teacher"].server
    if server is not None and server.launches():  # the vLLM the run would start exists
        vllm_python(server.python, "model.teacher.server.python")
    elif server is not None:  # given servers answer, before any model loads
        check_reachable(server)
    return options, sources


def load_pair(
    model_cfg,
    zoo_root: Callable[[], Path] | None = None,
    serve: Callable[[RoleOptions, str, PreTrainedTokenizerBase], torch.nn.Module] | None = None,
) -> tuple:
    """(student, student_tokenizer, teacher, teacher_tokenizer).

    A role without a `path` is a zoo entry: `zoo_root()` returns the folder of the zoo (the
    application builds or finds it; loading never builds models). Both roles are checked
    (options, source, config, tokenizer, chat template) before `zoo_root` is called or any
    weights load. The teacher comes back in eval mode with gradients off; a served teacher
    (`model.teacher.backend=server`) is `serve(options, source, tokenizer)`, made before the
    student loads.
    """
    options, sources = check_model_config(model_cfg)
    if len(sources) < len(ROLES):
        role = next(r for r in ROLES if r not in sources)
        _require(
            "zoo" in model_cfg and zoo_root is not None,
            f"model.zoo: missing; set model.{role}.path, or use model=toy",
        )
        zoo_root = zoo_root()
        sources.update({r: resolve_source(o, zoo_root) for r, o in options.items()})
    tokenizers = {role: load_tokenizer(options[role], sources[role]) for role in ROLES}
    if options["teacher"].backend == "server":
        _require(serve is not None, "model.teacher.backend=server: no way to reach a server here")
        teacher = serve(options["teacher"], sources["teacher"], tokenizers["teacher"])
    else:
        teacher = load_model(options["teacher"], sources["teacher"])
    teacher = teacher.eval().requires_grad_(False)
    student = load_model(options["student"], sources["student"])
    return student, tokenizers["student"], teacher, tokenizers["teacher"]


def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The plain state dict of a LoRA model with every active adapter merged into its base weight,
    computed without changing `model` (no copy of the model, no merge/unmerge round trip)."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    merged: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and not module.merged:
            weight = module.get_base_layer().weight.detach()
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    weight = weight + module.get_delta_weight(adapter).detach()
            merged[f"{name}.weight"] = weight
    state: dict[str, torch.Tensor] = {}
    for key, value in base.state_dict().items():
        if ".lora_" in key:
            continue
        plain = key.replace(".base_layer.", ".")
        state[plain] = merged.get(plain, value)
    return state


def save_student(
    student: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    path: str | Path,
    role_cfg,
    state_dict: dict | None = None,
) -> Path:
    """Write the trained student and its tokenizer to the folder `path`; returns it.

    A full-weight student is saved with `save_pretrained`. A LoRA student follows
    `model.student.lora.save`: `merged` writes a plain HF folder (adapters merged into the base
    weights, loadable without peft), `adapter` the peft adapter folder (adapter_config.json +
    adapter_model.safetensors, which names the base model it applies to).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    opts = role_options("student", role_cfg)
    if state_dict is not None:  # consolidated weights of a sharded (FSDP) student
        save_consolidated(student, state_dict, path)
    elif not is_lora(student) or opts.lora.save == "adapter":
        student.save_pretrained(path)  # a peft model writes its adapter folder
    else:
        student.get_base_model().save_pretrained(path, state_dict=merged_state_dict(student))
    tokenizer.save_pretrained(path)
    return path


def save_consolidated(student: torch.nn.Module, state_dict: dict, path: Path) -> None:
    """`save_pretrained` of an FSDP-sharded student from its consolidated state dict, under the
    model's own class name (FSDP2 renames the class to `FSDP<Name>`)."""
    from pad_lightning.lm.sharding import unwrapped_class

    student.save_pretrained(path, state_dict=state_dict)
    config = json.loads((path / "config.json").read_text())
    config["architectures"] = [unwrapped_class(student).__name__]
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
