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
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from robust_deepfake.data.sample import spec_from_meta, write_sample
from robust_deepfake.errors import StageError

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
        content = yaml.safe_load(dvc_file.read_text()) or {}
        out = content["outs"][0]
    except FileNotFoundError:
        raise DataStateError(f"{dvc_file}: not found (run from the repository root)") from None
    except (KeyError, IndexError, TypeError, yaml.YAMLError) as error:
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


def dvc_tree_md5(directory: str | Path) -> str:
    """The `md5: <hex>.dir` DVC 3 records for a directory: the md5 of the sorted JSON
    list of {md5, relpath} of its files (tests/test_materialize.py checks it against dvc)."""
    directory = Path(directory)
    entries = [
        {"md5": _file_md5(path), "relpath": path.relative_to(directory).as_posix()}
        for path in directory.rglob("*")
        if path.is_file()
    ]
    entries.sort(key=lambda entry: entry["relpath"])
    payload = json.dumps(entries, sort_keys=True).encode("utf-8")
    return hashlib.md5(payload).hexdigest() + ".dir"


def _dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def ensure_raw_data(dvc_file: str | Path = DVC_FILE, force: bool = False, log=print) -> str:
    """Make the tracked directory match data.dvc. Returns what was done, in words."""
    tracked = read_dvc_file(dvc_file)
    root = tracked.dvc_file.parent.resolve()
    target = tracked.path
    if tracked.md5 is None:
        raise DataStateError(f"{tracked.dvc_file}: records no md5; run `dvc commit -f {tracked.dvc_file}`")

    if target.exists():
        current = dvc_tree_md5(target)
        if current == tracked.md5:
            _dvc("commit", "-f", "-q", str(tracked.dvc_file.name), cwd=root)  # fills the cache if empty
            return f"{target} already matches {tracked.dvc_file} ({tracked.md5})"
        if not force:
            raise DataStateError(
                f"{target} differs from {tracked.dvc_file} (has {current}, recorded {tracked.md5}). "
                f"Keep your version with `dvc commit -f {tracked.dvc_file}`, or replace it with "
                "`robust-deepfake data ensure --force` (moves yours aside, deletes nothing)."
            )
        backup = target.with_name(f"{target.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
        target.rename(backup)
        log(f"moved the modified {target} to {backup}")

    checkout = _dvc("checkout", "-q", str(tracked.dvc_file.name), cwd=root)
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
        result = _dvc("commit", "-f", "-q", str(tracked.dvc_file.name), cwd=root)
        if result.returncode != 0:
            raise DataStateError(f"dvc commit failed: {(result.stderr or result.stdout).strip()}")
        return f"generated the bundled sample into {target}; it matches {tracked.dvc_file}"

    pull = _dvc("pull", "-q", str(tracked.dvc_file.name), cwd=root)
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
    from robust_deepfake.data.sample import spec_to_meta

    _record(dvc_file, target, {"sample": spec_to_meta(spec)})
    return f"wrote {spec.n_images} images to {target} and recorded them in {dvc_file}"


def _record(dvc_file: Path, directory: Path, meta: dict) -> None:
    """Write data.dvc for `directory` with `meta`, then hash it into the DVC cache."""
    from robust_deepfake.io import atomic_open

    content = {"outs": [{"path": os.path.relpath(directory, dvc_file.parent).replace(os.sep, "/")}], "meta": meta}
    with atomic_open(dvc_file) as handle:
        yaml.safe_dump(content, handle, sort_keys=False)
    result = _dvc("commit", "-f", "-q", dvc_file.name, cwd=dvc_file.parent.resolve())
    if result.returncode != 0:
        raise DataStateError(f"dvc commit {dvc_file} failed: {(result.stderr or result.stdout).strip()}")


# How DVC links data/raw to .dvc/cache when `data track` records it (unless a cache.type
# is configured already): a hard link where the cache and the data share a filesystem,
# else a symlink into the cache, never a second copy. See README "Using DFFD instead".
LINK_CACHE_TYPES = "hardlink,symlink"


def configured_cache_type(root: str | Path) -> str | None:
    """The `cache.type` DVC uses in the repo at `root` (any config level), None when unset
    (DVC's default: reflink,copy)."""
    result = _dvc("config", "cache.type", cwd=Path(root))
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
    result = _dvc("config", "--local", "cache.type", LINK_CACHE_TYPES, cwd=root)
    if result.returncode != 0:
        raise DataStateError(f"dvc config cache.type failed: {(result.stderr or result.stdout).strip()}")
    return LINK_CACHE_TYPES


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
    cache_type = use_link_cache(dvc_file.parent.resolve()) if link_cache else None
    _record(dvc_file, raw_dir, {"source": note or "user data"})
    done = f"{dvc_file} now tracks {raw_dir} ({read_dvc_file(dvc_file).md5})"
    if cache_type is None:
        return done
    if cache_type == LINK_CACHE_TYPES:
        return (f"{done}; DVC cache.type is {cache_type}: {raw_dir} holds read-only links into .dvc/cache, "
                "one copy on disk (`dvc unprotect <path>` before editing a file in place)")
    return f"{done}; DVC cache.type is {cache_type} (configured; left as it is)"
