"""The repository stays clean under its own linters: ``ruff check`` and ``mypy``.

Both read their settings from ``pyproject.toml`` (``[tool.ruff]``, ``[tool.mypy]``:
packages core, search_spaces, tuning), so these tests fail on any new lint or type
error and print the tool's report.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_ruff_check_is_clean():
    proc = _run([sys.executable, "-m", "ruff", "check", str(ROOT)], timeout=120)
    assert proc.returncode == 0, f"ruff check failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.slow  # ~40 s without a mypy cache
def test_mypy_is_clean():
    proc = _run([sys.executable, "-m", "mypy"], timeout=600)
    assert proc.returncode == 0, f"mypy failed:\n{proc.stdout}\n{proc.stderr}"
