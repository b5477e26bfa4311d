"""The teacher as a service (`model.teacher.backend=server`) against a real vLLM server on
loopback: the same rewards and p_sel as the local teacher in every calibration mode, the
start-up checks, retries through dropped connections, refused malformed or non-finite answers,
and whole runs (a server the run starts, a server killed mid-run). One server serves the module."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from engine_models import SMOKE_ZOO, closed_port, save_model_folder, start_server, vllm_python
from transformers import AutoConfig, AutoModelForCausalLM

from pad_lightning.data.tasks import corrupt, sample_problems
from pad_lightning.engines import teacher_service
from pad_lightning.engines.openai_api import Client, ClientOptions
from pad_lightning.engines.served import ServedLM
from pad_lightning.lm.chat import encode_pairs, pad_id
from pad_lightning.lm.generation import SamplingConfig
from pad_lightning.lm.scoring import score_pairs
from pad_lightning.runtime.errors import ConfigError, ServiceError, TrainingDiverged
from pad_lightning.training.calibration import CalibrationConfig, selection
from pad_lightning.training.rollout import collect
from pad_lightning.zoo.tokenizer import build_char_tokenizer

TOLERANCE = 2e-4  # nats: float32 on both sides, different kernels (measured: about 3e-6)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory):
    return save_model_folder(tmp_path_factory.mktemp("served") / "teacher", seed=1, scale=10)


@pytest.fixture(scope="module")
def server(teacher_folder, tmp_path_factory):
    started = start_server(
        teacher_folder, str(teacher_folder), tmp_path_factory.mktemp("logs") / "vllm.log"
    )
    yield started
    started.stop()


@pytest.fixture(scope="module")
def served(server, teacher_folder):
    options = teacher_service.ServerOptions(urls=[server.url], retries=1, backoff=0.1)
    return teacher_service.connect(
        options, str(teacher_folder), AutoConfig.from_pretrained(teacher_folder)
    )


def _world(n: int = 4):
    problems = sample_problems(["reverse"], "val", 6, 0)
    rng = random.Random(0)
    texts = [[corrupt(p.reference, rng, "abcdefghij") for _ in range(n)] for p in problems]
    texts[0][1] = texts[0][0]  # a repeated response: its questions are not asked
    return [p.prompt for p in problems], texts


def test_served_rewards_and_selection_equal_the_local_teachers(served, teacher_folder):
    """Rewards and log p_sel of all three calibration modes, and the teacher tokens counted,
    are the local teacher's up to float rounding."""
    tok = build_char_tokenizer()
    local = AutoModelForCausalLM.from_pretrained(teacher_folder).eval()
    prompts, texts = _world()
    pairs = encode_pairs(tok, prompts, texts)
    expected = score_pairs(local, pairs, pad_id(tok))
    got = score_pairs(served, pairs, pad_id(tok))
    assert expected.std() > 0.1  # a teacher with opinions
    torch.testing.assert_close(got, expected, atol=TOLERANCE, rtol=0)
    for by_echo in (False, True):  # letters asked one by one (vLLM), or echoed (other servers)
        served.option_by_echo = by_echo
        for mode, debias in (("pairwise", True), ("pairwise", False), ("listwise", True)):
            cal = CalibrationConfig(alpha=0.8, mode=mode, debias=debias)
            want, want_tokens = selection(cal, local, tok, prompts, texts)
            have, have_tokens = selection(cal, served, tok, prompts, texts)
            assert want.std() > 0.05, mode
            torch.testing.assert_close(have, want, atol=TOLERANCE, rtol=0)
            assert have_tokens == want_tokens
            assert served.option_by_echo == by_echo  # vLLM honours allowed_token_ids


