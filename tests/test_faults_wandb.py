"""wandb faults: online mode that cannot work falls back to offline without ending the
other wandb runs the user has open in the same process; every exit code is the run's own."""

from __future__ import annotations

import http.server
import json
import logging
import threading
import time

import pytest

from eval_recorder.wandb_sink import ONLINE_INIT_TIMEOUT_S, ONLINE_PROBE_TIMEOUT_S, WandbSink
from wandb_offline import history_rows, run_records

FALLBACK = ("; wandb.mode=online falls back to offline: videos and metrics go to a local wandb run (its `wandb sync` "
            "command is printed at the end) and recording goes on.")


@pytest.fixture
def user_run(tmp_path):
    """A wandb run of the user's own, open in this process while the sink starts."""
    import wandb

    run = wandb.init(project="users-project", id="userrun1", dir=str(tmp_path / "user"), mode="offline",
                     reinit="create_new")
    (tmp_path / "user").mkdir(exist_ok=True)
    run.log({"user/metric": 1.0}, step=1)
    yield run
    run.finish()


def _exit_codes(run_dir) -> list[int]:
    return [r.exit.exit_code for r in run_records(run_dir) if r.WhichOneof("record_type") == "exit"]


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "eval_recorder.wandb_sink"]


def test_unreachable_server_falls_back_offline_quickly_and_the_users_run_goes_on(tmp_path, monkeypatch, caplog,
                                                                                 user_run):
    """wandb's server on a closed loopback port: the probe fails at once, no online run is
    started, so nothing has to be torn down."""
    caplog.set_level(logging.WARNING)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    sink = WandbSink(mode="online", project="p", run_id="unreach1", run_dir=tmp_path / "sink")
    started = time.monotonic()
    sink.start()
    took = time.monotonic() - started
    sink.log_metrics({"eval/return_mean": 1.0}, step=1)
    sink.finish(exit_code=0)
    user_run.log({"user/metric": 2.0}, step=2)  # the user's run is still open
    user_run.finish(exit_code=0)

    assert sink.mode == "offline"
    assert took < ONLINE_PROBE_TIMEOUT_S
    assert _warnings(caplog) == ["wandb could not be reached (ConnectionRefusedError)" + FALLBACK]
    (sink_run,) = (tmp_path / "sink" / "wandb").glob("offline-run-*-unreach1")
    assert [row["eval/return_mean"] for row in history_rows(sink_run)] == [1.0]
    assert _exit_codes(sink_run) == [0]
    (users,) = (tmp_path / "user" / "wandb").glob("offline-run-*-userrun1")
    assert [row["user/metric"] for row in history_rows(users)] == [1.0, 2.0]
    assert _exit_codes(users) == [0]


class _HalfServer(http.server.BaseHTTPRequestHandler):
    """Answers the probe's viewer query; every other wandb request fails (HTTP 500)."""

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if b"query Viewer { viewer { id } }" in body:
            payload, status = json.dumps({"data": {"viewer": {"id": "VXNlcjox"}}}).encode(), 200
        else:
            payload, status = b'{"errors": [{"message": "down for maintenance"}]}', 500
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def half_server(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HalfServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    yield server
    server.shutdown()


@pytest.mark.slow
def test_online_start_that_fails_after_the_probe_never_ends_the_users_run(tmp_path, caplog, half_server, user_run):
    """The server answers the probe but fails wandb.init: the failed run id stays held by
    wandb's service, and only a teardown (ending every run of the process) would free it,
    so with the user's run open the sink turns wandb off instead; videos go on locally."""
    caplog.set_level(logging.WARNING)
    sink = WandbSink(mode="online", project="p", run_id="halfup1", run_dir=tmp_path / "sink")
    started = time.monotonic()
    sink.start()
    took = time.monotonic() - started
    sink.log_metrics({"eval/return_mean": 1.0}, step=1)  # a no-op once off
    sink.finish(exit_code=0)
    user_run.log({"user/metric": 2.0}, step=2)
    user_run.finish(exit_code=0)

    assert not sink.active
    assert took < ONLINE_INIT_TIMEOUT_S + 30
    (warning,) = _warnings(caplog)
    assert warning.startswith("wandb could not start online (other wandb runs of this process stay open) (")
    assert warning.endswith("); wandb logging is off, videos are still saved locally.")
    (users,) = (tmp_path / "user" / "wandb").glob("offline-run-*-userrun1")
    assert [row["user/metric"] for row in history_rows(users)] == [1.0, 2.0]
    assert _exit_codes(users) == [0]


@pytest.mark.slow
def test_online_start_that_fails_after_the_probe_falls_back_offline_when_no_other_run_is_open(tmp_path, caplog,
                                                                                               half_server):
    """Without other wandb runs in the process, tearing wandb's service down ends only the
    failed attempt: the run falls back to offline under its own id."""
    caplog.set_level(logging.WARNING)
    sink = WandbSink(mode="online", project="p", run_id="halfup2", run_dir=tmp_path / "sink")
    sink.start()
    sink.log_metrics({"eval/return_mean": 1.0}, step=1)
    sink.finish(exit_code=143)

    assert sink.mode == "offline"
    (warning,) = _warnings(caplog)
    assert warning.startswith("wandb could not start the run online (")
    assert warning.endswith(FALLBACK)
    (sink_run,) = (tmp_path / "sink" / "wandb").glob("offline-run-*-halfup2")
    assert [row["eval/return_mean"] for row in history_rows(sink_run)] == [1.0]
    assert _exit_codes(sink_run) == [143]
