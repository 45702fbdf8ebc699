"""Bring data/raw into the state data.dvc records, offline.

DVC knows how to restore data from its cache or a remote. A fresh clone has neither, so
for the bundled sample data.dvc also records the generator's settings (`meta.sample`):
the sample is regenerated into a temp dir, its DVC directory hash is checked against
data.dvc, and only then is it moved into place and committed to the DVC cache. Data
that differs from data.dvc is never overwritten without --force, and even then it is
moved aside, not deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


from robust_deepfake.config.yaml import YAMLError, dump_yaml, load_yaml
from robust_deepfake.data.sample import spec_from_meta, spec_to_meta, write_sample
from robust_deepfake.dvc_cli import failure, run_dvc
from robust_deepfake.errors import StageError
from robust_deepfake.io import atomic_open, write_json

DVC_FILE = "data.dvc"


class DataStateError(StageError, RuntimeError):
    """data/raw cannot be brought into the recorded state; str() says what to do."""


@dataclass(frozen=True)
class TrackedData:
    dvc_file: Path
    path: Path  # the tracked directory, resolved relative to the .dvc file
    md5: str | None
    sample_meta: dict | None


def read_dvc_file(dvc_file: str | Path = DVC_FILE) -> TrackedData:
    dvc_file = Path(dvc_file)
    try:
        content = load_yaml(dvc_file.read_text()) or {}
        out = content["outs"][0]
    except FileNotFoundError:
        raise DataStateError(f"{dvc_file}: not found (run from the repository root)") from None
    except (KeyError, IndexError, TypeError, YAMLError) as error:
        raise DataStateError(f"{dvc_file}: not a DVC file with one out ({error})") from None
    meta = content.get("meta") or {}
    return TrackedData(
        dvc_file=dvc_file,
        path=dvc_file.parent / out["path"],
        md5=out.get("md5"),
        sample_meta=meta.get("sample"),
    )


def _file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def dvc_tree_entries(directory: str | Path) -> list[dict[str, str]]:
    """The sorted {md5, relpath} list of a directory's files: DVC's `.dir` manifest."""
    directory = Path(directory)
    entries = [
        {"md5": _file_md5(path), "relpath": path.relative_to(directory).as_posix()}
        for path in directory.rglob("*")
        if path.is_file()
    ]
    entries.sort(key=lambda entry: entry["relpath"])
    return entries


def _entries_md5(entries: list[dict[str, str]]) -> str:
    payload = json.dumps(entries, sort_keys=True).encode("utf-8")
    return hashlib.md5(payload).hexdigest() + ".dir"


def dvc_tree_md5(directory: str | Path) -> str:
    """The `md5: <hex>.dir` DVC 3 records for a directory: the md5 of the sorted JSON
    list of {md5, relpath} of its files (tests/test_materialize.py checks it against dvc)."""
    return _entries_md5(dvc_tree_entries(directory))


def ensure_raw_data(dvc_file: str | Path = DVC_FILE, force: bool = False, log=print) -> str:
    """Make the tracked directory match data.dvc. Returns what was done, in words."""
    tracked = read_dvc_file(dvc_file)
    root = tracked.dvc_file.parent.resolve()
    target = tracked.path
    if tracked.md5 is None:
        raise DataStateError(f"{tracked.dvc_file}: records no md5; run `dvc commit -f {tracked.dvc_file}`")

    committed = committed_md5(tracked.dvc_file)
    if committed is not None and tracked.md5 != committed and not is_accepted(tracked.dvc_file, tracked.md5):
        raise UnacceptedDataError(_unaccepted_message(
            tracked, committed, f"{tracked.dvc_file} records {tracked.md5} but git HEAD records {committed}, "
            "and that change was not made with `robust-deepfake data track` (DVC re-records data.dvc by itself "
            "when `dvc repro`, `dvc add` or `dvc commit` finds data/raw changed)",
        ))
    if target.exists():
        entries = dvc_tree_entries(target)
        current = _entries_md5(entries)
        if current == tracked.md5:
            run_dvc("commit", "-f", "-q", str(tracked.dvc_file.name), cwd=root)  # fills the cache if empty
            return f"{target} already matches {tracked.dvc_file} ({tracked.md5})"
        if not force:
            changes = _describe_changes(root, target, entries, tracked.md5)
            raise DataStateError(
                f"{target} differs from {tracked.dvc_file} (has {current}, recorded {tracked.md5}){changes}\n"
                f"Keep your version with `robust-deepfake data track {_shown(target)}` (then commit "
                f"{tracked.dvc_file.name}), or replace it with "
                "`robust-deepfake data ensure --force` (moves yours aside, deletes nothing)."
            )
        backup = target.with_name(f"{target.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
        target.rename(backup)
        log(f"moved the modified {target} to {backup}")

    checkout = run_dvc("checkout", "-q", str(tracked.dvc_file.name), cwd=root)
    if checkout.returncode == 0 and target.exists() and dvc_tree_md5(target) == tracked.md5:
        return f"restored {target} from the DVC cache"

    if tracked.sample_meta is not None:
        spec = spec_from_meta(tracked.sample_meta)
        log(f"generating the bundled sample into {target} ({spec.n_images} images) ...")
        staging = target.with_name(f".{target.name}.staging-{os.getpid()}")
        if staging.exists():
            shutil.rmtree(staging)
        write_sample(spec, staging)
        produced = dvc_tree_md5(staging)
        if produced != tracked.md5:
            shutil.rmtree(staging)
            raise DataStateError(
                f"the regenerated sample hashes to {produced}, but {tracked.dvc_file} records "
                f"{tracked.md5}. The generator or its pinned numpy/pillow changed; if that is "
                f"intended, regenerate with `robust-deepfake data generate --force` and commit "
                f"{tracked.dvc_file}."
            )
        if target.exists():
            shutil.rmtree(target)  # a partial checkout left behind above
        staging.rename(target)
        result = run_dvc("commit", "-f", str(tracked.dvc_file.name), cwd=root)
        if result.returncode != 0:
            raise DataStateError(f"dvc commit {tracked.dvc_file} failed: {failure(result)}")
        return f"generated the bundled sample into {target}; it matches {tracked.dvc_file}"

    pull = run_dvc("pull", "-q", str(tracked.dvc_file.name), cwd=root)
    if pull.returncode == 0 and target.exists() and dvc_tree_md5(target) == tracked.md5:
        return f"pulled {target} from the DVC remote"
    raise DataStateError(
        f"{target} is missing, not in the DVC cache, and `dvc pull` failed "
        f"({pull.stderr.strip() or 'no remote configured'}). Configure the remote that holds "
        "your data (`dvc remote add -d ...`), or re-run the DFFD ingest."
    )


def regenerate_sample(dvc_file: str | Path = DVC_FILE, spec_meta: dict | None = None, force: bool = False) -> str:
    """Rewrite the sample and re-record data.dvc (for changing the generator on purpose)."""
    dvc_file = Path(dvc_file)
    tracked = read_dvc_file(dvc_file) if dvc_file.exists() else None
    target = tracked.path if tracked else dvc_file.parent / "data" / "raw"
    meta = spec_meta or (tracked.sample_meta if tracked and tracked.sample_meta else None)
    if meta is None:
        raise DataStateError(f"{dvc_file}: no meta.sample recorded; pass the sample settings")
    spec = spec_from_meta(meta)
    if target.exists():
        if not force:
            raise DataStateError(f"{target} exists; pass --force to move it aside and regenerate")
        backup = target.with_name(f"{target.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
        target.rename(backup)
    write_sample(spec, target)

    _record(dvc_file, target, {"sample": spec_to_meta(spec)}, "robust-deepfake data generate")
    return f"wrote {spec.n_images} images to {target} and recorded them in {dvc_file}"


def _record(dvc_file: Path, directory: Path, meta: dict, by: str) -> None:
    """Write data.dvc for `directory` with `meta`, then hash it into the DVC cache and
    note that this content was accepted (`by` names the command; see the data guard)."""
    content = {"outs": [{"path": os.path.relpath(directory, dvc_file.parent).replace(os.sep, "/")}], "meta": meta}
    with atomic_open(dvc_file) as handle:
        dump_yaml(content, handle)
    result = run_dvc("commit", "-f", dvc_file.name, cwd=dvc_file.parent.resolve())
    if result.returncode != 0:
        raise DataStateError(f"dvc commit {dvc_file} failed: {failure(result)}")
    record_acceptance(dvc_file, read_dvc_file(dvc_file).md5, by)


# How DVC links data/raw to .dvc/cache when `data track` records it (unless a cache.type
# is configured already): a hard link where the cache and the data share a filesystem,
# else a symlink into the cache, never a second copy. See README "Using DFFD instead".
LINK_CACHE_TYPES = "hardlink,symlink"


def configured_cache_type(root: str | Path) -> str | None:
    """The `cache.type` DVC uses in the repo at `root` (any config level), None when unset
    (DVC's default: reflink,copy)."""
    result = run_dvc("config", "cache.type", cwd=Path(root))
    value = result.stdout.strip() if result.returncode == 0 else ""
    return value or None


def use_link_cache(root: str | Path) -> str | None:
    """Unless some cache.type is configured, set cache.type to LINK_CACHE_TYPES in the
    repo's .dvc/config.local (links depend on this machine's filesystems, so the choice
    is per clone). Returns the cache.type in force, None for DVC's default."""
    root = Path(root)
    current = configured_cache_type(root)
    if current is not None:
        return current
    result = run_dvc("config", "--local", "cache.type", LINK_CACHE_TYPES, cwd=root)
    if result.returncode != 0:
        raise DataStateError(f"dvc config cache.type failed: {failure(result)}")
    return LINK_CACHE_TYPES


def dead_links(directory: Path) -> list[str]:
    """`path: reason` for each symbolic link under `directory` that cannot be followed (a
    missing target, a loop), sorted; DVC would stop at the first with no usable message."""
    found = []
    for parent, folders, files in os.walk(directory):
        for name in folders + files:
            path = Path(parent, name)
            if path.is_symlink():
                try:
                    path.stat()
                except OSError as error:
                    found.append(f"{path}: {error.strerror or error}")
    return sorted(found)


def track_raw_dir(
    raw_dir: str | Path = "data/raw", dvc_file: str | Path = DVC_FILE, note: str = "", link_cache: bool = True
) -> str:
    """Record the current contents of raw_dir in data.dvc (what `dvc add` does for a
    stand-alone .dvc file), dropping the sample generator's settings: the data is no
    longer reproducible from them.

    With `link_cache` (and no cache.type configured) DVC is first told to link the
    workspace to its cache (LINK_CACHE_TYPES), so that committing moves the data into
    .dvc/cache instead of copying it: data/raw then holds read-only hard links (or
    symlinks) into the cache, and the data is on disk once. The ingest's symlinks are
    resolved by that commit: their targets, the DFFD download, are hard-linked into the
    cache when on the same filesystem (then even the download shares the one copy and
    becomes read-only too), else copied once, after which the download may be deleted.
    """
    dvc_file = Path(dvc_file)
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DataStateError(f"{raw_dir}: no such directory")
    broken = dead_links(raw_dir)
    if broken:
        shown = "\n  ".join(broken[:20]) + (f"\n  ... and {len(broken) - 20} more" if len(broken) > 20 else "")
        raise DataStateError(f"{len(broken)} symbolic link(s) under {raw_dir} lead nowhere or loop; fix or remove "
                             f"them, then track again:\n  {shown}")
    cache_type = use_link_cache(dvc_file.parent.resolve()) if link_cache else None
    _record(dvc_file, raw_dir, {"source": note or "user data"}, "robust-deepfake data track")
    done = f"{dvc_file} now tracks {raw_dir} ({read_dvc_file(dvc_file).md5})"
    if cache_type is None:
        return done
    if cache_type == LINK_CACHE_TYPES:
        return (f"{done}; DVC cache.type is {cache_type}: {raw_dir} holds read-only links into .dvc/cache, "
                "one copy on disk (`dvc unprotect <path>` before editing a file in place)")
    return f"{done}; DVC cache.type is {cache_type} (configured; left as it is)"


# ---------------------------------------------------------------- the data guard
#
# DVC treats data.dvc as a stage: whenever data/raw changes, `dvc repro` (and `dvc add`,
# `dvc commit`) re-records data.dvc to the new contents before the split runs, and the
# new files are trained and tested on. A file that lands in data/raw by accident (e.g.
# `predict --cam` overlays) would so become data without anyone deciding it. The split
# stage therefore accepts data that differs from what data.dvc records at git HEAD only
# when `robust-deepfake data track` (or `data generate`) recorded exactly that data: they
# leave an acceptance record in .cache/ (per clone, git-ignored). A fresh clone, whose
# data matches HEAD, needs none; outside git (or before data.dvc is committed) there is
# no reference and everything is accepted.

ACCEPTED_FILE = Path(".cache") / "data_accepted.json"
_LISTED = 20  # file names shown per kind of change


class UnacceptedDataError(DataStateError):
    """data/raw differs from what data.dvc records at git HEAD and nobody accepted it."""


def committed_md5(dvc_file: str | Path = DVC_FILE) -> str | None:
    """The md5 `dvc_file` records at git HEAD; None outside git, before the first commit,
    or when HEAD has no such file (there is then no committed state to compare with)."""
    dvc_file = Path(dvc_file)
    try:
        shown = subprocess.run(["git", "show", f"HEAD:./{dvc_file.name}"], cwd=dvc_file.parent.resolve(),
                               capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if shown.returncode != 0:
        return None
    try:
        return (load_yaml(shown.stdout) or {})["outs"][0].get("md5")
    except (KeyError, IndexError, TypeError, AttributeError, YAMLError):
        return None


def _acceptance_path(dvc_file: Path) -> Path:
    return dvc_file.parent.resolve() / ACCEPTED_FILE


def is_accepted(dvc_file: str | Path, md5: str | None) -> bool:
    """Whether `robust-deepfake data track/generate` recorded `md5` in `dvc_file` here."""
    dvc_file = Path(dvc_file)
    try:
        record = json.loads(_acceptance_path(dvc_file).read_text()).get(dvc_file.name) or {}
    except (OSError, ValueError, AttributeError):
        return False
    return md5 is not None and record.get("md5") == md5


def record_acceptance(dvc_file: str | Path, md5: str | None, by: str) -> None:
    """Note that `md5` was recorded in `dvc_file` on purpose (by `data track/generate`)."""
    dvc_file = Path(dvc_file)
    path = _acceptance_path(dvc_file)
    try:
        records = json.loads(path.read_text())
        if not isinstance(records, dict):
            records = {}
    except (OSError, ValueError):
        records = {}
    records[dvc_file.name] = {
        "md5": md5,
        "by": by,
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(path, records)


def check_data_accepted(raw_dir: str | Path, dvc_file: str | Path = DVC_FILE) -> str | None:
    """Refuse (UnacceptedDataError) when `raw_dir`, the directory `dvc_file` tracks, differs
    from what `dvc_file` records at git HEAD and `robust-deepfake data track` did not
    record it. Returns a note when data other than HEAD's was accepted, else None."""
    dvc_file, raw_dir = Path(dvc_file), Path(raw_dir)
    if not dvc_file.exists() or not raw_dir.is_dir():
        return None  # nothing tracks it here; the split reports a missing raw dir itself
    tracked = read_dvc_file(dvc_file)
    if tracked.path.resolve() != raw_dir.resolve():
        return None  # data.raw_dir is not the directory data.dvc tracks
    committed = committed_md5(dvc_file)
    if committed is None:
        return None
    entries = dvc_tree_entries(raw_dir)
    current = _entries_md5(entries)
    if current == committed:
        return None
    if is_accepted(dvc_file, current):
        return f"note: {raw_dir} is the data `robust-deepfake data track` recorded ({current}), not yet committed"
    raise UnacceptedDataError(_unaccepted_message(
        tracked, committed,
        f"{_shown(raw_dir)} hashes to {current}, but {dvc_file.name} at git HEAD records {committed}, and this "
        "change was not made with `robust-deepfake data track`; refusing to split data nobody accepted "
        "(files written into data/raw, e.g. `predict --cam` overlays, would become training and test images)",
        entries=entries,
    ))


def _unaccepted_message(tracked: TrackedData, committed: str, what: str,
                        entries: list[dict[str, str]] | None = None) -> str:
    root = tracked.dvc_file.parent.resolve()
    target = tracked.path
    changes = ""
    if target.is_dir():
        entries = entries if entries is not None else dvc_tree_entries(target)
        changes = _describe_changes(root, target, entries, committed)
    name = tracked.dvc_file.name
    return (
        f"{what}.{changes}\n"
        f"To use this data: `robust-deepfake data track {_shown(target)}`, then `git add {name} && git commit`.\n"
        f"To undo: `git checkout {name} && dvc checkout {name}` restores {_shown(target)} to the committed "
        f"version (deleting the new files); or delete the new files yourself and `git checkout {name}`."
    )


def _shown(path: Path) -> str:
    """`path` as the user would type it: relative to the working directory when inside it."""
    try:
        relative = Path(os.path.relpath(path))
    except ValueError:  # another drive (Windows)
        return str(path)
    return str(path) if relative.parts[:1] == ("..",) else relative.as_posix()


def _cache_dirs(root: Path) -> list[Path]:
    """The DVC cache: .dvc/cache, or a `cache.dir` set in .dvc/config(.local)."""
    import configparser

    found = []
    for name in ("config.local", "config"):
        parser = configparser.ConfigParser()
        try:
            parser.read(root / ".dvc" / name)
            configured = parser.get("cache", "dir", fallback=None)
        except configparser.Error:
            configured = None
        if configured:
            found.append((root / ".dvc" / configured).resolve())
    return [*found, root / ".dvc" / "cache"]


def read_manifest(root: Path, md5: str) -> list[dict[str, str]] | None:
    """The `.dir` file list DVC stored for a directory hash, from the local cache (DVC 3:
    files/md5/xx/rest.dir; DVC 2: xx/rest.dir); None when it is not there."""
    digest = md5.removesuffix(".dir")
    for cache in _cache_dirs(root):
        for candidate in (cache / "files" / "md5" / digest[:2] / f"{digest[2:]}.dir",
                          cache / digest[:2] / f"{digest[2:]}.dir"):
            try:
                manifest = json.loads(candidate.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(manifest, list):
                return manifest
    return None


def _describe_changes(root: Path, target: Path, entries: list[dict[str, str]], recorded: str) -> str:
    """The files that differ from the recorded `.dir` manifest, one per line (or, when the
    manifest is not in the DVC cache, the files modified since the last git commit)."""
    manifest = read_manifest(root, recorded)
    shown = _shown(target)
    if manifest is None:
        since = _head_commit_time(root)
        recent = sorted(entry["relpath"] for entry in entries
                        if since is not None and (target / entry["relpath"]).stat().st_mtime > since)
        lines = [f"\nThe file list of {recorded} is not in the DVC cache, so the exact changes cannot be named"
                 f" ({len(entries)} file(s) now)."]
        return "".join(lines) + _listing("Modified since the last commit", recent, shown)
    before = {entry["relpath"]: entry["md5"] for entry in manifest}
    now = {entry["relpath"]: entry["md5"] for entry in entries}
    kinds = {
        "new": sorted(set(now) - set(before)),
        "changed": sorted(name for name in set(now) & set(before) if now[name] != before[name]),
        "removed": sorted(set(before) - set(now)),
    }
    return "".join(_listing(kind, names, shown) for kind, names in kinds.items())


def _listing(title: str, names: list[str], shown: str) -> str:
    """`\n<title> (n):` and the first _LISTED names, or "" for none."""
    if not names:
        return ""
    lines = [f"\n{title} ({len(names)}):", *(f"\n  {shown}/{name}" for name in names[:_LISTED])]
    if len(names) > _LISTED:
        lines.append(f"\n  ... and {len(names) - _LISTED} more")
    return "".join(lines)


def _head_commit_time(root: Path) -> float | None:
    try:
        result = subprocess.run(["git", "log", "-1", "--format=%ct"], cwd=root, capture_output=True, text=True,
                                timeout=60)
        return float(result.stdout.strip()) if result.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
