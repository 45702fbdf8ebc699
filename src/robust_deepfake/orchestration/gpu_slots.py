"""One GPU per cell on a host that runs several cells at once.

A Prefect process worker started with `--limit N` on an N-GPU host runs N flow runs side by
side, all inheriting the worker's CUDA_VISIBLE_DEVICES. Each run takes the first free GPU
by an exclusive `flock` on a per-GPU lock file and narrows CUDA_VISIBLE_DEVICES to it for
its stages. The kernel drops the lock when the process dies, so a crashed cell never
leaves a GPU reserved.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

LOCK_DIR_ENV = "ROBUST_DEEPFAKE_GPU_LOCKS"


def visible_gpus(env: Mapping[str, str]) -> list[str]:
    """The GPU ids this process may use: CUDA_VISIBLE_DEVICES when set ("" or -1: none),
    else every GPU nvidia-smi lists (none without the driver)."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [part.strip() for part in visible.split(",") if part.strip()]
        return [] if not ids or ids[0] == "-1" else ids
    if shutil.which("nvidia-smi") is None:
        return []
    result = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                            text=True)
    return [line.strip() for line in result.stdout.splitlines() if line.strip()] if result.returncode == 0 else []


def lock_dir(env: Mapping[str, str]) -> Path:
    folder = Path(env.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / f"robust-deepfake-gpus-{os.getuid()}")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def gpu_slot(env: Mapping[str, str], poll_s: float = 5.0, on_wait=print) -> Iterator[dict[str, str]]:
    """Hold one free GPU for the block; yields the environment entries that pin a process
    to it ({} when the host has no GPU: the stages then run where train.device says)."""
    gpus = visible_gpus(env)
    if not gpus:
        yield {}
        return
    folder = lock_dir(env)
    waited = False
    while True:
        for gpu in gpus:
            handle = open(folder / f"gpu-{gpu}.lock", "a+")  # noqa: SIM115 (held for the block)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield {"CUDA_VISIBLE_DEVICES": gpu}
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        if not waited:
            on_wait(f"all of GPUs {','.join(gpus)} are busy with other cells; waiting for one")
            waited = True
        time.sleep(poll_s)
