"""`python -m flows.<name>` from the command line (flows/launch.py), without a Prefect
server: a failed run is one `error:` line and exit status 1, the temporary server's
start-up timeout is exit status 2 naming the setting that fixes it, and the wait for that
server is at least STARTUP_TIMEOUT_S unless the setting is exported. The real flows
failing this way: tests/test_flows.py."""

from __future__ import annotations

import pytest
from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings
from prefect.states import Completed, Failed

from flows.launch import EPHEMERAL_TIMEOUT, STARTUP_TIMEOUT_S, STARTUP_TIMEOUT_SETTING, run_flow


class FakeFlow:
    """Stands in for a Prefect flow: returns `state`, or raises `error`; records the
    parameters and the start-up timeout in force when it was called."""

    name = "fake"

    def __init__(self, state=None, error: Exception | None = None) -> None:
        self.state, self.error, self.calls = state, error, []

    def __call__(self, **parameters):
        self.calls.append((parameters, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))
        if self.error:
            raise self.error
        return self.state


def test_a_completed_run_returns_its_result_with_a_longer_start_up_wait(monkeypatch):
    monkeypatch.delenv(STARTUP_TIMEOUT_SETTING, raising=False)
    fake = FakeFlow(Completed(data={"auc": 0.9}))
    assert run_flow(fake, repo="/somewhere") == {"auc": 0.9}
    (parameters, timeout), = fake.calls
    assert parameters == {"repo": "/somewhere", "return_state": True}
    assert timeout == STARTUP_TIMEOUT_S > 20


def test_an_exported_start_up_timeout_is_kept(monkeypatch):
    monkeypatch.setenv(STARTUP_TIMEOUT_SETTING, "45")
    fake = FakeFlow(Completed(data=1))
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 45}):
        run_flow(fake)
    assert fake.calls[0][1] == 45


def test_a_failed_run_prints_its_reason_and_exits_1(capsys):
    fake = FakeFlow(Failed(message="@champion: no registered model 'robust-deepfake-detector'"))
    with pytest.raises(SystemExit) as stopped:
        run_flow(fake)
    assert stopped.value.code == 1
    captured = capsys.readouterr()
    assert captured.err == "error: flow 'fake' failed: @champion: no registered model 'robust-deepfake-detector'\n"


def test_the_server_start_up_timeout_exits_2_naming_the_setting(capsys, monkeypatch):
    monkeypatch.delenv(STARTUP_TIMEOUT_SETTING, raising=False)
    fake = FakeFlow(error=RuntimeError(f"{EPHEMERAL_TIMEOUT}. stdout: ..."))
    with pytest.raises(SystemExit) as stopped:
        run_flow(fake)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: the temporary Prefect server did not answer within {STARTUP_TIMEOUT_S} s; "
                          f"export {STARTUP_TIMEOUT_SETTING}=300")
    assert "PREFECT_API_URL" in err and "Traceback" not in err


def test_other_errors_are_not_disguised():
    with pytest.raises(RuntimeError, match="something else"):
        run_flow(FakeFlow(error=RuntimeError("something else")))
