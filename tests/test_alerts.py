"""Alerts of the re-evaluation flow, end to end: a webhook receiver on 127.0.0.1, a
Prefect notification block pointing at it in a temporary Prefect server, and a drop made
the way the README tells users to (`robust-deepfake reevaluate
simulate-drop`) on a copy of the micro repo.

* a drop: one POST naming the model, version, alias, attack, eps, figures and threshold,
  and the same line as the failed run's message;
* no drop: no POST;
* a receiver that answers 500: the run still fails with the drop, and says the alert was not sent;
* a block that does not exist: the run fails before evaluating anything.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from helpers import REPO, run

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("own_mlflow_stores")]

BLOCK = "custom-webhook/robustness-alerts"
BROKEN_BLOCK = "custom-webhook/broken-alerts"


class Receiver:
    """An HTTP server on a free port of 127.0.0.1 that records every request; `/fail` answers 500."""

    def __init__(self):
        self.requests: list[dict] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def _record(self):
                length = int(self.headers.get("Content-Length") or 0)
                received.append({"method": self.command, "path": self.path,
                                 "body": self.rfile.read(length).decode()})
                self.send_response(500 if self.path.startswith("/fail") else 200)
                self.end_headers()

            do_POST = do_GET = do_PUT = _record  # noqa: N815 - http.server's naming

            def log_message(self, *args):  # keep the test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def receiver(prefect_harness):
    """A fresh receiver, and the blocks BLOCK (-> /hook) and BROKEN_BLOCK (-> /fail) at it."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    server = Receiver()
    for ref, path in ((BLOCK, "/hook"), (BROKEN_BLOCK, "/fail")):
        CustomWebhookNotificationBlock(
            name="robustness alerts", url=f"{server.url}{path}", timeout=5,
            json_data={"subject": "{{subject}}", "text": "{{body}}"},
        ).save(ref.split("/")[1], overwrite=True)
    yield server
    server.close()


def _repo(micro_repo: Path, dest: Path) -> tuple[Path, str, dict[str, str], str]:
    """A private copy of the micro repo with @champion -> reg seed 0, @challenger ->
    baseline seed 0, re-evaluating PGD at 1/255 on few CAM images (seconds); also what
    the re-evaluation scores (`pgd accuracy`, `pgd auc`: report.select_by's)."""
    from mlflow import MlflowClient

    from robust_deepfake.config import load_params
    from robust_deepfake.verdict.champion import score_plan
    from robust_deepfake.tracking.store import configure
    from robust_deepfake.paths import ModelKey, read_run_record

    root = Path(shutil.copytree(micro_repo, dest, symlinks=True))
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["attack"].update(attacks=["pgd"], eps=["1/255"])
    raw["cam"].update(num_samples=4)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params(root / "params.yaml")
    configure(params.tracking, root)
    client = MlflowClient()
    name = params.tracking.registered_model
    versions = {v: read_run_record(root, ModelKey(v, params.train.seeds[0]))["registered_version"]
                for v in ("baseline", "reg")}
    client.set_registered_model_alias(name, "champion", versions["reg"])
    client.set_registered_model_alias(name, "challenger", versions["baseline"])
    attacks, metric = score_plan(params.report.select_by, params.attack.attacks)
    return root, name, versions, f"{'+'.join(attacks)} {metric}"


def _simulate_drop(root: Path, alias: str) -> str:
    """The README's command; returns the simulated previous run's id."""
    out = run([sys.executable, "-m", "robust_deepfake.cli", "reevaluate", "simulate-drop", "--alias", alias],
              root, timeout=300).stdout
    assert f"@{alias}: its next re-evaluation compares with run " in out, out
    return out.split("compares with run ")[1].split()[0]


def test_a_drop_posts_one_alert_naming_model_attack_eps_and_drop(receiver, micro_repo, tmp_path):
    from flows.reevaluate import reevaluate

    root, name, versions, scored = _repo(micro_repo, tmp_path / "repo")
    previous = _simulate_drop(root, "champion")

    state = reevaluate(repo=str(root), aliases=["champion"], notify_block=BLOCK, return_state=True)

    assert state.is_failed()
    line = f"robustness drop: @champion ({name} v{versions['reg']}): mean {scored} over eps [1/255] now "
    assert state.message.startswith(line), state.message
    assert f"previous evaluation 1.000 (run {previous}): dropped by " in state.message
    assert "> reevaluate.max_drop 0.05" in state.message
    assert " | " not in state.message  # one alias dropped, the alert was sent: one line
    assert [(r["method"], r["path"]) for r in receiver.requests] == [("POST", "/hook")]
    sent = json.loads(receiver.requests[0]["body"])
    assert sent["subject"] == f"Robustness drop: {name} @champion v{versions['reg']}"
    assert sent["text"].splitlines()[0] == state.message  # the same line as the failed run
    for part in (name, f"v{versions['reg']}", "@champion", scored, "eps [1/255]", "now 0.",
                 "previous evaluation 1.000", "dropped by 0.", "reevaluate.max_drop 0.05"):
        assert part in sent["text"], part


def test_no_drop_sends_nothing(receiver, micro_repo, tmp_path):
    from flows.reevaluate import reevaluate

    root, *_ = _repo(micro_repo, tmp_path / "repo")
    # first re-evaluation: compared with the attack sweep on the training run, the same attack
    state = reevaluate(repo=str(root), aliases=["champion"], notify_block=BLOCK, return_state=True)
    assert state.is_completed(), state.message
    assert abs(state.result()["champion"]["drop"]) <= 0.05
    assert receiver.requests == []


def test_an_alert_that_cannot_be_sent_is_reported_and_the_run_still_fails(receiver, micro_repo, tmp_path):
    from flows.reevaluate import reevaluate

    root, name, versions, _ = _repo(micro_repo, tmp_path / "repo")
    _simulate_drop(root, "champion")

    state = reevaluate(repo=str(root), aliases=["champion"], notify_block=BROKEN_BLOCK, return_state=True)

    assert state.is_failed()
    drop, problem = state.message.split(" | ")
    assert drop.startswith(f"robustness drop: @champion ({name} v{versions['reg']}): ")
    assert problem.startswith(f"alert not sent through notify_block '{BROKEN_BLOCK}': HTTPStatusError")
    assert [r["path"] for r in receiver.requests] == ["/fail"]


def test_a_missing_block_fails_before_any_evaluation(receiver, micro_repo):
    from flows.reevaluate import reevaluate

    for ref, expected in (("custom-webhook/nope", "cannot be loaded"), ("nope", "expected '<block-type-slug>")):
        state = reevaluate(repo=str(micro_repo), aliases=["champion"], notify_block=ref, return_state=True)
        assert state.is_failed() and f"notify_block {ref!r}" in state.message and expected in state.message, \
            state.message
    assert receiver.requests == []


def test_serve_passes_the_block_to_the_scheduled_deployment():
    from flows.serve import build_deployments

    _, scheduled = build_deployments(REPO, notify_block=BLOCK)
    assert scheduled.parameters == {"notify_block": BLOCK}
    assert build_deployments(REPO)[1].parameters == {}
