"""Run `robust-deepfake predict` in-process, as the console script would, for tests."""

from __future__ import annotations

import pytest


def predict(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `robust-deepfake predict --no-progress <args>`."""
    from robust_deepfake.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--no-progress", *args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err