def test_served_teacher_samples_as_seqkd_asks(served):
    """A served teacher also answers `generate` (loss=seqkd's teacher samples): n per prompt,
    cut at the end-of-turn token, at most max_new_tokens long."""
    from pad_lightning.lm.generation import generate

    tok = build_char_tokenizer()
    prompts, _ = _world()
    torch.manual_seed(0)
    gens = generate(served, tok, prompts, 3, SamplingConfig(max_new_tokens=6))
    assert [len(t) for t in gens.texts] == [3] * len(prompts)
    assert gens.lengths.max() <= 6 and gens.lengths.min() >= 1
    assert ((gens.lengths < 6) | gens.truncated).all()


def test_start_up_checks_name_the_problem(server, teacher_folder):
    """Another served name, another tokenizer, a URL with nothing behind it: one line each."""
    options = teacher_service.ServerOptions(urls=[server.url])
    with pytest.raises(ConfigError) as err:
        teacher_service.connect(options, "/models/the-teacher")
    assert str(err.value) == (
        f"model.teacher.server: {server.url} serves {str(teacher_folder)!r}, not "
        "'/models/the-teacher'; point the run at the teacher's server, or set "
        "model.teacher.server.model to the served name if it is the teacher"
    )
    served = teacher_service.connect(options, str(teacher_folder))
    from tiny_models import make_tokenizer

    other = make_tokenizer("bytelevel")
    with pytest.raises(ConfigError, match=r"tokenizer differs from the teacher's .* token 0 is"):
        teacher_service.check_tokenizer(served, other, ["reverse: abc"])
    teacher_service.check_tokenizer(served, build_char_tokenizer(), ["reverse: abc"])
    port = closed_port()
    with pytest.raises(ConfigError, match=rf"urls: http://127.0.0.1:{port} does not answer"):
        teacher_service.check_reachable(
            teacher_service.ServerOptions(urls=[f"http://127.0.0.1:{port}"])
        )


class _DroppingProxy:
    """A loopback TCP proxy to `target` that closes its first `drops` connections unanswered
    (a dropped connection), then forwards."""

    def __init__(self, target: str, drops: int):
        host, port = target.removeprefix("http://").split(":")
        self.target, self.drops = (host, int(port)), drops
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.drops > 0:
                self.drops -= 1
                conn.recv(65536)
                conn.close()
                continue
            upstream = socket.create_connection(self.target)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def test_dropped_connections_are_retried_with_backoff_then_refused(served):
    tok = build_char_tokenizer()
    prompts, texts = _world()
    pairs = encode_pairs(tok, prompts, texts)
    expected = score_pairs(served, pairs, pad_id(tok))
    proxy = _DroppingProxy(served.client.urls[0], drops=2)
    client = Client(
        ClientOptions(urls=[proxy.url], retries=3, backoff=0.05), "model.teacher.server"
    )
    flaky = ServedLM(client, served.model_name)
    started = time.perf_counter()
    torch.testing.assert_close(score_pairs(flaky, pairs, pad_id(tok)), expected)
    assert client.retried == 2
    assert time.perf_counter() - started >= 0.05 + 0.1  # backoff 0.05 s, then 0.1 s
    proxy = _DroppingProxy(served.client.urls[0], drops=5)
    client = Client(
        ClientOptions(urls=[proxy.url], retries=1, backoff=0.01), "model.teacher.server"
    )
    with pytest.raises(ServiceError, match=r"^model.teacher.server: no answer after 2 attempts"):
        score_pairs(ServedLM(client, served.model_name), pairs, pad_id(tok))


class _BadServer(ThreadingHTTPServer):
    """An OpenAI-style endpoint whose answers are broken in one chosen way."""

    def __init__(self, flaw: str):
        self.flaw = flaw

        class Handler(BaseHTTPRequestHandler):
            def do_POST(handler):  # noqa: N805
                body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
                if self.flaw == "slow":
                    time.sleep(1.0)
                prompts = body["prompt"]
                choices = []
                for i, ids in enumerate(prompts):
                    logprobs = [None] + [-1.0] * len(ids)
                    if self.flaw == "nan" and i == 0:
                        logprobs[len(ids) - 1] = float("nan")  # a scored token
                    if self.flaw == "short":
                        logprobs = logprobs[:2]
                    if self.flaw == "text":
                        logprobs[2] = "-1.0"
                    choices.append({"index": i, "logprobs": {"token_logprobs": logprobs}})
                if self.flaw == "missing":
                    choices = choices[:-1]
                data = json.dumps({"choices": choices}).encode()
                handler.send_response(200)
                handler.send_header("Content-Type", "application/json")
                handler.send_header("Content-Length", str(len(data)))
                handler.end_headers()
                handler.wfile.write(data)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


