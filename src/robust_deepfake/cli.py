"""`robust-deepfake`: the console entry point (data set-up, params, predict, re-evaluation checks)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from robust_deepfake import __version__
from robust_deepfake.config import DEFAULT_PARAMS, ConfigError, load_params_or_exit
from robust_deepfake.config.cron import require_prefect_cron
from robust_deepfake.config.merge import merge_overrides, merge_params_file, missing_sections, path_problems
from robust_deepfake.data.dffd import IngestError, ingest_dffd
from robust_deepfake.data.materialize import (
    DVC_FILE,
    DataStateError,
    ensure_raw_data,
    read_dvc_file,
    regenerate_sample,
    track_raw_dir,
)
from robust_deepfake.data.sample import SampleSpec, spec_to_meta
from robust_deepfake.errors import StageError, os_error_line
from robust_deepfake.explain.layers import target_layer_problem
from robust_deepfake.paths import find_repo_root
from robust_deepfake.tracking.store import configure, landing_url


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `error: <message>` and exit without a traceback (the message names the file
    or key; a traceback would only bury it)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _data_ensure(args: argparse.Namespace) -> None:
    try:
        print(ensure_raw_data(args.dvc_file, force=args.force))
    except DataStateError as error:
        fail(str(error), code=2)


def _data_generate(args: argparse.Namespace) -> None:
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
        try:
            base = read_dvc_file(args.dvc_file).sample_meta or {}
        except DataStateError:
            base = {}
        meta = spec_to_meta(SampleSpec(**{**{k: v for k, v in base.items() if k != "generator"}, **overrides}))
    try:
        print(regenerate_sample(args.dvc_file, meta, force=args.force))
    except (DataStateError, ValueError) as error:
        fail(str(error), code=2)


def _data_ingest(args: argparse.Namespace) -> None:
    whole = set(args.whole_image_methods.split(",")) if args.whole_image_methods else None
    try:
        report = ingest_dffd(
            args.dffd_root, args.out, mode=args.mode, resize=args.resize,
            whole_image_methods=whole, force=args.force,
        )
    except IngestError as error:
        fail(str(error), code=2)
    print(report.summary())
    print(
        "\nNext: record the new data with DVC and git (data.dvc tracks data/raw):\n"
        f"  robust-deepfake data track {args.out}   # links it into .dvc/cache: one copy on disk\n"
        "  git add data.dvc && git commit -m 'Use DFFD'\n"
        "then apply the DFFD settings and run the pipeline:\n"
        "  robust-deepfake params merge configs/dffd_gpu.yaml\n"
        "  dvc repro"
    )


def _data_track(args: argparse.Namespace) -> None:
    """Point data.dvc at the current contents of the raw dir (the `dvc add` step)."""
    try:
        print(track_raw_dir(args.raw_dir, args.dvc_file, note=args.note, link_cache=not args.no_link_cache))
    except DataStateError as error:
        fail(str(error), code=2)


def _params_check(args: argparse.Namespace) -> None:
    file = Path(args.file)
    onto = _overrides_base(file, args.onto, args.whole)
    if onto is None:
        params, checked, base_dir = load_params_or_exit(file), str(file), file.parent
    else:
        try:
            params = merge_overrides(file, onto).params
        except ConfigError as error:
            fail(str(error).replace("\n", "\nerror: "), code=2)
        checked, base_dir = f"{file} merged onto {onto}", onto.parent
    layer = target_layer_problem(params.model.name, params.cam.target_layer)
    if layer:  # needs the architecture: checked here and before the first training, not in config.py
        fail(f"{checked}: cam.target_layer: {layer} (got {params.cam.target_layer!r})", code=2)
    try:  # Prefect's own parser (an import of prefect): checked here, not by every stage
        require_prefect_cron(params.reevaluate.cron, checked)
    except ConfigError as error:
        fail(str(error), code=2)
    if not args.schema_only:
        problems = path_problems(params, base_dir)
        if problems:
            fail("\n".join(f"{checked}: {problem}" for problem in problems).replace("\n", "\nerror: "), code=2)
    print(f"{checked}: ok" + (" (schema only; paths not checked)" if args.schema_only else ""))
    if onto is not None and not args.onto:
        print(f"note: {file} sets only some sections (an overrides file): checked merged onto {onto}; "
              f"apply it with `robust-deepfake params merge {file}`, or check it alone with --whole")


def _overrides_base(file: Path, onto: str | None, whole: bool) -> Path | None:
    """The params file to check `file` merged onto: --onto; else, for a file not named
    params.yaml that leaves out sections (configs/*.yaml), its repository's params.yaml;
    None to check `file` alone."""
    if onto is not None:
        return Path(onto)
    if whole or file.name == DEFAULT_PARAMS.name:
        return None
    try:
        partial = bool(missing_sections(file))
    except ConfigError:
        return None  # unreadable: load_params says why
    base = find_repo_root(file.resolve().parent) / DEFAULT_PARAMS
    return base if partial and base.is_file() and base.resolve() != file.resolve() else None


def _params_merge(args: argparse.Namespace) -> None:
    try:
        changed = merge_params_file(args.overrides, args.into)
    except ConfigError as error:
        fail(str(error).replace("\n", "\nerror: "), code=2)
    for key, (old, new) in changed.items():
        print(f"{key}: {old!r} -> {new!r}")
    if changed:
        print(f"{args.into}: {len(changed)} value(s) changed")
    else:
        print(f"{args.into}: unchanged, not rewritten (every value in {args.overrides} already applies)")


def _predict(args: argparse.Namespace) -> None:
    from robust_deepfake.inference.command import PredictOptions, run  # torch: loaded only for this command

    raise SystemExit(run(PredictOptions(
        inputs=args.inputs, model=args.model, params=args.params, threshold=args.threshold, json=args.json,
        cam_dir=args.cam, cam_layer=args.cam_layer, batch_size=args.batch_size, device=args.device,
        progress=not args.no_progress,
    )))


def _reevaluate_simulate_drop(args: argparse.Namespace) -> None:
    from robust_deepfake.monitoring.reevaluate import simulate_drop  # torch: loaded only for this command

    root = find_repo_root()
    params = load_params_or_exit(root / DEFAULT_PARAMS)
    try:
        run_id = simulate_drop(params, root, args.alias, args.previous)
    except StageError as error:  # no such alias, nothing to score
        fail(str(error), code=2)
    print(f"@{args.alias}: its next re-evaluation compares with run {run_id} ({args.previous}) and reports a drop")


def _mlflow_url(args: argparse.Namespace) -> None:
    """Print the experiment's runs table address (tracking.store.landing_url)."""
    import mlflow  # loaded only for this command

    root = find_repo_root()
    params = load_params_or_exit(Path(args.params) if args.params else root / DEFAULT_PARAMS)
    uri = configure(params.tracking, root)
    experiment = mlflow.get_experiment_by_name(params.tracking.experiment)
    if experiment is None:
        fail(f"no experiment {params.tracking.experiment!r} in {uri} yet: run `dvc repro` (or `make demo`) first",
             code=2)
    print(landing_url(args.server, experiment.experiment_id))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends `(default: X)` to every help text, except where there is nothing to show
    (no default, a plain flag) or the text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def _parser(commands, name: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand parser with the defaults shown in its --help."""
    kwargs.setdefault("description", kwargs.get("help"))
    return commands.add_parser(name, formatter_class=_HelpFormatter, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robust-deepfake", description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"robust-deepfake {__version__}",
                        help="print the package version and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to do")

    _add_data(commands)
    _add_params(commands)
    _add_predict(commands)
    _add_mlflow_url(commands)
    _add_reevaluate(commands)
    return parser


def _add_data(commands) -> None:
    data = _parser(commands, "data", help="bring data/raw into place, generate the sample, ingest DFFD")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="STEP", help="the data step")

    dvc_file_help = "the DVC file that tracks the raw data directory"
    ensure = _parser(data_commands, "ensure", help="make data/raw match data.dvc (offline)")
    ensure.add_argument("--dvc-file", default=DVC_FILE, help=dvc_file_help)
    ensure.add_argument("--force", action="store_true", help="move a modified data/raw aside (deletes nothing)")
    ensure.set_defaults(func=_data_ensure)

    generate = _parser(data_commands, "generate", help="(re)generate the bundled sample and record it in data.dvc")
    generate.add_argument("--dvc-file", default=DVC_FILE, help=dvc_file_help)
    recorded = "(default: the value data.dvc records)"
    generate.add_argument("--seed", type=int, help=f"generator seed {recorded}")
    generate.add_argument("--image-size", type=int, help=f"image side in pixels {recorded}")
    generate.add_argument("--real-per-source", type=int, help=f"real images per real source {recorded}")
    generate.add_argument("--fakes-per-method", type=int, help=f"fake images per fake method {recorded}")
    generate.add_argument("--force", action="store_true", help="move an existing data/raw aside (deletes nothing)")
    generate.set_defaults(func=_data_generate)

    ingest = _parser(data_commands, "ingest-dffd", help="turn a DFFD download into data/raw")
    ingest.add_argument("dffd_root", metavar="DFFD_ROOT",
                        help="the unpacked DFFD download (folders ffhq/, CelebA/, faceapp/, stylegan_*/ ...)")
    ingest.add_argument("--out", default="data/raw", help="the raw data directory to create")
    ingest.add_argument("--mode", choices=["symlink", "copy"], default="symlink",
                        help="symlink: link each image (no copy; `data track` then keeps one copy on disk); "
                        "copy: copy each image")
    ingest.add_argument("--resize", type=int, metavar="N",
                        help="re-encode every image as an N x N PNG (copies; default: keep the originals)")
    ingest.add_argument(
        "--whole-image-methods", metavar="NAMES",
        help="comma-separated fake folders that get all-ones masks (default: names containing stylegan/pggan)",
    )
    ingest.add_argument("--force", action="store_true", help="move an existing --out aside (deletes nothing)")
    ingest.set_defaults(func=_data_ingest)

    track = _parser(
        data_commands, "track", help="record the current data/raw in data.dvc (the `dvc add` step)",
        description="Record the current raw data directory in data.dvc and move it into the DVC cache. Unless "
        "a DVC cache.type is configured, first sets `dvc config --local cache.type hardlink,symlink`, so the "
        "files are linked into .dvc/cache instead of copied: one copy on disk (see docs/data.md, \"One copy on disk\").",
    )
    track.add_argument("raw_dir", nargs="?", default="data/raw", help="the directory to record")
    track.add_argument("--dvc-file", default=DVC_FILE, help=dvc_file_help)
    track.add_argument("--note", default="", help="free text stored in data.dvc meta (default: 'user data')")
    track.add_argument("--no-link-cache", action="store_true",
                       help="leave DVC's cache.type alone (DVC's default, reflink,copy, keeps a second full copy "
                       "in .dvc/cache where the filesystem cannot reflink)")
    track.set_defaults(func=_data_track)


