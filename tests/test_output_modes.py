"""Every output follows the process umask (0644 under 022, 0600 under 077), not the 0600
of the mkstemp file the atomic writers start from."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from robust_deepfake.io import atomic_path, current_umask, write_csv, write_json, write_npz

SRC = Path(__file__).resolve().parents[1] / "src" / "robust_deepfake"


@pytest.fixture(params=[(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)], ids=["022", "077", "002"])
def umask(request):
    mask, expected = request.param
    previous = os.umask(mask)
    try:
        yield expected
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_current_umask_reads_without_changing_it(umask):
    before = os.umask(0o022)
    os.umask(before)
    assert current_umask() == before
    assert os.umask(before) == before, "reading the umask must leave it as it was"


def test_json_csv_npz_and_figures(umask, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    write_json(tmp_path / "metrics" / "m.json", {"a": 1})
    write_csv(tmp_path / "plots" / "h.csv", ["epoch"], [{"epoch": 1}])
    write_npz(tmp_path / "eval" / "v.npz", x=[1, 2])
    figure, _ = plt.subplots()
    with atomic_path(tmp_path / "reports" / "figure.png") as tmp:  # as report/ and explain/ save figures
        figure.savefig(tmp, format="png")
    plt.close(figure)
    for name in ("metrics/m.json", "plots/h.csv", "eval/v.npz", "reports/figure.png"):
        assert _mode(tmp_path / name) == umask, name
    assert not list(tmp_path.rglob("*.tmp")), "no temp file is left behind"


def test_an_overwritten_output_gets_the_umask_mode_too(umask, tmp_path):
    target = tmp_path / "m.json"
    target.write_text("{}")
    target.chmod(0o600)
    write_json(target, {"a": 2})
    assert _mode(target) == umask


def test_model_weights(umask, tmp_path):
    import torch

    from robust_deepfake.model.detector import save_weights

    save_weights(torch.nn.Linear(2, 2), tmp_path / "models" / "baseline" / "seed0" / "model.pt")
    assert _mode(tmp_path / "models" / "baseline" / "seed0" / "model.pt") == umask


def test_split_csvs_and_metrics(umask, tiny_raw, tmp_path):
    from robust_deepfake.config import validate
    from robust_deepfake.pipeline.split import split

    params = validate({"data": {"raw_dir": str(tiny_raw), "splits_dir": "data/splits"}})
    split(params, tmp_path)
    written = [*(tmp_path / "data" / "splits").glob("*.csv"), tmp_path / "metrics" / "split.json"]
    assert len(written) == 4
    for path in written:
        assert _mode(path) == umask, path


def test_generated_sample_files(umask, tmp_path):
    from robust_deepfake.data.sample import SampleSpec, write_sample

    out = write_sample(SampleSpec(seed=1, image_size=16, real_per_source=2, fakes_per_method=2), tmp_path / "raw",
                       progress=False)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files and {_mode(p) for p in files} == {umask}


def test_no_writer_bypasses_io():
    """Temp files come from io.atomic_path only: it is the one that fixes their mode."""
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "io.py" and path.parent == SRC:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bmkstemp\(|NamedTemporaryFile\(", line):
                offenders.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert not offenders, offenders
