"""A client of OpenAI-compatible completions servers (vLLM, SGLang, or anything serving
`/v1/completions` the same way): a pool of base URLs, requests sent in parallel up to a limit,
bounded retries with exponential backoff, and one-line errors naming the server.

Only the standard library is used (urllib and a thread pool): the training process needs no
extra dependency to talk to a server, and loopback requests of a few kilobytes do not need
connection reuse to be cheap.

What is retried: a refused or dropped connection, a timeout, and HTTP 5xx/429 (the server is
restarting, overloaded, or a worker died), each time on the next URL of the pool after a
backoff of `backoff * 2**attempt` seconds. What is not: any other HTTP 4xx (the request itself is
wrong: retrying cannot help), which ends with the server's own message.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pad_lightning.runtime.errors import ServiceError

RETRIED_STATUS = frozenset({429, 500, 502, 503, 504})


@dataclass
class ClientOptions:
    """How to talk to a pool of servers (the keys of `model.teacher.server` that say so)."""

    urls: list[str] = field(default_factory=list)
    timeout: float = 120.0  # seconds per request
    retries: int = 3  # further attempts after the first, each on the next URL
    backoff: float = 1.0  # seconds before the first retry, doubled each time
    concurrency: int = 4  # requests in flight at once, over the whole pool


def _message(body: bytes) -> str:
    """The server's error message from an error body (OpenAI's {"error": {"message"}} or
    FastAPI's {"detail"}), else its first line."""
    text = body.decode(errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text.splitlines()[0][:300] if text else "(empty body)"
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data))
        if isinstance(err, dict):
            err = err.get("message", err)
        return str(err).splitlines()[0][:300] if str(err).strip() else "(empty body)"
    return str(data)[:300]


class Client:
    """Requests to a pool of base URLs (`http://host:port`), round-robin."""

    def __init__(self, options: ClientOptions, what: str = "server"):
        if not options.urls:
            raise ValueError("Client: no URLs")
        self.options = options
        self.urls = [u.rstrip("/") for u in options.urls]
        self.what = what  # how errors name the pool, e.g. "model.teacher.server"
        self._next = itertools.cycle(range(len(self.urls)))
        self._lock = threading.Lock()
        self.retried = 0  # requests that needed a retry (logged by callers)

    def _pick(self) -> str:
        with self._lock:
            return self.urls[next(self._next)]

    def _once(self, url: str, path: str, body: dict | None, timeout: float) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            url + path,
            data=data,
            headers={"Content-Type": "application/json"},
            method="GET" if body is None else "POST",
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
        try:
            return json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise ServiceError(
                f"{self.what}: {url}{path} answered with something that is not JSON "
                f"({raw[:80]!r}); is it an OpenAI-compatible server?"
            ) from None

    def request(
        self,
        path: str,
        body: dict | None = None,
        url: str | None = None,
        retries: int | None = None,
    ) -> dict:
        """One request (GET without a body, POST with one), retried as the module says; `url`
        pins it to one server of the pool."""
        retries = self.options.retries if retries is None else retries
        first = last = ""
        for attempt in range(retries + 1):
            where = url or self._pick()
            try:
                return self._once(where, path, body, self.options.timeout)
            except urllib.error.HTTPError as err:
                message = _message(err.read())
                if err.code not in RETRIED_STATUS:
                    raise ServiceError(
                        f"{self.what}: {where}{path} refused the request (HTTP {err.code}): "
                        f"{message}"
                    ) from None
                last = f"HTTP {err.code} from {where}: {message}"
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as err:
                reason = getattr(err, "reason", err)
                last = f"{where}: {type(reason).__name__}: {reason}".rstrip(": ")
            first = first or last
            if attempt < retries:
                with self._lock:
                    self.retried += 1
                time.sleep(self.options.backoff * 2**attempt)
        tries = f"after {retries + 1} attempts" if retries else "(no retry)"
        seen = f"first: {first}; last: {last}" if first != last else f"last: {last}"
        raise ServiceError(f"{self.what}: no answer {tries}; {seen}")

    def map(self, path: str, bodies: Sequence[dict]) -> list[dict]:
        """POST every body, up to `concurrency` at once; the answers in order. The first error
        ends the call (requests not yet sent are cancelled): nothing partial comes back."""
        if len(bodies) <= 1 or self.options.concurrency <= 1:
            return [self.request(path, b) for b in bodies]
        with ThreadPoolExecutor(min(self.options.concurrency, len(bodies))) as pool:
            futures = [pool.submit(self.request, path, b) for b in bodies]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise


def logprob_list(values, what: str, expected: int) -> list[float]:
    """Floats from a server's log-probability list (None only where OpenAI puts it: the first
    prompt token), checked for length; non-finite values pass through (callers refuse them as
    they refuse non-finite local scores). ServiceError on anything else."""
    if not isinstance(values, list) or len(values) < expected:
        got = len(values) if isinstance(values, list) else type(values).__name__
        raise ServiceError(f"{what}: malformed log-probabilities: {expected} expected, got {got}")
    out = []
    for i, v in enumerate(values[:expected]):
        if v is None and i == 0:
            out.append(0.0)
            continue
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ServiceError(f"{what}: malformed log-probability at token {i}: {v!r}")
        out.append(float(v))
    return out


def sorted_choices(answer: dict, count: int, what: str, check: Callable | None = None) -> list:
    """An answer's `choices`, by their `index`, exactly `count` of them (else ServiceError)."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or len(choices) != count:
        got = len(choices) if isinstance(choices, list) else "none"
        raise ServiceError(f"{what}: {count} choices expected, got {got}")
    try:
        choices = sorted(choices, key=lambda c: c["index"])
    except (KeyError, TypeError):
        raise ServiceError(f"{what}: a choice without an index") from None
    if [c["index"] for c in choices] != list(range(count)):
        raise ServiceError(f"{what}: choice indices are not 0..{count - 1}")
    return choices
