"""`reevaluate.cron`: the rules Prefect applies when it serves the scheduled re-evaluation."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any


@lru_cache(maxsize=1)
def _croniter() -> Any:
    """Prefect's own cron parser: the croniter it vendors and checks `serve(cron=...)` with.
    Loaded from its file: importing it through the prefect package costs ~2 s, and every
    stage validates params. Falls back to the regular import if Prefect moves it."""
    import importlib
    import importlib.util

    spec = importlib.util.find_spec("prefect")
    path = Path(spec.origin).parent / "_vendor" / "croniter" / "croniter.py" if spec and spec.origin else None
    if path is not None and path.is_file():
        module_spec = importlib.util.spec_from_file_location("robust_deepfake._prefect_croniter", path)
        if module_spec is not None and module_spec.loader is not None:
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            return module
    return importlib.import_module("prefect._vendor.croniter.croniter")


def cron_problem(value: str) -> str | None:
    """Why Prefect would refuse the cron expression or never run it, or None. The rules of
    prefect's validate_cron_string (croniter.is_valid; no R or H fields), a 5-field
    expression, and at least one date on which it fires (`0 3 30 2 *` never does)."""
    import datetime

    fields = value.split()
    if len(fields) != 5:
        return "expected a 5-field cron expression: minute hour day-of-month month day-of-week"
    if any(field.casefold() in {"r", "h"} for field in fields):
        return "random (R) and hashed (H) fields are not supported by Prefect"
    cron = _croniter()
    if not cron.croniter.is_valid(value):
        return "not a valid cron expression: minute hour day-of-month month day-of-week"
    try:
        cron.croniter(value, datetime.datetime(2001, 1, 1, tzinfo=datetime.timezone.utc)).get_next(datetime.datetime)
    except cron.CroniterBadDateError:
        return "never fires: no date matches it"
    return None
