"""Running a flow from the command line (`python -m flows.<name>`): its result on success;
on failure one line `error: <reason>` on stderr and exit status 1, never a Prefect
traceback.

Without PREFECT_API_URL, Prefect starts a temporary server for the run and waits
PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS for it (Prefect's default, 20 s, is too
short on a loaded machine); unless that setting is in the environment, the wait here is
at least STARTUP_TIMEOUT_S, and a server that still does not answer ends the run with exit status
2 and a line naming the setting (docs/orchestration.md)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

STARTUP_TIMEOUT_SETTING = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
STARTUP_TIMEOUT_S = 120
EPHEMERAL_TIMEOUT = "Timed out while attempting to connect to ephemeral Prefect API server"


def startup_timeout_s() -> int:
    """The seconds the temporary server gets to start: the setting when exported, else the
    larger of the configured value (a Prefect profile's) and STARTUP_TIMEOUT_S."""
    from prefect.settings import get_current_settings

    configured = get_current_settings().server.ephemeral.startup_timeout_seconds
    return configured if STARTUP_TIMEOUT_SETTING in os.environ else max(configured, STARTUP_TIMEOUT_S)


def run_flow(flow: Callable[..., Any], **parameters: Any) -> Any:
    """Run `flow(**parameters)`; its result, or SystemExit(1) after `error: <state message>`
    when the run fails, SystemExit(2) when the temporary server does not start in time."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    timeout = startup_timeout_s()
    try:
        with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: timeout}):
            state = flow(**parameters, return_state=True)
    except RuntimeError as error:
        if EPHEMERAL_TIMEOUT not in str(error):
            raise
        print(f"error: the temporary Prefect server did not answer within {timeout} s; export "
              f"{STARTUP_TIMEOUT_SETTING}=300 (or start a server, `prefect server start`, and export "
              "PREFECT_API_URL=http://127.0.0.1:4200/api; docs/orchestration.md)", file=sys.stderr)
        raise SystemExit(2) from None
    if state.is_failed() or state.is_crashed() or state.is_cancelled():
        print(f"error: flow {getattr(flow, 'name', flow)!r} {state.type.value.lower()}: {state.message}",
              file=sys.stderr)
        raise SystemExit(1)
    return state.result()
