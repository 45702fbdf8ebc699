"""DVC stage `report`: figures, reports/report.{md,html}, eval/verdict.json,
metrics/report.json (headline numbers) and the MLflow aliases."""

from __future__ import annotations

from robust_deepfake.paths import find_repo_root
from robust_deepfake.pipeline.report import build_report
from robust_deepfake.stage_kit import run_stage_script
from robust_deepfake.tracking.tracker import MlflowTracker


def main() -> None:
    root = find_repo_root()
    run_stage_script(__doc__, lambda params: build_report(params, root, MlflowTracker(params, root)),
                     lambda result: result["decision"].reason)


if __name__ == "__main__":
    main()
