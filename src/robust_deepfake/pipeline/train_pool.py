"""Several jobs at once (trainings, or the evaluation stages' models): a pool of worker
processes, each pinned to one device and `threads` torch threads, each reporting to the
parent through a pipe of its own.

The parent is the one process that writes to the MLflow store and the terminal. A job
(`work(job, device, emit)`) reports through `emit(kind, key, payload)`: the parent hands
every other kind (a training's `start`, `epoch`; every job's `done`, whose payload
is its result) to its handler as they arrive (each worker's events in the
order it sent them); what a worker prints comes back line by line (shown as
`[reg-seed1] ...`), and its progress bars come back as states that the parent draws as
one line for the pool. Workers are spawned (fresh interpreters: no forked torch threads
or sqlite connections), take jobs in order from a shared queue and exit when the parent
dies. The first failure stops the pool: PoolFailure names the job; its caller cleans up.

A job computes the same bytes wherever it runs (a fresh worker, a worker that ran other
jobs before, or this process at the same thread count): each job seeds everything itself.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from robust_deepfake.config import Params
from robust_deepfake.errors import StageError
from robust_deepfake.model.device import set_threads
from robust_deepfake.progress import forward_progress, progress

TRACEBACK_ENV = "ROBUST_DEEPFAKE_TRACEBACK"  # as stage_kit: print a failed worker's traceback
POLL_SECONDS = 1.0  # how often a worker checks that its parent is alive
STOP_SECONDS = 30.0  # how long a worker may take to exit (after its last job, or once terminated)



class JobKey(Protocol):
    """What names a job (a ModelKey, or a group of models): hashable, picklable, with a name."""

    @property
    def name(self) -> str: ...


Emit = Callable[[str, JobKey, Any], None]
Handler = Callable[[str, JobKey, Any], None]


@dataclass(frozen=True)
class Job:
    """One job: what it computes (a model, or a group), its params and the repository."""

    key: JobKey
    params: Params
    root: Path


Work = Callable[[Job, torch.device, Emit], Any]


class PoolFailure(StageError):
    """A job failed (or its worker died); str() names the job and says why, in one line
    (`training baseline-seed1 failed: ...`; `task` names what a job does)."""

    def __init__(self, key: JobKey | None, reason: str, task: str = "training") -> None:
        self.key = key
        super().__init__(f"{task} {key.name if key else '(none started yet)'} failed: {reason}")


def worker_devices(device: torch.device, train_device: str, workers: int, jobs: int) -> list[str]:
    """The device of each worker: `workers` (at most one per job) on the CPU; on CUDA one
    per visible GPU, at most `workers`, when `train.device` is auto or cuda (a named
    cuda:N, or MPS: one worker)."""
    wanted = max(1, min(workers, jobs))
    if device.type == "cpu":
        return ["cpu"] * wanted
    if device.type == "cuda" and train_device in ("auto", "cuda"):
        return [f"cuda:{i}" for i in range(min(wanted, torch.cuda.device_count()))] or [str(device)]
    return [str(device)]


def run_jobs(jobs: Sequence[Job], work: Work, devices: Sequence[str], threads: int, handle: Handler,
             title: str = "train", task: str = "training", unit: str = "model") -> None:
    """Run every job: in this process one after the other when there is one device (it
    prints and draws its own bars), else in a pool of one spawned worker per device.
    `title` heads the pool's bar, which counts finished jobs in `unit`s; `task` names a
    job in a PoolFailure."""
    if len(devices) == 1 or len(jobs) == 1:
        set_threads(threads)
        for job in jobs:
            try:
                work(job, torch.device(devices[0]), handle)
            except StageError as error:
                raise PoolFailure(job.key, str(error), task) from None
        return
    _Pool(jobs, work, devices, threads, handle, title, task, unit).run()


class _Pool:
    """The parent's side: start the workers, relay their events, watch them, stop them.

    Each worker sends its events through a pipe of its own, synchronously (a dying worker
    leaves nothing unsent in a buffer), starting with `take` when it takes a job: so when a
    worker dies, the parent knows which job it was on."""

    def __init__(self, jobs: Sequence[Job], work: Work, devices: Sequence[str], threads: int, handle: Handler,
                 title: str, task: str, unit: str) -> None:
        self.jobs, self.work, self.devices, self.threads, self.handle = list(jobs), work, list(devices), threads, handle
        self.task = task
        self.context = multiprocessing.get_context("spawn")
        self.current: dict[int, JobKey | None] = dict.fromkeys(range(len(self.devices)))
        self.display = _Display(title, len(self.jobs), len(self.devices), unit)
        self.done = 0

    def run(self) -> None:
        tasks = self.context.Queue()
        for job in self.jobs:
            tasks.put(job)
        for _ in self.devices:
            tasks.put(None)  # one stop sign per worker, after every job
        started: list = []
        succeeded = False
        try:
            readers: dict = {}
            for index, device in enumerate(self.devices):
                reader, writer = self.context.Pipe(duplex=False)
                worker = self.context.Process(target=_worker, name=f"{self.task}-worker-{index}",
                                              args=(index, self.work, tasks, writer, device, self.threads, os.getpid()))
                worker.start()
                writer.close()  # the worker holds the writing end: its exit ends the pipe
                started.append(worker)
                readers[reader] = index
            self._relay(readers, started)
            succeeded = True
        finally:
            self.display.close()
            for worker in started:  # after success they are past their stop sign: let them exit
                worker.join(timeout=STOP_SECONDS if succeeded else 0)
                if worker.is_alive():
                    worker.terminate()
                    worker.join(timeout=STOP_SECONDS)
            tasks.cancel_join_thread()  # the jobs a stopped pool left in the queue are not waited for
            tasks.close()

    def _relay(self, readers: dict, workers: list) -> None:
        """Hand on every event until every job is done; PoolFailure at the first failure,
        or when a worker's pipe ends (it died) before its job was done."""
        while self.done < len(self.jobs):
            if not readers:
                raise PoolFailure(None, "every worker stopped with jobs left (a bug)", self.task)
            for reader in multiprocessing.connection.wait(list(readers)):
                index = readers[reader]
                try:
                    kind, key, payload = reader.recv()
                except EOFError:  # the worker exited: after its stop sign, or died
                    del readers[reader]
                    workers[index].join(timeout=STOP_SECONDS)
                    if self.current[index] is not None:
                        code = workers[index].exitcode
                        why = " (killed by the OS: out of memory?)" if code == -9 else ""
                        raise PoolFailure(self.current[index],
                                          f"its {self.task} process ended with exit code {code}{why}",
                                          self.task) from None
                    continue
                self._dispatch(index, kind, key, payload)

    def _dispatch(self, index: int, kind: str, key: JobKey, payload: Any) -> None:
        if kind == "failed":
            raise PoolFailure(key, payload, self.task)
        if kind == "take":
            self.current[index] = key
        elif kind == "line":
            self.display.write(f"[{key.name}] {payload}" if key else payload)
        elif kind == "progress":
            self.display.status(index, key, payload)
        else:
            self.handle(kind, key, payload)
            if kind == "done":
                self.current[index] = None
                self.display.finished(index)
                self.done += 1


