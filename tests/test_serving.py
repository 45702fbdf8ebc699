"""The registered model behind `mlflow models serve`: a real scoring server on 127.0.0.1,
REST requests in the documented format, answers equal to the local pyfunc's."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from micro_repo import clean_env

MODEL_URI = "models:/robust-deepfake-detector@baseline"
READY_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post_json(url: str, payload: dict) -> tuple[int, dict | str]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def wait_until_ready(process: subprocess.Popen, base_url: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"mlflow models serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base_url}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise AssertionError(f"no answer on {base_url}/ping after {READY_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the whole session we started (the mlflow CLI and its uvicorn child), SIGKILL
    what is still there after 30 s, and return only when the group is gone."""
    group = process.pid  # start_new_session=True: the group id is the leader's pid
    for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            process.poll()  # reap the leader so it does not linger as a zombie
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
    process.wait(timeout=10)
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)


def b64_file(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


@pytest.fixture
def local_pyfunc(micro_repo, monkeypatch):
    """The same registered model loaded in this process (MLflow state restored afterwards)."""
    import mlflow
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils

    # No process-wide URI left by an earlier test: both the tracking and the registry
    # client resolve MLFLOW_TRACKING_URI (the originals come back at teardown).
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(registry_utils, "_registry_uri", None)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "")  # recorded, so an absent variable stays absent
    monkeypatch.delenv("MLFLOW_REGISTRY_URI")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{micro_repo / 'mlflow.db'}")
    return mlflow.pyfunc.load_model(MODEL_URI)


def test_server_decodes_base64_images_exactly_like_training(tmp_path):
    """images_from_input (the REST path) and data.images (training, predict) agree on EXIF
    rotation, modes and resizing, so the server and `robust-deepfake predict` give the same p(fake)."""
    import io

    import pandas as pd
    import torch

    from robust_deepfake.data.images import load_rgb_array
    from robust_deepfake.serving import images_from_input

    rng = np.random.default_rng(0)
    paths = {name: tmp_path / name for name in ["rotated.jpg", "grey16.png", "rgba.png", "small.png"]}
    rotated = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rotated.save(paths["rotated.jpg"], exif=exif.tobytes(), quality=95)
    Image.fromarray(rng.integers(0, 65536, (40, 40), dtype=np.uint16)).save(paths["grey16.png"])
    Image.fromarray(rng.integers(0, 256, (33, 97, 4), dtype=np.uint8), "RGBA").save(paths["rgba.png"])
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(paths["small.png"])
    with Image.open(io.BytesIO(paths["rotated.jpg"].read_bytes())) as check:
        assert check.getexif()[0x0112] == 6
    size = 24
    served = images_from_input(pd.DataFrame({"image": [b64_file(p) for p in paths.values()]}), size)
    trained = torch.from_numpy(np.stack([load_rgb_array(p, size) for p in paths.values()])).permute(0, 3, 1, 2)
    for index, name in enumerate(paths):
        assert torch.equal(served[index], trained[index].float() / 255), name


@pytest.mark.slow
def test_rest_scoring_returns_p_fake_per_image_like_the_local_pyfunc(micro_repo, tmp_path, local_pyfunc):
    import pandas as pd

    images = [sorted((micro_repo / "data/raw/fake/stylegan_like").glob("*.png"))[0],
              sorted((micro_repo / "data/raw/real/ffhq_like").glob("*.png"))[0]]
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = clean_env(micro_repo)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{micro_repo / 'mlflow.db'}"
    log = tmp_path / "serve.log"
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    with open(log, "w") as log_file:
        server = subprocess.Popen(
            [str(mlflow_cli), "models", "serve", "-m", MODEL_URI, "--env-manager", "local",
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_until_ready(server, base_url, log)
        # the documented format: one record per image, the image file base64-encoded
        status, answer = post_json(f"{base_url}/invocations",
                                   {"dataframe_records": [{"image": b64_file(p)} for p in images]})
        assert status == 200, answer
        # the alternative: [0, 1] pixels, (N, H, W, 3)
        pixels = [(np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) / 255).tolist() for p in images]
        pixel_status, pixel_answer = post_json(f"{base_url}/invocations", {"inputs": pixels})
        bad_status, bad_answer = post_json(f"{base_url}/invocations", {"dataframe_records": [{"image": "bm90IGFuIGltYWdl"}]})
    finally:
        stop_process_group(server)

    assert list(answer) == ["predictions"]  # MLflow 3.17 wraps the model output
    predictions = answer["predictions"]
    assert len(predictions) == 2
    assert all(isinstance(p, float) and 0.0 <= p <= 1.0 for p in predictions)
    local = local_pyfunc.predict(pd.DataFrame({"image": [b64_file(p) for p in images]}))
    np.testing.assert_allclose(predictions, local, rtol=0, atol=1e-6)

    assert pixel_status == 200, pixel_answer
    np.testing.assert_allclose(pixel_answer["predictions"], predictions, rtol=0, atol=1e-6)

    assert bad_status == 400
    assert "not a base64-encoded image" in bad_answer
