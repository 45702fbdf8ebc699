"""The registered model behind `mlflow models serve`: a real scoring server on 127.0.0.1,
REST requests in the documented format, answers equal to the local pyfunc's."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import clean_env

MODEL_URI = "models:/robust-deepfake-detector@baseline"
READY_TIMEOUT_S = 180


def post_json(url: str, payload: dict) -> tuple[int, dict | str]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


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
    from robust_deepfake.inference.pyfunc import images_from_input

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


# The servers run with small limits, so that oversize requests stay cheap to build.
SERVER_LIMITS = {"ROBUST_DEEPFAKE_MAX_REQUEST_MB": "1", "ROBUST_DEEPFAKE_MAX_REQUEST_IMAGES": "8"}


def copy_without_input_schema(micro_repo: Path, dest: Path) -> Path:
    """The registered model's files with `signature.inputs: null`, as versions registered
    before the `image` signature have them: MLflow then hands `{"inputs": ...}` to the
    model as a numpy array."""
    import yaml

    env = clean_env(micro_repo)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{micro_repo / 'mlflow.db'}"
    subprocess.run([str(Path(sys.executable).parent / "mlflow"), "artifacts", "download", "-u", MODEL_URI,
                    "-d", str(dest)], cwd=dest.parent, env=env, check=True, capture_output=True, timeout=300)
    mlmodel = yaml.safe_load((dest / "MLmodel").read_text())
    mlmodel["signature"]["inputs"] = None
    (dest / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return dest


@pytest.fixture(scope="module")
def servers(micro_repo, localhost, tmp_path_factory):
    """Two `mlflow models serve` processes, started side by side: the registered version
    (`current`, the `image` column signature) and a copy of it without an input schema
    (`legacy`). Both are stopped, process group and all, after the module."""
    workdir = tmp_path_factory.mktemp("serve")
    store = {"MLFLOW_TRACKING_URI": f"sqlite:///{micro_repo / 'mlflow.db'}", **SERVER_LIMITS}
    started = [localhost.start_model_server(MODEL_URI, workdir, **store)]
    try:
        legacy = copy_without_input_schema(micro_repo, workdir / "legacy-model")
        started.append(localhost.start_model_server(str(legacy), workdir, **store))
        for server, url in started:
            server.wait_http(f"{url}/ping", READY_TIMEOUT_S)
        yield {"current": started[0][1], "legacy": started[1][1]}
    finally:
        for server, _ in started:
            server.stop()


def micro_images(micro_repo: Path) -> list[Path]:
    return [sorted((micro_repo / "data/raw/fake/stylegan_like").glob("*.png"))[0],
            sorted((micro_repo / "data/raw/real/ffhq_like").glob("*.png"))[0]]


@pytest.mark.slow
def test_rest_scoring_returns_p_fake_per_image_like_the_local_pyfunc(micro_repo, servers, local_pyfunc):
    import pandas as pd

    images = micro_images(micro_repo)
    # the documented format: one record per image, the image file base64-encoded
    status, answer = post_json(f"{servers['current']}/invocations",
                               {"dataframe_records": [{"image": b64_file(p)} for p in images]})
    assert status == 200, answer
    assert list(answer) == ["predictions"]  # MLflow 3.17 wraps the model output
    predictions = answer["predictions"]
    assert len(predictions) == 2
    assert all(isinstance(p, float) and 0.0 <= p <= 1.0 for p in predictions)
    local = local_pyfunc.predict(pd.DataFrame({"image": [b64_file(p) for p in images]}))
    np.testing.assert_allclose(predictions, local, rtol=0, atol=1e-6)

    # [0, 1] pixels, (N, H, W, 3): MLflow turns them into strings for the `image` column,
    # so the signature's model refuses them clearly; a version without input schema
    # receives the array and scores it like the image files
    pixels = [(np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) / 255).tolist() for p in images]
    refused_status, refused = post_json(f"{servers['current']}/invocations", {"inputs": pixels})
    assert refused_status == 400
    assert "expected a base64-encoded image file (a string), got a list" in refused
    pixel_status, pixel_answer = post_json(f"{servers['legacy']}/invocations", {"inputs": pixels})
    assert pixel_status == 200, pixel_answer
    np.testing.assert_allclose(pixel_answer["predictions"], predictions, rtol=0, atol=1e-6)

    bad_status, bad_answer = post_json(f"{servers['current']}/invocations",
                                       {"dataframe_records": [{"image": "bm90IGFuIGltYWdl"}]})
    assert bad_status == 400
    assert "not a base64-encoded image" in bad_answer


def post_raw(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, str, float]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode(errors="replace"), time.monotonic() - started
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace"), time.monotonic() - started


@pytest.mark.slow
def test_rest_refusals_are_400s_with_a_message_and_no_stack_trace(micro_repo, servers):
    """Non-finite pixels, oversize requests, rows that are not images and schema
    violations: HTTP 400 quickly, the reason in the message, nothing of the server's
    code (no traceback, no file paths) in the body, and the server keeps serving."""
    image = b64_file(micro_images(micro_repo)[0])
    nan = np.full((1, 16, 16, 3), 0.5)
    nan[0, 3, 4, 1] = np.nan
    inf = np.full((2, 16, 16, 3), 0.5)
    inf[1, 0, 0, 0] = np.inf
    big_rows = {"dataframe_records": [{"image": image}, {"image": "A" * 4_000_000}]}  # 4 MB > 1 MB
    big_pixels = {"inputs": np.zeros((1, 3, 640, 640), dtype=int).tolist()}  # 1.2 M values > 1 MiB
    cases = {  # name: (server, JSON body, what the message must say)
        "NaN pixels": ("legacy", {"inputs": nan.tolist()}, "image 0: pixel values must be finite numbers"),
        "infinite pixels": ("legacy", {"inputs": inf.tolist()}, "image 1: pixel values must be finite numbers"),
        "NaN pixels, signature": ("current", {"inputs": nan.tolist()}, "got a list (pixel arrays are not"),
        "oversize base64": ("current", big_rows, "request too large: 3.8 MiB of base64 image data, at most 1 MiB"),
        "oversize pixels": ("legacy", big_pixels, "request too large: 1.2 MiB of pixel values"),
        "too many images": ("current", {"dataframe_records": [{"image": image}] * 9},
                            "request too large: 9 images, at most 8 per request"),
        "bad base64 row": ("current", {"dataframe_records": [{"image": image}, {"image": "%%% not base64"}]},
                           "row 1: not a base64-encoded image"),
        "not an image": ("current", {"dataframe_records": [{"image": "bm90IGFuIGltYWdl"}]},
                         "row 0: not a base64-encoded image (no image format PIL reads)"),
        "number row": ("current", {"dataframe_records": [{"image": 5}]}, "row 0: expected a base64-encoded image"),
        "null row": ("current", {"dataframe_records": [{"image": None}]}, "got null"),
        "wrong column": ("current", {"dataframe_records": [{"img": image}]}, "Model is missing inputs ['image']"),
        "no rows": ("current", {"dataframe_records": []}, "Model is missing inputs ['image']"),
        "wrong column, legacy": ("legacy", {"dataframe_records": [{"img": image}]}, "expected an 'image' column"),
    }
    answers = {}
    for name, (server, body, expected) in cases.items():
        status, text, seconds = post_raw(f"{servers[server]}/invocations", json.dumps(body).encode())
        answers[name] = text
        assert status == 400, (name, status, text[-2000:])
        message = json.loads(text)["message"]
        assert expected in message, (name, message[-2000:])
        assert seconds < 20, (name, seconds)  # refused before any image is decoded or scored
    status, text, _ = post_raw(f"{servers['current']}/invocations", b'{"dataframe_records": [')
    assert status == 400
    answers["malformed JSON"] = text

    for name, text in answers.items():
        body = json.loads(text)
        assert "stack_trace" not in body, name
        for leak in ("Traceback", 'File "', "site-packages", sys.prefix, str(micro_repo), str(Path.cwd())):
            assert leak not in text, (name, leak, text[-2000:])

    # the refusals cost nothing: both servers still answer
    for server in ("current", "legacy"):
        status, answer = post_json(f"{servers[server]}/invocations", {"dataframe_records": [{"image": image}]})
        assert status == 200, answer