@pytest.mark.parametrize(
    ("flaw", "error"),
    [
        ("nan", r"^teacher rewards of 2 prompts x 2 responses: 1 of 4 are not finite \(nan\)"),
        ("short", r"malformed log-probabilities: \d+ expected, got 2"),
        ("text", r"malformed log-probability at token 2: '-1.0'"),
        ("missing", r"\d+ choices expected, got \d+"),
        ("slow", r"no answer after 2 attempts; last: .*timed out"),
    ],
)
def test_malformed_or_nonfinite_answers_never_reach_training(flaw, error):
    """NaN is refused as a local non-finite score is; a short, textual or missing answer is a
    one-line service error, and so is a server that times out past the retries: a rollout with
    a partial teacher answer never trains."""
    bad = _BadServer(flaw)
    try:
        options = ClientOptions(urls=[bad.url], retries=1, backoff=0.01, timeout=0.3)
        teacher = ServedLM(Client(options, "model.teacher.server"), "t")
        tok = build_char_tokenizer()
        from conftest import tiny_model

        torch.manual_seed(0)
        with pytest.raises((TrainingDiverged, ServiceError), match=error):
            collect(
                tiny_model(tok),
                tok,
                teacher,
                tok,
                ["reverse: ab", "reverse: cd"],
                2,
                SamplingConfig(max_new_tokens=4),
                CalibrationConfig(name="none"),
            )
    finally:
        bad.shutdown()


# -- whole runs ---------------------------------------------------------------------------------


def _env(root: Path) -> dict:
    from conftest import subprocess_env

    env = subprocess_env(root)
    env["PAD_LIGHTNING_VLLM_PYTHON"] = vllm_python()
    return env


def _run(root: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pad_lightning.run", *SMOKE_ZOO, *overrides],
        cwd=root,
        env=_env(root),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def run_root(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


def test_unreachable_server_is_one_line_before_any_model_loads(run_root):
    port = closed_port()
    out = _run(
        run_root,
        "model.teacher.backend=server",
        f"model.teacher.server.urls=[http://127.0.0.1:{port}]",
        "hydra.run.dir=unreachable",
    )
    assert out.returncode != 0
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"config error: model.teacher.server.urls: http://127.0.0.1:{port} does not answer ("
        )
    )
    assert "zoo:" not in out.stdout  # nothing was built or loaded
    assert not list((run_root / "cache").glob("zoo/*/teacher"))


def test_a_run_starts_its_teacher_server_and_stops_it(run_root):
    """urls=[]: the run starts vLLM for the zoo's teacher, trains on its scores, prints the
    before/after table and stops the server."""
    out = _run(run_root, "model.teacher.backend=server", "hydra.run.dir=launched")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "model.teacher.server: vLLM ready in" in out.stdout
    assert "held-out test metrics" in out.stdout and "teacher_reward" in out.stdout
    summary = json.loads((run_root / "launched" / "summary.json").read_text())
    assert summary["after"]["teacher_reward"] < 0
    log = (run_root / "launched" / "teacher-vllm.log").read_text()
    assert "POST /v1/completions" in log
    import mlflow

    from pad_lightning.app.models import stored_parameters

    client = mlflow.MlflowClient(f"sqlite:///{run_root / 'mlflow.db'}")
    state = json.loads((run_root / "launched" / "run_state.json").read_text())
    params = client.get_run(state["mlflow_run_id"]).data.params
    assert params["model.teacher.backend"] == "server"
    teacher = AutoModelForCausalLM.from_pretrained(_zoo_teacher(run_root))
    expected = sum(p.numel() for p in teacher.parameters())
    assert (
        int(params["model.teacher_parameters"])
        == expected
        == stored_parameters(str(_zoo_teacher(run_root)))
    )  # counted from its folder, not the served module's empty 0
    url = out.stdout.split("model.teacher.server: starting vLLM on ", 1)[1].split()[0]
    with pytest.raises(ConfigError, match="does not answer"):  # no server left behind
        teacher_service.check_reachable(teacher_service.ServerOptions(urls=[url]))


