"""The code base stays ruff-clean (config in pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("ruff", path=str(Path(sys.executable).parent)) is None, reason="ruff not installed")
def test_ruff_check_and_format():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    dirs = ["pulse", "pulse_config", "streams", "scoring", "schemas", "tests", "benchmarks"]
    check = subprocess.run([ruff, "check", *dirs], cwd=REPO, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    fmt = subprocess.run([ruff, "format", "--check", *dirs], cwd=REPO, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout
