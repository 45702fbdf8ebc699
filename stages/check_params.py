"""DVC stage `check_params`: params.yaml (the whole file) -> metrics/params_check.json."""

from __future__ import annotations

from robust_deepfake.paths import find_repo_root
from robust_deepfake.pipeline.check_params import check_params, format_summary
from robust_deepfake.stage_kit import run_stage_script


def main() -> None:
    run_stage_script(__doc__, lambda params: check_params(params, find_repo_root()), format_summary)


if __name__ == "__main__":
    main()
