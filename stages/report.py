"""DVC stage `report`: figures, reports/report.{md,html}, metrics/report.json, and the
MLflow aliases @champion / @challenger."""

from __future__ import annotations

import argparse

from robust_deepfake.cli_common import fail
from robust_deepfake.config import load_params_or_exit
from robust_deepfake.report_job import build_report
from robust_deepfake.tracking import find_repo_root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_params_or_exit(args.params)
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
