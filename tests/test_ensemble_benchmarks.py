"""The ensemble benchmarks' command lines (their figures are measured by hand: docs/attacks.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module", ["ensemble_cost", "attack_libraries", "sweep_cost"])
def test_help(module):
    result = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "--root" in result.stdout


def test_attack_libraries_without_art_says_how_to_install_it():
    code = ("import sys\nsys.modules['art'] = None\nfrom benchmarks.attack_libraries import main\n"
            "main(['--images', '2'])")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "pip install --target /tmp/art --no-deps adversarial-robustness-toolbox" in result.stderr
    assert "Traceback" not in result.stderr
