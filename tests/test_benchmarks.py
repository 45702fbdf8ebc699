"""The benchmark scripts: the GPU device check's --help, and its plumbing on the CPU
(`benchmarks.gpu_check --allow-cpu`: tiny sizes, one JSON line per figure, none of the
pipeline's heavy tools imported). The CPU run has a 60 s budget: it is in the slow tier."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# The GPU image has none of these: the check must not import them, directly or not.
BLOCKED = ("mlflow", "dvc", "prefect", "pytorch_grad_cam")
FIGURE_KEYS = {"name", "value", "unit", "target", "pass"}
EXPECTED = {
    "device",
    "train.step_baseline_img_s", "train.step_reg_random_over_baseline", "train.step_reg_gradient_over_baseline",
    "train.loop_img_s", "train.bound_img_s", "train.loop_over_bound",
    "attacks.pgd_grad_img_s", "attacks.pgd_ours_over_torchattacks", "attacks.sweep_grad_img_s",
    "attacks.sweep_over_pgd", "attacks.amp_accuracy_change",
    "loader.decode_img_s_workers_0", "loader.best_decode_img_s", "loader.best_over_train_bound",
    "imports_forbidden", "elapsed_s",
}


def _python(code: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _gpu_check(args: list[str], block: tuple[str, ...] = BLOCKED) -> subprocess.CompletedProcess:
    """gpu_check.main(args) in a fresh interpreter where importing any of `block` fails."""
    code = (f"import sys\nfor name in {list(block)!r}: sys.modules[name] = None\n"
            f"from benchmarks.gpu_check import main\nsys.exit(main({args!r}))")
    return _python(code)


@pytest.mark.slow
def test_gpu_check_help():
    result = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "--device" in result.stdout


@pytest.fixture(scope="module")
def cpu_check() -> subprocess.CompletedProcess:
    return _gpu_check(["--allow-cpu", "--budget-s", "60", "--threads", "1"])


@pytest.mark.slow
def test_gpu_check_on_the_cpu_prints_one_json_figure_per_line(cpu_check):
    assert cpu_check.returncode == 0, cpu_check.stderr[-3000:]
    lines = cpu_check.stdout.splitlines()
    assert lines, cpu_check.stderr[-3000:]
    records = [json.loads(line) for line in lines]  # stdout holds nothing but figures
    for record in records:
        assert FIGURE_KEYS <= set(record), record
        assert record["pass"] in (True, False, None)
        if record["target"] is None:
            assert record["pass"] is None
    names = [record["name"] for record in records]
    assert len(names) == len(set(names))
    assert EXPECTED <= set(names), EXPECTED - set(names)
    assert not any(name.endswith(".error") for name in names)
    by_name = {record["name"]: record for record in records}
    assert by_name["imports_forbidden"]["value"] == 0 and by_name["imports_forbidden"]["pass"] is True
    for name in ("train.loop_img_s", "train.bound_img_s", "attacks.pgd_grad_img_s", "loader.best_decode_img_s"):
        assert by_name[name]["value"] > 0


def test_gpu_check_refuses_to_start_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    result = _gpu_check(["--budget-s", "5"])
    assert result.returncode == 2
    assert "CUDA is not available" in result.stderr and "--allow-cpu" in result.stderr
    assert result.stdout == ""


def test_gpu_check_says_how_to_carry_pydantic_when_it_is_missing():
    result = _gpu_check(["--allow-cpu"], block=(*BLOCKED, "pydantic"))
    assert result.returncode == 3
    assert "pip download" in result.stderr and "pydantic==2.14.4" in result.stderr
    assert "--target /tmp/site" in result.stderr
    assert result.stdout == ""


def test_figure_pass_follows_its_target():
    from benchmarks.common import figure

    assert figure("a", 0.95, "ratio", ">= 0.9")["pass"] is True
    assert figure("a", 0.85, "ratio", ">= 0.9")["pass"] is False
    assert figure("a", 1.2, "x", "<= 1.05")["pass"] is False
    assert figure("a", 3.0, "img/s")["pass"] is None
    assert figure("a", None, "x", "<= 1")["pass"] is None


def test_loader_worker_counts():
    from benchmarks.loader import default_workers

    assert default_workers(1) == [0]
    assert default_workers(2) == [0, 2]
    assert default_workers(16) == [0, 2, 4, 8, 16]
    assert default_workers(12) == [0, 2, 4, 8]


def test_train_step_help_names_its_options():
    result = subprocess.run([sys.executable, "-m", "benchmarks.train_step", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for option in ("--steps", "--loop-steps", "--threads", "--train-threads", "--compile", "--concurrency"):
        assert option in result.stdout, option


def test_train_step_verdict_follows_its_target():
    from benchmarks.train_step import verdict

    assert verdict(1.5, "<= 1.5").endswith("PASS)") and verdict(1.51, "<= 1.5").endswith("MISSED)")
    assert verdict(0.9, ">= 0.9").endswith("PASS)") and verdict(0.89, ">= 0.9").endswith("MISSED)")
