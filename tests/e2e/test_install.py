"""A non-editable install: a wheel of this tree, installed where the editable install is out of
reach, runs from an empty directory with the configs it carries (pkg://pad_lightning.conf), as
`python -m pad_lightning.run` and as the `pad-lightning` command, and takes a user's config folder
(`--config-dir`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import subprocess_env

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
PIP = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
# this interpreter's dependencies, minus any folder that holds pad_lightning itself
DEPENDENCIES = [
    p
    for p in sys.path
    if Path(p).name in ("site-packages", "dist-packages") and not Path(p, "pad_lightning").exists()
]
MINE = """\
# @package _global_
defaults:
  - smoke        # the shipped experiment, then the changes below
calibration:
  alpha: 0.5
trainer:
  max_epochs: 1
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> SimpleNamespace:
    """The wheel, installed with `pip install --target <tmp>/site`, and an empty working folder."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"  # a copy: the tree gets no build/, concurrent builds share nothing
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("src", "conf"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for args in (
        ["wheel", "--no-deps", "--no-build-isolation", "--no-index", str(source), "-w", "wheels"],
        ["install", "--no-deps", "--no-index", "--target", "site", "WHEEL"],
    ):
        if args[-1] == "WHEEL":
            args[-1] = str(next((tmp / "wheels").glob("pad_lightning-*.whl")))
        proc = subprocess.run([*PIP, *args], cwd=tmp, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-4000:]
    work = tmp / "work"
    work.mkdir()
    return SimpleNamespace(
        tmp=tmp,
        source=source,
        wheel=next((tmp / "wheels").glob("*.whl")),
        site=tmp / "site",
        work=work,
    )


def isolated(installed, *args: str) -> subprocess.CompletedProcess:
    """`python -S <args>` in the empty folder: no .pth file runs, so the editable install's
    finder is never installed; the wheel's site and the dependencies come from PYTHONPATH."""
    env = subprocess_env(installed.tmp)
    env["PYTHONPATH"] = os.pathsep.join([str(installed.site), *DEPENDENCIES])
    return subprocess.run(
        [sys.executable, "-S", *args],
        cwd=installed.work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def console(installed, *args: str) -> subprocess.CompletedProcess:
    """The installed `pad-lightning` script as a user would call it (its shebang's python)."""
    env = subprocess_env(installed.tmp)
    env["PYTHONPATH"] = str(installed.site)
    return subprocess.run(
        [str(installed.site / "bin" / "pad-lightning"), *args],
        cwd=installed.work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_wheel_carries_every_module_and_config(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    src = installed.source / "src"
    wanted = {p.relative_to(src).as_posix() for p in (src / "pad_lightning").rglob("*.py")}
    conf = installed.source / "conf"
    wanted |= {f"pad_lightning/conf/{p.relative_to(conf).as_posix()}" for p in conf.rglob("*.yaml")}
    assert "pad_lightning/conf/experiment/smoke.yaml" in wanted
    assert not wanted - names, "add the folder to [tool.setuptools] packages in pyproject.toml"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert (
        "pad-lightning = pad_lightning.run:cli"
        in zipfile.ZipFile(installed.wheel).read(entry_points).decode().splitlines()
    )


def test_installed_package_runs_from_an_empty_directory(installed):
    probe = isolated(
        installed,
        "-c",
        "import importlib.resources, sys, pad_lightning; from pad_lightning.app.configs import "
        "config_dir; print(pad_lightning.__file__); print(config_dir()); "
        "print(any('editable' in repr(f) for f in sys.meta_path))",
    )
    assert probe.returncode == 0, probe.stderr[-4000:]
    module, configs, editable_finder = probe.stdout.split()
    assert Path(module).is_relative_to(installed.site)
    assert Path(configs) == installed.site / "pad_lightning" / "conf"
    assert editable_finder == "False"

    proc = isolated(
        installed,
        "-m",
        "pad_lightning.run",
        "experiment=smoke",
        "trainer.max_epochs=1",
        "logger.log_student=false",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = Path(proc.stdout.strip().splitlines()[-1])
    assert summary.is_relative_to(installed.work / "outputs") and summary.name == "summary.json"
    assert "after" in json.loads(summary.read_text())


def test_console_command_takes_a_user_config_folder(installed):
    (installed.work / "my_conf" / "experiment").mkdir(parents=True)
    (installed.work / "my_conf" / "experiment" / "mine.yaml").write_text(MINE)
    proc = console(installed, "--config-dir", "my_conf", "experiment=mine", "--help")
    assert proc.returncode == 0, proc.stderr[-4000:]
    groups = dict(
        line.split(": ", 1)
        for line in proc.stdout.split("== Config ==")[0].splitlines()
        if ": " in line
    )
    assert {"mine", "smoke"} <= set(groups["experiment"].split(", "))
    composed = proc.stdout.split("Override anything in the config (foo.bar=value)")[1]
    cfg = yaml.safe_load(composed.split("Powered by Hydra")[0])
    assert cfg["calibration"]["alpha"] == 0.5  # mine.yaml
    assert cfg["trainer"]["max_epochs"] == 1  # mine.yaml over smoke's 3
    assert cfg["data"]["train_size"] == 200  # smoke.yaml, from the installed package


def test_console_command_reports_config_errors_on_one_line(installed):
    proc = console(installed, "loss=nope")
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()  # one_line_config_errors, as in __main__
    assert line.startswith("config error: In 'config': Could not find 'loss/nope'; valid: ")
    assert "ppd" in line and "dpo" in line