class _Display:
    """One line for the pool (`train_reg: 1/3 models [01:12], reg-seed1 epoch 2/4 63% loss=0.41
    | reg-seed2 ...`) with the workers' printed lines above it."""

    def __init__(self, title: str, jobs: int, workers: int, unit: str) -> None:
        self.states: list[str] = [""] * workers
        self.bar = progress(total=jobs, desc=title, unit=unit,
                            bar_format="{desc}: {n}/{total} " + unit + "s [{elapsed}]{postfix}")

    def write(self, line: str) -> None:
        self.bar.write(line, file=sys.stdout)

    def status(self, index: int, key: JobKey | None, state: tuple[str, int, int | None, str]) -> None:
        desc, n, total, postfix = state
        share = f" {100 * n // total}%" if total else ""
        self.states[index] = f"{key.name if key else ''} {desc}{share} {postfix}".strip()
        self._show()

    def finished(self, index: int) -> None:
        self.states[index] = ""
        self.bar.update(1)
        self._show()

    def _show(self) -> None:
        self.bar.set_postfix_str(" | ".join(state for state in self.states if state), refresh=False)
        self.bar.update(0)  # redraws only as often as progress() allows

    def close(self) -> None:
        self.bar.close()


class _Lines:
    """sys.stdout of a worker: each complete line goes to `send`."""

    def __init__(self, send: Callable[[str], None]) -> None:
        self.send, self.pending = send, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if line.strip():
                self.send(line)
        return len(text)

    def flush(self) -> None:
        if self.pending.strip():
            self.send(self.pending)
        self.pending = ""

    def isatty(self) -> bool:
        return False


def _exit_with_parent(parent: int) -> None:
    """A worker whose parent died (killed stage) stops at once instead of training on."""

    def watch() -> None:
        while True:
            time.sleep(POLL_SECONDS)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _worker(index: int, work: Work, tasks, events, device: str, threads: int, parent: int) -> None:
    """A worker process: pinned to `device` and `threads`, it runs jobs until the stop sign,
    sending every event through its pipe `events`."""
    _exit_with_parent(parent)
    set_threads(threads)
    current: list[JobKey | None] = [None]

    def emit(kind: str, key: JobKey | None, payload: Any = None) -> None:
        events.send((kind, key, payload))

    def bar_state(bar) -> None:
        emit("progress", current[0], (bar.desc, int(bar.n), bar.total, bar.postfix or ""))

    sys.stdout = _Lines(lambda line: emit("line", current[0], line))
    forward_progress(bar_state)
    try:
        while (job := tasks.get()) is not None:
            current[0] = job.key
            emit("take", job.key)
            work(job, torch.device(device), emit)
            sys.stdout.flush()
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the parent reports it
        os._exit(130)
    except BaseException as error:  # noqa: BLE001 (every failure is reported to the parent)
        sys.stdout.flush()
        if os.environ.get(TRACEBACK_ENV):
            traceback.print_exc()
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        if not isinstance(error, StageError):
            reason = f"{type(error).__name__}: {reason}" + (
                "" if os.environ.get(TRACEBACK_ENV) else f" (set {TRACEBACK_ENV}=1 for the worker's traceback)")
        emit("failed", current[0], reason)
    finally:
        events.close()
