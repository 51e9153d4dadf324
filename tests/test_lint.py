"""The code stays as ruff's rules in pyproject.toml want it (lint and format), so CI, which
runs the test suite, checks them too."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE = ["attnviz", "tests", "benchmarks", "experiments"]


def ruff() -> str:
    found = Path(sys.executable).with_name("ruff")
    path = str(found) if found.is_file() else shutil.which("ruff")
    if path is None:
        pytest.skip("ruff is not installed (it comes with the dev dependency group)")
    return path


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_is_clean(command: list[str]) -> None:
    done = subprocess.run(
        [ruff(), *command, *CODE], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
