"""Serve a model for runs to share: `python -m pad_lightning.serve <folder | zoo:teacher>`.

Starts vLLM's OpenAI-compatible server (from the vLLM environment: `make vllm-env`, or
$PAD_LIGHTNING_VLLM_PYTHON) for a model folder, under the name a run expects by default (the
folder's path), prints the overrides that point a run at it, and serves until Ctrl-C:

    python -m pad_lightning.serve zoo:teacher --port 8000
    python -m pad_lightning.run model.teacher.backend=server \\
        'model.teacher.server.urls=[http://127.0.0.1:8000]'

`zoo:teacher` and `zoo:student` are the toy zoo's folders for the default config (built first if
missing; `--override experiment=smoke` and other Hydra overrides choose another zoo).
`--weight-sync` serves a rollout engine (`rollout.sampler=vllm rollout.vllm.url=...`): vLLM's
development routes and the weight-reload extension are switched on, so it listens on 127.0.0.1
only. Anything after `--` goes to vLLM as it is (e.g. `-- --tensor-parallel-size 8` on GPUs).
Bad input stops it with one line, `serve error: ...`.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from pad_lightning.engines import vllm_server  # noqa: E402
from pad_lightning.runtime.errors import PadError  # noqa: E402


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        sys.exit(f"serve error: {message}")


def _zoo_folder(role: str, overrides: list[str]) -> Path:
    from hydra import compose, initialize_config_module

    from pad_lightning.app.configs import CONF_PACKAGE
    from pad_lightning.app.models import zoo_config
    from pad_lightning.zoo.builder import ensure_zoo

    with initialize_config_module(CONF_PACKAGE, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return ensure_zoo(zoo_config(cfg.model.zoo)) / role


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = _Parser(prog="python -m pad_lightning.serve", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a model folder (or hub id), or zoo:teacher / zoo:student")
    parser.add_argument("--name", help="served model name (default: the folder's path)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--weight-sync", action="store_true", help="serve a rollout engine")
    parser.add_argument("--python", help="the vLLM environment's python")
    parser.add_argument("--override", action="append", default=[], help="Hydra override (zoo:)")
    args = parser.parse_args(argv)
    try:
        if args.model.startswith("zoo:"):
            role = args.model.removeprefix("zoo:")
            if role not in ("teacher", "student"):
                parser.error(f"{args.model}: valid: zoo:teacher, zoo:student")
            folder = str(_zoo_folder(role, args.override))
        else:
            local = Path(os.path.expanduser(args.model))
            folder = str(local.resolve()) if local.is_dir() else args.model
            if not local.is_dir() and (args.model.startswith((".", "/", "~"))):
                parser.error(f"{args.model}: no such folder")
        python = vllm_server.vllm_python(args.python, "--python")
        name = args.name or "student" if args.weight_sync else args.name or folder
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(folder)
        vllm_server.check_head_size(config, args.model)
        positions = getattr(config, "max_position_embeddings", None) or args.max_model_len
        command, env = vllm_server.server_command(
            python,
            folder,
            name,
            args.port,
            min(args.max_model_len, positions),
            args.weight_sync,
            extra,
        )
    except PadError as err:
        sys.exit(f"serve error: {err}")
    except OSError as err:
        sys.exit(f"serve error: {args.model}: {err}")
    url = f"http://127.0.0.1:{args.port}"
    if args.weight_sync:
        use = f"rollout.sampler=vllm rollout.vllm.url={url}"
    else:
        use = f"model.teacher.backend=server 'model.teacher.server.urls=[{url}]'"
        if args.name:
            use += f" model.teacher.server.model={args.name}"
    print(f"serving {folder} as {name!r} on {url}; point a run at it with: {use}", flush=True)
    print(" ".join(command), flush=True)
    process = subprocess.Popen(command, env=env)
    try:
        sys.exit(process.wait())
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        sys.exit(process.wait())


if __name__ == "__main__":
    main()