def _add_params(commands) -> None:
    params = _parser(commands, "params", help="validate or merge params files")
    params_commands = params.add_subparsers(dest="params_command", required=True, metavar="ACTION",
                                            help="what to do with the params file")
    check = _parser(params_commands, "check",
                    help="validate a params file (or an overrides file merged onto params.yaml) and check that "
                    "the files and directories it names exist")
    check.add_argument("file", nargs="?", default=str(DEFAULT_PARAMS), help="the params file")
    check.add_argument("--schema-only", action="store_true",
                       help="validate keys and values only, not the paths (e.g. before data/raw is in place)")
    check.add_argument("--onto", metavar="PARAMS",
                       help="check FILE as an overrides file merged onto PARAMS (what `params merge` would write); "
                       "a file not named params.yaml that leaves out sections is checked onto the repository's "
                       "params.yaml without this")
    check.add_argument("--whole", action="store_true",
                       help="check FILE alone, as a complete params file, even when it leaves out sections")
    check.set_defaults(func=_params_check)
    merge = _parser(params_commands, "merge",
                    help="apply an overrides file (e.g. configs/dffd_gpu.yaml), keeping the comments")
    merge.add_argument("overrides", help="a partial params file whose values replace those in --into")
    merge.add_argument("--into", default=str(DEFAULT_PARAMS), help="the params file to update")
    merge.set_defaults(func=_params_merge)


def _add_predict(commands) -> None:
    predict = _parser(
        commands, "predict", help="p(fake) for image files or folders, optionally with Grad-CAM overlays",
        description="Score images with a trained detector. Prints `path<TAB>p(fake)<TAB>label` per image "
        "(label at --threshold); unreadable files are reported as `error: <path>: <reason>` on stderr and "
        "the exit code is then 1 (the readable ones are still scored); 2 when the model cannot be loaded.",
    )
    predict.add_argument("inputs", nargs="+", metavar="PATH",
                         help="image files (any suffix) or folders (searched recursively for image files)")
    predict.add_argument("--model", "-m",
                         help="models:/<name>@<alias> (default: models:/<tracking.registered_model>@champion), "
                         "models:/<name>/<version>, or a local models/<variant>/seed<k>/model.pt or its folder")
    predict.add_argument("--threshold", type=float, default=0.5, help="label 'fake' when p(fake) >= this")
    predict.add_argument("--json", action="store_true", help="print one JSON array of {path, p_fake, label[, cam]}")
    predict.add_argument("--cam", metavar="DIR", help="per image, DIR/<stem>_cam.png: the image and its Grad-CAM "
                         "overlay side by side (at least 256 px tall) with p(fake), the label and a colour bar")
    predict.add_argument("--cam-layer", help="CAM target layer (default: params.yaml cam.target_layer)")
    predict.add_argument("--params", help="params file for tracking/cam settings (default: <repo>/params.yaml)")
    predict.add_argument("--batch-size", type=_positive_int, default=64, help="images per forward pass")
    predict.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    predict.add_argument("--no-progress", action="store_true", help="no progress bar for folders")
    predict.set_defaults(func=_predict)


