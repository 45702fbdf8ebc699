"""Real servers and workers on 127.0.0.1 for the multi-host tests: a Prefect server, an
MLflow tracking server, Prefect process workers. Every process starts in its own session
and is stopped by its process group id, so nothing outlives the test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from micro_repo import clean_env

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """A process in its own session, its output in a log file; `stop()` kills its group."""

    def __init__(self, name: str, args: list[str], cwd: Path, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self._handle = open(self.log, "w")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(args, cwd=cwd, env=env, stdout=self._handle, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def wait_http(self, url: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.process.returncode}):\n{self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status < 500:
                        return
            except OSError:
                pass
            time.sleep(1)
        raise AssertionError(f"{self.name}: {url} not ready after {timeout} s:\n{self.tail()}")

    def descendants(self) -> list[int]:
        import psutil

        try:
            return [child.pid for child in psutil.Process(self.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """SIGKILL to the process, its group and every descendant (a host losing power)."""
        pids = [self.pid, *self.descendants()]
        for sig_target in (lambda: os.killpg(self.pid, signal.SIGKILL),):
            try:
                sig_target()
            except ProcessLookupError:
                pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
                self.process.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                self.kill()
        leftover = self.descendants()
        for pid in leftover:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._handle.close()


def service_env(root: Path, **extra: str) -> dict[str, str]:
    env = clean_env(root)
    env.update(extra)
    return env


def start_prefect_server(home: Path, log_dir: Path) -> tuple[Service, str]:
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    env = service_env(home, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                      PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}")
    server = Service("prefect-server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                        "--port", str(port)], home, env, log_dir)
    url = f"http://127.0.0.1:{port}/api"
    server.wait_http(f"{url}/health")
    return server, url


def start_mlflow_server(folder: Path, log_dir: Path) -> tuple[Service, str]:
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    server = Service("mlflow-server", [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                                       "--workers", "1",
                                       "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                                       "--artifacts-destination", str(folder / "artifacts")],
                     folder, service_env(folder), log_dir)
    url = f"http://127.0.0.1:{port}"
    server.wait_http(f"{url}/health")
    return server, url
