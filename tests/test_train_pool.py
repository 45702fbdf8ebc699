"""The training pool's mechanics with stand-in jobs (no training): events relayed in order,
printed lines named by their model, one line per failure naming the model, a worker that
dies named by the model it was training, and which device each worker gets.

The stand-in jobs are module-level functions: the spawned workers import this module."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from robust_deepfake.config import validate
from robust_deepfake.errors import StageError
from robust_deepfake.paths import ModelKey
from robust_deepfake.pipeline.train_pool import Job, PoolFailure, run_jobs, worker_devices

PARAMS = validate({})


def _jobs(seeds: list[int]) -> list[Job]:
    return [Job(ModelKey("baseline", seed), PARAMS, Path(".")) for seed in seeds]


def _report(job: Job, device: torch.device, emit) -> None:
    emit("start", job.key, None)
    print(f"working on {device} at {torch.get_num_threads()} thread(s)")
    emit("epoch", job.key, {"epoch": 0, "pid": os.getpid()})
    emit("done", job.key, job.key.seed)


def _raise_on_seed_1(job: Job, device: torch.device, emit) -> None:
    emit("start", job.key, None)
    if job.key.seed == 1:
        raise RuntimeError("the loss is NaN\nand a second line")
    emit("done", job.key, job.key.seed)


def _die_on_seed_1(job: Job, device: torch.device, emit) -> None:
    emit("start", job.key, None)
    if job.key.seed == 1:
        os._exit(9)
    emit("done", job.key, job.key.seed)


def test_workers_relay_each_jobs_events_in_order_and_name_its_lines(capsys):
    events: list[tuple[str, ModelKey, object]] = []
    run_jobs(_jobs([0, 1, 2]), _report, ["cpu", "cpu"], 1, lambda *event: events.append(event), title="test")
    for seed in (0, 1, 2):
        key = ModelKey("baseline", seed)
        kinds = [kind for kind, k, _ in events if k == key]
        assert kinds == ["start", "epoch", "done"], (seed, events)
    pids = {payload["pid"] for kind, _, payload in events if kind == "epoch"}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2  # two workers took the three jobs
    out = capsys.readouterr().out
    for seed in (0, 1, 2):
        assert f"[baseline-seed{seed}] working on cpu at 1 thread(s)" in out


@pytest.mark.parametrize(("work", "reason"), [
    (_raise_on_seed_1, "RuntimeError: the loss is NaN (set ROBUST_DEEPFAKE_TRACEBACK=1 for the worker's traceback)"),
    (_die_on_seed_1, "its training process ended with exit code 9"),
], ids=["raises", "dies"])
def test_a_failure_stops_the_pool_with_one_line_naming_the_model(work, reason):
    with pytest.raises(PoolFailure) as failure:
        run_jobs(_jobs([0, 1, 2, 3]), work, ["cpu", "cpu"], 1, lambda *event: None)
    assert failure.value.key == ModelKey("baseline", 1)
    assert str(failure.value) == f"training baseline-seed1 failed: {reason}"


def test_one_device_runs_the_jobs_here_and_names_the_model_of_a_failure():
    seen = []

    def refuse_seed_1(job: Job, device: torch.device, emit) -> None:
        seen.append((job.key.seed, os.getpid()))
        if job.key.seed == 1:
            raise StageError("data/splits/train.csv: missing")

    with pytest.raises(PoolFailure, match=r"^training baseline-seed1 failed: data/splits/train.csv: missing$"):
        run_jobs(_jobs([0, 1, 2]), refuse_seed_1, ["cpu"], torch.get_num_threads(), lambda *event: None)
    assert seen == [(0, os.getpid()), (1, os.getpid())]


def test_worker_devices(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert worker_devices(cpu, "auto", 2, 3) == ["cpu", "cpu"]
    assert worker_devices(cpu, "cpu", 4, 3) == ["cpu"] * 3  # never more workers than trainings
    assert worker_devices(cpu, "cpu", 2, 1) == ["cpu"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert worker_devices(cuda, "auto", 4, 3) == ["cuda:0", "cuda:1"]  # one per GPU
    assert worker_devices(cuda, "cuda", 1, 3) == ["cuda:0"]
    assert worker_devices(torch.device("cuda:1"), "cuda:1", 4, 3) == ["cuda:1"]  # a named GPU: one worker
