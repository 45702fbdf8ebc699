"""Failures a user can reach end in one line naming the file, not a traceback: a full disk
while an output is written (atomic_path names the output, the CLI prints `error:` and
exits 1), a StageError a command does not handle itself (exit 2), symbolic links under
data/raw that lead nowhere or loop (`data track` lists them before DVC sees them), and a
failed `dvc` command (its ERROR line naming the file, never only DVC's support banner).
The Prefect flows: tests/test_flow_launch.py, tests/test_flows.py."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from robust_deepfake import cli
from robust_deepfake.data.materialize import DataStateError, _record, dead_links, track_raw_dir
from robust_deepfake.dvc_cli import failure
from robust_deepfake.errors import StageError
from robust_deepfake.io import atomic_open, write_json


def _disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_writing_names_the_output_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "out" / "metrics.json"
    monkeypatch.setattr("json.dump", _disk_full)
    with pytest.raises(OSError) as raised:
        write_json(target, {"a": 1})
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_an_error_about_another_file_keeps_its_name(tmp_path):
    other = tmp_path / "missing.txt"
    with pytest.raises(FileNotFoundError) as raised, atomic_open(tmp_path / "out.txt") as handle:
        handle.write(other.read_text())
    assert raised.value.filename == str(other)


def test_the_cli_turns_an_os_error_into_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    into = tmp_path / "params.yaml"
    monkeypatch.setattr(cli, "merge_params_file",
                        lambda *_: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device", str(into))))
    with pytest.raises(SystemExit) as stopped:
        cli.main(["params", "merge", str(tmp_path / "over.yaml"), "--into", str(into)])
    assert stopped.value.code == 1
    assert capsys.readouterr().err == (f"error: {into}: No space left on device (free some space there, or write "
                                       "elsewhere, and run the command again)\n")


def test_the_cli_turns_an_unhandled_stage_error_into_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "merge_params_file", lambda *_: (_ for _ in ()).throw(StageError("x.yaml: broken")))
    with pytest.raises(SystemExit) as stopped:
        cli.main(["params", "merge", "x.yaml", "--into", str(tmp_path / "params.yaml")])
    assert stopped.value.code == 2 and capsys.readouterr().err == "error: x.yaml: broken\n"


def _raw_with_loop(root: Path) -> Path:
    raw = root / "data" / "raw"
    (raw / "real" / "a").mkdir(parents=True)
    (raw / "real" / "a" / "x.png").write_bytes(b"not really a png")
    (raw / "real" / "loop1").symlink_to("loop2")
    (raw / "real" / "loop2").symlink_to("loop1")
    (raw / "real" / "gone.png").symlink_to(root / "nowhere.png")
    return raw


def test_data_track_lists_links_that_lead_nowhere_or_loop(tmp_path, capsys, monkeypatch):
    raw = _raw_with_loop(tmp_path)
    assert dead_links(raw) == [f"{raw}/real/gone.png: No such file or directory",
                               f"{raw}/real/loop1: Too many levels of symbolic links",
                               f"{raw}/real/loop2: Too many levels of symbolic links"]
    with pytest.raises(DataStateError, match=r"3 symbolic link\(s\) under .* lead nowhere or loop"):
        track_raw_dir(raw, tmp_path / "data.dvc")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["data", "track", "data/raw"])
    assert stopped.value.code == 2 and "data/raw/real/loop1: Too many levels of symbolic links" in capsys.readouterr().err


def test_a_failed_dvc_command_is_its_error_line_naming_the_file(tmp_path):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True, env=env)
    raw = _raw_with_loop(tmp_path)
    (raw / "real" / "gone.png").unlink()
    with pytest.raises(DataStateError) as raised:  # the real DVC, past the check above
        _record(tmp_path / "data.dvc", raw, {}, "test")
    assert str(raised.value).startswith("dvc commit ")
    assert "Too many levels of symbolic links" in str(raised.value) and "/real/loop" in str(raised.value)
    assert "Having any troubles" not in str(raised.value)


def test_failure_never_returns_the_banner_alone():
    banner = "Having any troubles? Hit us up at https://dvc.org/support, we are always happy to help!"
    assert failure(subprocess.CompletedProcess([], 255, "", banner)) == "exit status 255, no message"
    assert failure(subprocess.CompletedProcess([], 255, "", f"ERROR: unexpected error - boom: 'f'\n\n{banner}")) \
        == "ERROR: boom: 'f'"
