"""The teacher as a service (`model.teacher.backend=server`): its options, the start-up checks,
and the `ServedLM` a run uses in place of the local teacher.

With `model.teacher.server.urls` set, the run talks to those servers (started by the user, e.g.
`python -m pad_lightning.serve`, `vllm serve`, SGLang); with none, it starts a vLLM server for
the teacher's folder on this machine and stops it when the run ends. Either way the training
process never loads the teacher's weights: it keeps the teacher's tokenizer and config (small
files) to render and encode what it sends.

Start-up checks, each one line naming the key: every URL answers `/v1/models` (before any model
loads, for given URLs) and serves the expected model name (`server.model`, by default the
teacher's path as the run resolves it, which is the name `vllm serve <path>` reports); then, once
the teacher's tokenizer is loaded, the server's `/tokenize` gives the ids the local tokenizer
gives on a probe of the run's own template (the first difference is named).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pad_lightning.engines.openai_api import Client, ClientOptions
from pad_lightning.engines.served import ServedLM
from pad_lightning.runtime.errors import ConfigError, ServiceError

BACKENDS = ("local", "server")
SERVER_KEYS = (
    "urls",
    "model",
    "concurrency",
    "timeout",
    "retries",
    "backoff",
    "python",
    "max_model_len",
    "args",
)
PREFIX = "model.teacher.server"


@dataclass
class ServerOptions(ClientOptions):
    """`model.teacher.server`: conf/model/*.yaml explains each key."""

    model: str | None = None  # the served name; None: the teacher's resolved path
    python: str | None = None  # the vLLM environment's python, for a server the run starts
    max_model_len: int = 2048  # of a server the run starts
    args: list[str] = field(default_factory=list)  # more vLLM arguments, for one the run starts

    def launches(self) -> bool:
        return not self.urls


def _int(raw: dict, key: str, default: int, low: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{PREFIX}.{key}={value!r}: must be an integer >= {low}")
    return value


def _float(raw: dict, key: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{PREFIX}.{key}={value!r}: must be a number > 0")
    if not math.isfinite(value):
        raise ConfigError(f"{PREFIX}.{key}={value!r}: must be finite")
    return float(value)


def server_options(raw: dict) -> ServerOptions:
    """Check a `model.teacher.server` node (a plain dict) and return its options."""
    unknown = sorted(set(raw) - set(SERVER_KEYS))
    if unknown:
        raise ConfigError(f"{PREFIX}.{unknown[0]}: unknown key; valid: {', '.join(SERVER_KEYS)}")
    urls = raw.get("urls") or []
    if isinstance(urls, str):
        urls = [urls]
    urls = list(urls)
    for url in urls:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(
                f"{PREFIX}.urls: {url!r} is not a URL; give base URLs like "
                "http://127.0.0.1:8000 (or [] to start a server for the run)"
            )
    model = raw.get("model")
    if model is not None and not (isinstance(model, str) and model):
        raise ConfigError(f"{PREFIX}.model={model!r}: a served model name, or null")
    args = raw.get("args") or []
    if isinstance(args, str) or not all(isinstance(a, str) for a in args):
        raise ConfigError(f"{PREFIX}.args={args!r}: a list of strings (vLLM arguments)")
    return ServerOptions(
        urls=[u.rstrip("/") for u in urls],
        timeout=_float(raw, "timeout", 120.0),
        retries=_int(raw, "retries", 3, 0),
        backoff=_float(raw, "backoff", 1.0),
        concurrency=_int(raw, "concurrency", 4, 1),
        model=model,
        python=raw.get("python"),
        max_model_len=_int(raw, "max_model_len", 2048, 16),
        args=list(args),
    )


def served_models(options: ServerOptions) -> dict[str, dict]:
    """{url: its /v1/models answer's first entry naming each served model}: one request per URL,
    no retry; ConfigError naming the URL that does not answer as an OpenAI server would."""
    client = Client(options, PREFIX)
    out = {}
    for url in client.urls:
        try:
            answer = client.request("/v1/models", url=url, retries=0)
        except ServiceError as err:
            reason = str(err).split("; last: ", 1)[-1]
            raise ConfigError(
                f"{PREFIX}.urls: {url} does not answer ({reason}); start the teacher's server "
                "(python -m pad_lightning.serve <teacher folder>) or fix the URL"
            ) from None
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or not data:
            raise ConfigError(f"{PREFIX}.urls: {url}/v1/models lists no model")
        out[url] = {str(d.get("id")): d for d in data if isinstance(d, dict)}
    return out


def check_reachable(options: ServerOptions) -> None:
    """The start-up check of given URLs, before any model loads (the name is checked later,
    when the teacher's resolved path is known)."""
    if options.urls:
        served_models(options)


def connect(options: ServerOptions, expected: str, config=None) -> ServedLM:
    """The served teacher on `options.urls`, checked to serve `options.model or expected` on
    every URL; `config` (the teacher's HF config) and the servers' smallest `max_model_len`
    come with it."""
    name = options.model or expected
    limits = []
    for url, models in served_models(options).items():
        if name not in models:
            served = ", ".join(repr(m) for m in models)
            raise ConfigError(
                f"{PREFIX}: {url} serves {served}, not {name!r}; point the run at the teacher's "
                f"server, or set {PREFIX}.model to the served name if it is the teacher"
            )
        limit = models[name].get("max_model_len")
        if isinstance(limit, int) and limit > 0:
            limits.append(limit)
    served = ServedLM(Client(options, PREFIX), name, min(limits) if limits else None)
    served.config = config
    return served


def check_tokenizer(served: ServedLM, tokenizer, probes: list[str]) -> None:
    """The servers' tokenizer gives the local tokenizer's ids on every probe text (no special
    tokens added), or a ConfigError naming the first difference. A server without `/tokenize`
    is not checked (a warning says so)."""
    for url in served.client.urls:
        for text in probes:
            local = tokenizer(text, add_special_tokens=False)["input_ids"]
            try:
                answer = served.client.request(
                    "/tokenize",
                    {"model": served.model_name, "prompt": text, "add_special_tokens": False},
                    url=url,
                    retries=1,
                )
            except ServiceError as err:
                if "HTTP 404" in str(err):
                    import warnings

                    warnings.warn(
                        f"{PREFIX}: {url} has no /tokenize route; its tokenizer is not checked "
                        "against the teacher's",
                        stacklevel=2,
                    )
                    return
                raise ConfigError(str(err)) from None
            remote = answer.get("tokens") if isinstance(answer, dict) else None
            if remote != local:
                remote = remote if isinstance(remote, list) else []
                i = next(
                    (j for j, (a, b) in enumerate(zip(remote, local, strict=False)) if a != b),
                    min(len(remote), len(local)),
                )
                theirs = remote[i] if i < len(remote) else "end"
                ours = local[i] if i < len(local) else "end"
                raise ConfigError(
                    f"{PREFIX}: {url}'s tokenizer differs from the teacher's "
                    f"({tokenizer.name_or_path}) on {text[:40]!r}: token {i} is {theirs} there, "
                    f"{ours} here ({len(remote)} vs {len(local)} tokens); serve the teacher's "
                    "own folder"
                )
