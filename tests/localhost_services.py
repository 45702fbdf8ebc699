"""Real servers and workers on 127.0.0.1: a Prefect server, an MLflow tracking server,
`mlflow models serve`, Prefect process workers. Every process starts in its own session
and is stopped by its process group id, so nothing outlives the test.

Tests reach this module through conftest's `localhost` fixture, which marks them slow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from helpers import clean_env, free_port

BIN = Path(sys.executable).parent


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
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL after 20 s; returns once no process of the group is left."""
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
        if not self._group_gone(20):  # the leader exited, its children may still be shutting down
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            assert self._group_gone(10), f"{self.name}: processes of group {self.pid} survive SIGKILL"
        self._handle.close()

    def _group_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(self.pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.2)
        return False


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


def start_model_server(model: str, workdir: Path, **extra_env: str) -> tuple[Service, str]:
    """`mlflow models serve -m <model>` in this environment (`--env-manager local`) on a free
    port, its log in `workdir`; not waited for (`wait_http(f"{url}/ping")`)."""
    port = free_port()
    server = Service(f"model-server-{port}", [str(BIN / "mlflow"), "models", "serve", "-m", model,
                                              "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                     workdir, service_env(workdir, **extra_env), workdir)
    return server, f"http://127.0.0.1:{port}"


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