def _add_mlflow_url(commands) -> None:
    url = _parser(commands, "mlflow-url", help="the MLflow UI address of this experiment's runs table",
                  description="Print the address that opens `mlflow ui` on this experiment's training runs "
                  "(the model-training view, with the columns variant, seed, stage and the best epoch's "
                  "metrics) instead of MLflow's GenAI overview.")
    url.add_argument("--server", default="http://127.0.0.1:5000", help="where `mlflow ui` listens")
    url.add_argument("--params", help="params file naming the store and experiment (default: <repo>/params.yaml)")
    url.set_defaults(func=_mlflow_url)


def _add_reevaluate(commands) -> None:
    reevaluate = _parser(commands, "reevaluate", help="check the scheduled re-evaluation's drop alerts")
    reevaluate_commands = reevaluate.add_subparsers(dest="reevaluate_command", required=True, metavar="ACTION",
                                                    help="what to do")
    simulate = _parser(
        reevaluate_commands, "simulate-drop", help="make the next re-evaluation of an alias report a drop",
        description="Log a run that claims a previous evaluation of the alias's version scoring --previous, "
        "and point the version's last_reevaluation_run_id tag at it: the next re-evaluation (the Prefect "
        "flow flows/reevaluate.py) compares with it and reports a drop, so its alert can be checked end to end.",
    )
    simulate.add_argument("--alias", default="champion", help="registered model alias")
    simulate.add_argument("--previous", type=float, default=1.0,
                          help="the score the simulated previous evaluation claims (higher is more robust: "
                          "for an *_evasion criterion, 1 - the evasion rate)")
    simulate.set_defaults(func=_reevaluate_simulate_drop)


def main(argv: list[str] | None = None) -> None:
    """Run one command. What a command does not handle itself ends in one `error:` line,
    never a traceback: a StageError (exit 2) or an OSError such as a full disk or a
    permission refused while writing (exit 1, naming the file)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except StageError as error:
        fail(str(error), code=2)
    except OSError as error:
        fail(os_error_line(error), code=1)


if __name__ == "__main__":
    main(sys.argv[1:])
