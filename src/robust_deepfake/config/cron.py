"""`reevaluate.cron`: the rules Prefect applies when it serves the scheduled re-evaluation.

Every params load checks the shape (schema.cron_shape_problem: five fields, no random (R)
or hashed (H) ones; no import, no cost). `cron_problem` adds Prefect's own parser, through its
public schedule schema, and asks for one firing date; importing Prefect takes about two
seconds, so `robust-deepfake params check` and `params merge` run it
(`require_prefect_cron`), not every stage.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from robust_deepfake.config.problems import ConfigError
from robust_deepfake.config.schema import CRON_FIELDS, cron_shape_problem


def cron_problem(value: str) -> str | None:
    """Why Prefect would refuse the cron expression or never run it, or None: the shape,
    Prefect's CronSchedule validation (its `serve(cron=...)` check), and at least one date
    on which it fires (`0 3 30 2 *` never does)."""
    import asyncio

    from prefect.server.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    problem = cron_shape_problem(value)
    if problem:
        return problem
    try:
        schedule = CronSchedule(cron=value, timezone="UTC")
    except ValidationError:
        return f"not a valid cron expression: {CRON_FIELDS}"
    start = datetime.datetime(2001, 1, 1, tzinfo=datetime.timezone.utc)
    try:
        dates = schedule.get_dates(n=1, start=start)
        if asyncio.iscoroutine(dates):
            dates = asyncio.run(dates)
    except ValueError:  # croniter's "failed to find next date"
        return "never fires: no date matches it"
    return None if dates else "never fires: no date matches it"


def require_prefect_cron(value: str, source: str | Path) -> None:
    """ConfigError `<source>: reevaluate.cron: <why> (got '<value>')` unless Prefect would
    serve `value` and it fires (cron_problem)."""
    problem = cron_problem(value)
    if problem:
        raise ConfigError(f"{source}: reevaluate.cron: {problem} (got {value!r})")
