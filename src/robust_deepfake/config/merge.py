"""Edit params.yaml programmatically without losing its comments, and check that the
files and directories it names exist (`robust-deepfake params merge` / `params check`)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.representer import RoundTripRepresenter

from robust_deepfake.config import (
    DEFAULT_PARAMS,
    ConfigError,
    Params,
    confinement_problems,
    parse_yaml,
    read_yaml,
    validate,
)
from robust_deepfake.config.cron import require_prefect_cron
from robust_deepfake.io import atomic_open


class _Representer(RoundTripRepresenter):
    """Round-trip, but None is always written `null`: ruamel writes a None mapping
    value as nothing at all (`weights_path:`), which reads as a forgotten value."""

    def represent_none(self, data: Any) -> Any:
        return self.represent_scalar("tag:yaml.org,2002:null", "null")


_Representer.add_representer(type(None), _Representer.represent_none)


def _yaml() -> YAML:
    yaml = YAML()
    yaml.Representer = _Representer
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def _eol_token(mapping: Any, key: str) -> Any:
    """The comment token ruamel keeps after `key: value` (None when there is none). Its
    value is the rest of the line (`# ...` or empty), a newline, then whatever follows
    up to the next key: continuation comments, blank lines, comments on later keys."""
    entry = getattr(mapping, "ca", None) and mapping.ca.items.get(key)
    return entry[2] if entry and len(entry) > 2 else None


def _eol_comment(mapping: Any, key: str) -> str | None:
    """The text of `key`'s end-of-line comment, without the `#`."""
    token = _eol_token(mapping, key)
    if token is None or not token.value.startswith("#"):
        return None
    return token.value.split("\n", 1)[0].lstrip("#").strip() or None


def _replace_eol_comment(mapping: Any, key: str, comment: str | None) -> None:
    """Swap `key`'s end-of-line comment (and its continuation lines, the comment lines
    right below it at the same column) for `comment`, or drop it when None. Blank lines
    and comments that belong to later keys stay where they are."""
    token = _eol_token(mapping, key)
    if token is None:
        if comment:
            columns = [t.column for t in (_eol_token(mapping, k) for k in mapping) if t and t.value.startswith("#")]
            mapping.yaml_add_eol_comment(f"# {comment}", key, column=max(columns, default=None))
        return
    first, _, rest = token.value.partition("\n")
    lines = rest.split("\n")
    if first.startswith("#"):
        while lines and lines[0].lstrip().startswith("#") and len(lines[0]) - len(lines[0].lstrip()) == token.column:
            lines.pop(0)
    rest = "\n".join(lines)
    if comment is None and not rest:
        mapping.ca.items[key][2] = None
    else:
        token.value = (f"# {comment}" if comment else "") + "\n" + rest


def _merge(base: Any, overrides: dict, prefix: str, changed: dict, source: str) -> None:
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, f"{dotted}.", changed, source)
        elif key not in base or base[key] != value:
            changed[dotted] = (base.get(key), value)
            if hasattr(value, "ca"):  # an override's own comments travel in its parent's entry
                value.ca.comment = None
            base[key] = value
            # the replaced comment described the replaced value: say where the new one comes from
            why = _eol_comment(overrides, key)
            _replace_eol_comment(base, key, f"merged from {source}" + (f": {why}" if why else ""))


def merge_params_file(overrides_path: str | Path, params_path: str | Path = DEFAULT_PARAMS) -> dict:
    """Apply a partial params file onto params.yaml (merge_overrides); write it only when a
    value changed. Returns {dotted key: (old, new)} for the values that changed.

    A changed value's end-of-line comment is replaced by `# merged from <file>[: the
    override's own comment]`; unchanged keys keep theirs.
    """
    merged = merge_overrides(overrides_path, params_path)
    if merged.changed:
        with atomic_open(params_path) as handle:
            handle.write(merged.text)
    return merged.changed


@dataclass(frozen=True)
class Merged:
    """A params file with an overrides file applied, validated, not written."""

    params: Params
    text: str  # the merged params file, comments kept
    changed: dict  # {dotted key: (old, new)}


