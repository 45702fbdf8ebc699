"""DVC stage `cam_iinc`: Grad-CAM stability and localization (IINC) under attack ->
metrics/cam_iinc.json, plots/iinc.csv, reports/figures/cam_<model>_<attack>.png."""

from __future__ import annotations

from robust_deepfake.cam_job import cam_iinc
from robust_deepfake.cli_common import fail, stage_params
from robust_deepfake.tracking import find_repo_root


def main() -> None:
    params = stage_params(__doc__)
    try:
        compact = cam_iinc(params, find_repo_root())
    except (FileNotFoundError, ValueError) as error:
        fail(str(error))
    for model, entry in compact.items():
        for attack, per_eps in entry.items():
            if attack == "clean":
                print(f"{model:8s} clean   localization {per_eps['localization']['mean']:.3f}")
                continue
            cells = "  ".join(f"{eps}: stab {v['stability']['mean']:.3f} loc {v['localization']['mean']:.3f}"
                              for eps, v in per_eps.items())
            print(f"{model:8s} {attack:7s} {cells}")


if __name__ == "__main__":
    main()
