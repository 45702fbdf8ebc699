"""DVC stage `report`: figures, reports/report.{md,html}, metrics/report.json, and the
MLflow aliases @champion / @challenger."""

from __future__ import annotations

from robust_deepfake.cli_common import fail, stage_params
from robust_deepfake.report_job import build_report
from robust_deepfake.tracking import find_repo_root


def main() -> None:
    params = stage_params(__doc__)
    try:
        summary = build_report(params, find_repo_root())
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        fail(str(error))
    for key, difference in summary["verdict"].items():
        print(f"{key:28s} reg-baseline {difference['diff']:+.3f} CI [{difference['ci'][0]:+.3f}, "
              f"{difference['ci'][1]:+.3f}] favours {difference['favours']}")
    registry = summary.get("registry", {})
    print(f"champion: {summary['champion']} (version {registry.get('champion_version')}), "
          f"challenger: {summary['challenger']} (version {registry.get('challenger_version')}); "
          "open reports/report.html")


if __name__ == "__main__":
    main()
