"""DVC stage `report`: figures, reports/report.{md,html}, eval/verdict.json,
metrics/report.json (headline numbers) and the MLflow aliases."""

from __future__ import annotations

from robust_deepfake.paths import find_repo_root
from robust_deepfake.pipeline.report import build_report
from robust_deepfake.stage_kit import run_stage


def main() -> None:
    run_stage(__doc__, lambda params: build_report(params, find_repo_root()), lambda result: result["decision"].reason)


if __name__ == "__main__":
    main()
