"""`robust-deepfake`: the console entry point (data set-up, params, predict)."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `error: <message>` and exit without a traceback (the message names the file
    or key; a traceback would only bury it)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _data_ensure(args: argparse.Namespace) -> None:
    from robust_deepfake.data.materialize import DataStateError, ensure_raw_data

    try:
        print(ensure_raw_data(args.dvc_file, force=args.force))
    except DataStateError as error:
        fail(str(error))


def _data_generate(args: argparse.Namespace) -> None:
    from robust_deepfake.data.materialize import DataStateError, regenerate_sample
    from robust_deepfake.data.sample import SampleSpec, spec_to_meta

    overrides = {
        key: value
        for key, value in {
            "seed": args.seed,
            "image_size": args.image_size,
            "real_per_source": args.real_per_source,
            "fakes_per_method": args.fakes_per_method,
        }.items()
        if value is not None
    }
    meta = None
    if overrides:
        from robust_deepfake.data.materialize import read_dvc_file

        try:
            base = read_dvc_file(args.dvc_file).sample_meta or {}
        except DataStateError:
            base = {}
        meta = spec_to_meta(SampleSpec(**{**{k: v for k, v in base.items() if k != "generator"}, **overrides}))
    try:
        print(regenerate_sample(args.dvc_file, meta, force=args.force))
    except (DataStateError, ValueError) as error:
        fail(str(error))


def _data_ingest(args: argparse.Namespace) -> None:
    from robust_deepfake.data.dffd import IngestError, ingest_dffd

    whole = set(args.whole_image_methods.split(",")) if args.whole_image_methods else None
    try:
        report = ingest_dffd(
            args.dffd_root, args.out, mode=args.mode, resize=args.resize,
            whole_image_methods=whole, force=args.force,
        )
    except IngestError as error:
        fail(str(error))
    print(report.summary())
    print(
        "\nNext: record the new data with DVC and git (data.dvc tracks data/raw):\n"
        f"  robust-deepfake data track {args.out}\n"
        "  git add data.dvc && git commit -m 'Use DFFD'\n"
        "then apply the DFFD settings and run the pipeline:\n"
        "  robust-deepfake params merge configs/dffd_gpu.yaml\n"
        "  dvc repro"
    )


def _data_track(args: argparse.Namespace) -> None:
    """Point data.dvc at the current contents of the raw dir (the `dvc add` step)."""
    from robust_deepfake.data.materialize import DataStateError, track_raw_dir

    try:
        print(track_raw_dir(args.raw_dir, args.dvc_file, note=args.note))
    except DataStateError as error:
        fail(str(error))


def _params_check(args: argparse.Namespace) -> None:
    from robust_deepfake.config import load_params_or_exit

    load_params_or_exit(args.file)
    print(f"{args.file}: ok")


def _params_merge(args: argparse.Namespace) -> None:
    from robust_deepfake.config import ConfigError
    from robust_deepfake.params_files import merge_params_file

    try:
        changed = merge_params_file(args.overrides, args.into)
    except ConfigError as error:
        fail(str(error), code=2)
    for key, (old, new) in changed.items():
        print(f"{key}: {old!r} -> {new!r}")
    print(f"{args.into}: {len(changed)} value(s) changed")


def _predict(args: argparse.Namespace) -> None:
    from robust_deepfake.inference.command import PredictOptions, run

    raise SystemExit(run(PredictOptions(
        inputs=args.inputs, model=args.model, params=args.params, threshold=args.threshold, json=args.json,
        cam_dir=args.cam, cam_layer=args.cam_layer, batch_size=args.batch_size, device=args.device,
        progress=not args.no_progress,
    )))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robust-deepfake", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="bring data/raw into place, generate the sample, ingest DFFD")
    data_commands = data.add_subparsers(dest="data_command", required=True)

    ensure = data_commands.add_parser("ensure", help="make data/raw match data.dvc (offline)")
    ensure.add_argument("--dvc-file", default="data.dvc")
    ensure.add_argument("--force", action="store_true", help="move a modified data/raw aside")
    ensure.set_defaults(func=_data_ensure)

    generate = data_commands.add_parser("generate", help="(re)generate the bundled sample and record it in data.dvc")
    generate.add_argument("--dvc-file", default="data.dvc")
    generate.add_argument("--seed", type=int)
    generate.add_argument("--image-size", type=int)
    generate.add_argument("--real-per-source", type=int)
    generate.add_argument("--fakes-per-method", type=int)
    generate.add_argument("--force", action="store_true", help="move an existing data/raw aside")
    generate.set_defaults(func=_data_generate)

    ingest = data_commands.add_parser("ingest-dffd", help="turn a DFFD download into data/raw")
    ingest.add_argument("dffd_root")
    ingest.add_argument("--out", default="data/raw")
    ingest.add_argument("--mode", choices=["symlink", "copy"], default="symlink")
    ingest.add_argument("--resize", type=int, help="re-encode every image as an N x N PNG (copies)")
    ingest.add_argument(
        "--whole-image-methods",
        help="comma-separated fake folders that get all-ones masks (default: names containing stylegan/pggan)",
    )
    ingest.add_argument("--force", action="store_true", help="move an existing --out aside")
    ingest.set_defaults(func=_data_ingest)

    track = data_commands.add_parser("track", help="record the current data/raw in data.dvc (dvc commit)")
    track.add_argument("raw_dir", nargs="?", default="data/raw")
    track.add_argument("--dvc-file", default="data.dvc")
    track.add_argument("--note", default="", help="free text stored in data.dvc meta")
    track.set_defaults(func=_data_track)

    params = commands.add_parser("params", help="validate or merge params files")
    params_commands = params.add_subparsers(dest="params_command", required=True)
    check = params_commands.add_parser("check", help="validate a params file")
    check.add_argument("file", nargs="?", default="params.yaml")
    check.set_defaults(func=_params_check)
    merge = params_commands.add_parser("merge", help="apply an overrides file (e.g. configs/dffd_gpu.yaml)")
    merge.add_argument("overrides")
    merge.add_argument("--into", default="params.yaml")
    merge.set_defaults(func=_params_merge)

    predict = commands.add_parser(
        "predict", help="p(fake) for image files or folders, optionally with Grad-CAM overlays",
        description="Score images with a trained detector. Prints `path<TAB>p(fake)<TAB>label` per image "
        "(label at --threshold); unreadable files are reported as `error: <path>: <reason>` on stderr and "
        "the exit code is then 1 (the readable ones are still scored); 2 when the model cannot be loaded.",
    )
    predict.add_argument("inputs", nargs="+", metavar="PATH",
                         help="image files (any suffix) or folders (searched recursively for image files)")
    predict.add_argument("--model", "-m",
                         help="models:/<name>@<alias> (default: models:/<tracking.registered_model>@champion), "
                         "models:/<name>/<version>, or a local models/<variant>/seed<k>/model.pt or its folder")
    predict.add_argument("--threshold", type=float, default=0.5, help="label 'fake' when p(fake) >= this (0.5)")
    predict.add_argument("--json", action="store_true", help="print one JSON array of {path, p_fake, label[, cam]}")
    predict.add_argument("--cam", metavar="DIR", help="write a Grad-CAM overlay per image: DIR/<stem>_cam.png")
    predict.add_argument("--cam-layer", help="CAM target layer (default: params.yaml cam.target_layer)")
    predict.add_argument("--params", help="params file for tracking/cam settings (default: <repo>/params.yaml)")
    predict.add_argument("--batch-size", type=_positive_int, default=64)
    predict.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    predict.add_argument("--no-progress", action="store_true", help="no progress bar for folders")
    predict.set_defaults(func=_predict)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
