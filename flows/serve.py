"""Register the two deployments: `python -m flows.serve` from the repository root.

* `pipeline/on-demand`: the DVC pipeline, run when triggered (`prefect deployment run`);
* `reevaluate/scheduled`: the re-evaluation, on `reevaluate.cron` from params.yaml (UTC).

By default this process serves them: it runs their flow runs itself, one at a time (they
share this checkout's workspace), until stopped; Ctrl-C or SIGTERM pauses the schedule.
With `--work-pool NAME` it only registers them in that process work pool and exits; a
worker on each GPU host (`prefect worker start --pool NAME --limit 1`) then runs them in
the clone at `--checkout` (default: this clone's path, so clone the repository at the
same path on every host). Both need a Prefect server (PREFECT_API_URL): served
schedules do not run against a temporary one. `--notify-block TYPE/NAME` makes that
saved notification block the re-evaluation's default `notify_block` (alerts on a drop);
it is checked to load before anything is registered.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect import deploy, serve
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.settings import get_current_settings

from flows.pipeline import pipeline
from flows.reevaluate import NotifyBlockError, load_notifier, reevaluate
from robust_deepfake.config import DEFAULT_PARAMS, load_params_or_exit

REPO = Path(__file__).resolve().parents[1]
TAGS = ["robust-deepfake"]


def build_deployments(
    root: Path = REPO, checkout: Path | None = None, notify_block: str | None = None,
) -> list[RunnerDeployment]:
    """Both deployments, the schedule read from root/params.yaml (validated strictly);
    `notify_block` becomes the re-evaluation's default parameter (its alerts).

    With `checkout` (for a work pool) the entrypoints are module paths
    (`flows.pipeline.pipeline`) run with that directory as working directory: each worker
    imports the flows from its own clone at that path, so no code storage is needed."""
    params = load_params_or_exit(root / DEFAULT_PARAMS)
    entrypoint = {} if checkout is None else {
        "entrypoint_type": EntrypointType.MODULE_PATH, "job_variables": {"working_dir": str(checkout)},
    }
    return [
        pipeline.to_deployment(
            name="on-demand", tags=TAGS, **entrypoint,
            description="dvc repro, one task per dvc.yaml stage; overrides=[...] make a DVC experiment",
        ),
        reevaluate.to_deployment(
            name="scheduled", tags=TAGS, cron=params.reevaluate.cron, **entrypoint,
            parameters={"notify_block": notify_block} if notify_block else {},
            description=f"Re-evaluate @{', @'.join(params.reevaluate.aliases)} (reevaluate.cron "
                        f"{params.reevaluate.cron!r} UTC); fails on a drop > {params.reevaluate.max_drop}"
                        + (f", alerting through {notify_block}" if notify_block else ""),
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-pool", help="register the deployments in this process work pool instead of serving")
    parser.add_argument("--checkout", type=Path, default=REPO,
                        help="with --work-pool: where the workers' clones are (default: this one's path)")
    parser.add_argument("--notify-block", metavar="TYPE/NAME",
                        help="a saved Prefect notification block (e.g. slack-webhook/robustness-alerts): the "
                             "re-evaluation sends its drop alerts through it")
    args = parser.parse_args(argv)
    if not get_current_settings().api.url:
        print(
            "error: PREFECT_API_URL is not set. Start a server (`prefect server start --host 127.0.0.1`) "
            "and export PREFECT_API_URL=http://127.0.0.1:4200/api (see docs/orchestration.md)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    if args.notify_block:
        try:
            load_notifier(args.notify_block)
        except NotifyBlockError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
    deployments = build_deployments(REPO, checkout=args.checkout if args.work_pool else None,
                                    notify_block=args.notify_block)
    if args.work_pool:
        deploy(*deployments, work_pool_name=args.work_pool, build=False, push=False, ignore_warnings=True)
    else:
        # one flow run at a time: runs share this workspace (params.yaml, dvc.lock) and its GPU
        serve(*deployments, limit=1)


if __name__ == "__main__":
    main()
