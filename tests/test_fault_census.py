"""The fault census (benchmarks/fault_cases.py) on the trained micro repo: every case ends
as its own expectation says (a clear error with its exit code, or success), none silent,
none in a traceback, none hanging. Full tier only: it runs the real CLIs some 60 times."""

from __future__ import annotations

import json
import sys

import pytest

from helpers import REPO, run

pytestmark = pytest.mark.slow


def test_every_fault_case_is_a_clear_error_or_succeeds(micro_repo):
    done = run([sys.executable, "-m", "benchmarks.fault_cases", "--repo", str(micro_repo)], REPO, check=False,
               timeout=3600)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, done.stderr[-3000:]
    *cases, summary = lines
    failed = [case for case in cases if case["outcome"] not in ("CLEAR", "OK", "SKIP")]
    assert not failed, json.dumps(failed, indent=1)
    assert done.returncode == 0, done.stderr[-3000:]
    assert summary["silent"] == summary["traceback"] == summary["hang"] == 0
    assert summary["cases"] == len(cases) >= 44  # the census's cases: fewer means some were dropped
