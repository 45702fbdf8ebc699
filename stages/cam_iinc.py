"""DVC stage `cam_iinc`: Grad-CAM stability and localization (IINC) under attack for every
trained model -> eval/cam_iinc.json, eval/cam_iinc_values.npz, plots/iinc.csv,
reports/cam/cam_<variant>_<attack>.png."""

from __future__ import annotations

from robust_deepfake.paths import find_repo_root
from robust_deepfake.pipeline.cam_iinc import cam_iinc, format_table
from robust_deepfake.stage_kit import run_stage_script
from robust_deepfake.tracking.tracker import MlflowTracker


def main() -> None:
    root = find_repo_root()
    run_stage_script(__doc__, lambda params: cam_iinc(params, root, MlflowTracker(params, root)), format_table)


if __name__ == "__main__":
    main()