def _zoo_teacher(root: Path) -> Path:
    (folder,) = (root / "cache" / "zoo").glob("*/teacher")
    return folder


def test_a_server_for_another_model_is_refused(run_root, server, teacher_folder):
    out = _run(
        run_root,
        "model.teacher.backend=server",
        f"model.teacher.server.urls=[{server.url}]",
        "hydra.run.dir=other",
    )
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1] == (
        f"config error: model.teacher.server: {server.url} serves {str(teacher_folder)!r}, "
        f"not {str(_zoo_teacher(run_root))!r}; point the run at the teacher's server, or set "
        "model.teacher.server.model to the served name if it is the teacher"
    )


def test_a_server_killed_mid_run_ends_it_with_the_resume_line(run_root, tmp_path):
    """Retries run out, the run ends FAILED with one training error line that says how to
    resume, and its last checkpoint is kept."""
    folder = _zoo_teacher(run_root)
    own = start_server(folder, str(folder), tmp_path / "vllm.log")
    run_dir = run_root / "killed"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pad_lightning.run",
            *SMOKE_ZOO,
            "model.teacher.backend=server",
            f"model.teacher.server.urls=[{own.url}]",
            "model.teacher.server.retries=2",
            "model.teacher.server.backoff=0.2",
            "trainer.max_epochs=400",
            "trainer.checkpoint_every_n_epochs=1",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=run_root,
        env=_env(run_root),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 300
        while not (run_dir / "checkpoints" / "last.ckpt").exists():
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.time() < deadline
            time.sleep(0.2)
        os.killpg(own.process.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=300)
    finally:
        own.stop()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    line = err.strip().splitlines()[-1]
    assert line.startswith("training error: model.teacher.server: no answer after 3 attempts; ")
    assert line.endswith(f"resume with: python -m pad_lightning.run resume={run_dir}")
    assert json.loads((run_dir / "run_state.json").read_text())["status"] == "FAILED"
    assert (run_dir / "checkpoints" / "last.ckpt").exists()


def test_the_serve_command_serves_a_folder_under_its_path_until_ctrl_c(teacher_folder, tmp_path):
    """`python -m pad_lightning.serve <folder>`: prints the overrides for a run, serves the folder
    under its path (the name a run expects), and stops on Ctrl-C; bad input is one line."""
    env = _env(tmp_path)
    for args, line in (
        (["zoo:foo"], "serve error: zoo:foo: valid: zoo:teacher, zoo:student"),
        (["/nonexistent/model"], "serve error: /nonexistent/model: no such folder"),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "pad_lightning.serve", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode != 0 and out.stderr.strip() == line
    port = closed_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pad_lightning.serve", str(teacher_folder), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        first = proc.stdout.readline()
        assert first.startswith(f"serving {teacher_folder} as {str(teacher_folder)!r} on ")
        assert f"model.teacher.server.urls=[http://127.0.0.1:{port}]" in first
        options = teacher_service.ServerOptions(urls=[f"http://127.0.0.1:{port}"])
        deadline = time.time() + 300
        while True:
            try:
                served = teacher_service.connect(options, str(teacher_folder))
                break
            except ConfigError:
                assert proc.poll() is None and time.time() < deadline
                time.sleep(0.5)
        assert served.model_name == str(teacher_folder)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) is not None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
