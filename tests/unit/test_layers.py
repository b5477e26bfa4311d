"""The layers of pad_lightning (pyproject's import-linter contract): no upward import, no cycle.

Function-local imports count: grimp reads every import statement of a module, so a lazy import
that runs back up the layers breaks the contract as a top-level one would.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[2]
LINT = [
    sys.executable,
    "-c",
    "from importlinter.cli import lint_imports_command; lint_imports_command()",
]


def _lint(pythonpath: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    env = {"PYTHONPATH": str(pythonpath), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [*LINT, "--no-cache"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )


def test_layers_contract_is_kept(tmp_path):
    result = _lint(REPO / "src", tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Contracts: 1 kept, 0 broken." in result.stdout


def test_an_upward_function_local_import_breaks_it(tmp_path):
    """A lazy import from the lowest layer into the application fails the contract, by name."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "src" / "pad_lightning", src / "pad_lightning")
    shutil.copytree(REPO / "conf", src / "pad_lightning" / "conf", dirs_exist_ok=True)
    files = src / "pad_lightning" / "runtime" / "files.py"
    files.write_text(
        files.read_text() + "\n\ndef _upward():\n    from pad_lightning.app import checks\n\n"
        "    return checks\n"
    )
    work = tmp_path / "work"
    work.mkdir()
    result = _lint(src, work)
    assert result.returncode != 0
    assert "pad_lightning.runtime is not allowed to import pad_lightning.app" in result.stdout
    assert "pad_lightning.runtime.files -> pad_lightning.app.checks" in result.stdout


def test_no_import_cycles_between_modules():
    """No module reaches itself through imports (within a layer too), lazy imports included."""
    graph = grimp.build_graph("pad_lightning")
    modules = sorted(m for m in graph.modules if m.startswith("pad_lightning"))
    cycles = [
        (a, b)
        for a in modules
        for b in graph.find_modules_directly_imported_by(a)
        if b != a and b.startswith("pad_lightning") and graph.chain_exists(b, a)
    ]
    assert cycles == []