def merge_overrides(overrides_path: str | Path, params_path: str | Path = DEFAULT_PARAMS) -> Merged:
    """`params_path` with the values of the partial `overrides_path` in place, validated as
    load_params validates a file (schema, confinement to params_path's folder, the cron).

    Both files are read as load_params reads params.yaml first (a YAML syntax error, a
    duplicate key or a `!!python/...` tag is a ConfigError naming the file and line, not
    a traceback), and an overrides file without any value is refused: it is almost
    always the wrong file, and merging it would change nothing.
    """
    from ruamel.yaml.error import YAMLError

    overrides_path, params_path = Path(overrides_path), Path(params_path)
    plain_overrides = read_yaml(overrides_path)
    read_yaml(params_path)
    if plain_overrides is not None and not isinstance(plain_overrides, dict):
        raise ConfigError(f"{overrides_path}: top level must be a mapping, got {type(plain_overrides).__name__}")
    if not plain_overrides:
        raise ConfigError(f"{overrides_path}: no values to merge (empty, or only comments); {params_path} left unchanged")
    yaml = _yaml()
    try:
        overrides = yaml.load(overrides_path.read_text())
        document = yaml.load(params_path.read_text()) or {}
    except YAMLError as error:  # read_yaml accepted it: a YAML 1.1 / 1.2 difference
        raise ConfigError(f"{overrides_path} or {params_path}: invalid YAML: {error}".replace("\n", " ")) from None
    if not isinstance(document, dict):
        raise ConfigError(f"{params_path}: top level must be a mapping, got {type(document).__name__}")
    changed: dict = {}
    _merge(document, overrides, "", changed, overrides_path.name)
    buffer = io.StringIO()
    yaml.dump(document, buffer)
    source = f"{params_path} merged with {overrides_path}"
    merged = validate(parse_yaml(buffer.getvalue(), source), source)
    confined = confinement_problems(merged, params_path.parent)
    if confined:
        raise ConfigError("\n".join(f"{source}: {problem}" for problem in confined))
    require_prefect_cron(merged.reevaluate.cron, source)
    return Merged(merged, buffer.getvalue(), changed)


def missing_sections(path: str | Path) -> list[str]:
    """The params sections (attack, cam, data, …) a file leaves out: a file that sets only
    some is an overrides file (configs/*.yaml), meant to be merged onto params.yaml."""
    raw = read_yaml(Path(path))
    present = set(raw) if isinstance(raw, dict) else set()
    return [section for section in Params.model_fields if section not in present]


def path_problems(params: Params, base_dir: str | Path = ".") -> list[str]:
    """Every file or directory params.yaml names that is not where it must be, one line
    each naming the key and the path. Relative paths are taken from `base_dir` (the
    directory of params.yaml: the stages run there).

    Inputs must exist (data.raw_dir, model.weights_path); outputs (data.splits_dir)
    and the MLflow store (tracking.tracking_uri) are created by the stages, so only
    something in their way, or a missing parent folder of a SQLite file, is reported.
    """
    base = Path(base_dir)
    problems: list[str] = []

    def where(value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else base / path

    def shown(value: str) -> str:
        return value if Path(value).is_absolute() else f"{value} (relative to {base.resolve()})"

    raw = where(params.data.raw_dir)
    if not raw.exists():
        problems.append(
            f"data.raw_dir: {shown(params.data.raw_dir)} does not exist; bring it into place with "
            "`robust-deepfake data ensure` (or `dvc pull`), or ingest DFFD"
        )
    elif not raw.is_dir():
        problems.append(f"data.raw_dir: {shown(params.data.raw_dir)} is not a directory")
    else:
        masks = raw / "masks"
        if masks.exists() and not masks.is_dir():
            problems.append(f"data.raw_dir: {params.data.raw_dir}/masks (the masks dir) is not a directory")

    splits = where(params.data.splits_dir)
    if splits.exists() and not splits.is_dir():
        problems.append(f"data.splits_dir: {shown(params.data.splits_dir)} exists and is not a directory")

    weights = params.model.weights_path
    if weights is not None:
        path = where(weights)
        if not path.exists():
            use = "" if params.model.pretrained else " (unused while model.pretrained is false; set it to null)"
            problems.append(f"model.weights_path: {shown(weights)} does not exist{use}")
        elif not path.is_file():
            problems.append(f"model.weights_path: {shown(weights)} is not a file")

    uri = params.tracking.tracking_uri
    if uri is not None and uri.startswith("sqlite:///"):
        database = where(uri.removeprefix("sqlite:///"))
        if not database.parent.is_dir():
            problems.append(
                f"tracking.tracking_uri: the folder of {shown(uri.removeprefix('sqlite:///'))} does not exist"
            )
        elif database.exists() and not database.is_file():
            problems.append(f"tracking.tracking_uri: {shown(uri.removeprefix('sqlite:///'))} is not a file")
    return problems
