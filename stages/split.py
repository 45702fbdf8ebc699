"""DVC stage `split`: data/raw -> data/splits/{train,val,test}.csv + metrics/split.json."""

from __future__ import annotations

from robust_deepfake.paths import find_repo_root
from robust_deepfake.pipeline.split import format_summary, split
from robust_deepfake.stage_kit import run_stage_script


def main() -> None:
    run_stage_script(__doc__, lambda params: split(params, find_repo_root()), format_summary)


if __name__ == "__main__":
    main()
