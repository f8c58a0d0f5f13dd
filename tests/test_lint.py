"""The code base stays ruff-clean, layered and type-checked (config of all three in pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = str(Path(sys.executable).parent)


def tool(name: str) -> str | None:
    """A dev tool of this virtualenv (pip install -e .[dev]), or None."""
    return shutil.which(name, path=BIN)


@pytest.mark.skipif(tool("ruff") is None, reason="ruff not installed")
def test_ruff_check_and_format():
    ruff = tool("ruff")
    dirs = ["pulse", "pulse_config", "streams", "scoring", "schemas", "testing", "tests", "benchmarks"]
    check = subprocess.run([ruff, "check", *dirs], cwd=REPO, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    fmt = subprocess.run([ruff, "format", "--check", *dirs], cwd=REPO, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout


@pytest.mark.skipif(tool("lint-imports") is None, reason="import-linter not installed")
def test_import_layers():
    """[tool.importlinter]: scoring < pulse_config < schemas < streams (Faust-free engine, then the runtime
    shell) < pulse < testing < benchmarks | tests; nothing imports upward."""
    result = subprocess.run([tool("lint-imports"), "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(tool("mypy") is None, reason="mypy not installed")
def test_types():
    """[tool.mypy]: strict on scoring/ and pulse_config/, lenient on the rest of the installed packages."""
    result = subprocess.run([tool("mypy")], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
