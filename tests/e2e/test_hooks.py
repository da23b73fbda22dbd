"""Hooks against a real HTTP server on 127.0.0.1 and a real command, from a real `vidrop run`."""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import drop, make_image, sidecar, vidrop_env, wait_for

pytestmark = pytest.mark.e2e

RECORD_HOOK = """
import json, os, sys
data = json.load(sys.stdin)
facts = {name: value for name, value in os.environ.items() if name.startswith("VIDROP_JOB_")}
with open(sys.argv[1], "a") as handle:
    handle.write(json.dumps({"payload": data, "env": facts}) + "\\n")
"""


class HookServer:
    """/flaky answers 500 twice, then 200; /hang never answers (until the test ends)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict, int]] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/hang":
                    server.requests.append((self.path, body, 0))
                    server.release.wait(60)
                    return
                status = 500 if sum(1 for r in server.requests if r[0] == self.path) < 2 else 200
                server.requests.append((self.path, body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="hook-server")
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def hook_server():
    server = HookServer()
    yield server
    server.stop()


def test_command_and_webhooks_with_retries_and_a_dead_letter(folders, demo_models, start_vidrop, hook_server, tmp_path):
    record = tmp_path / "hook-calls.jsonl"
    env = vidrop_env(
        folders,
        demo_models["ltx"],
        **{
            "VIDROP_HOOKS__COMMAND": json.dumps([sys.executable, "-c", RECORD_HOOK, str(record)]),
            "VIDROP_HOOKS__URLS": json.dumps([f"{hook_server.url}/flaky", f"{hook_server.url}/hang"]),
            "VIDROP_HOOKS__EVENTS": '["done"]',
            "VIDROP_HOOKS__TIMEOUT_SECONDS": "2",
            "VIDROP_HOOKS__RETRIES": "2",
            "VIDROP_HOOKS__BACKOFF_SECONDS": "0.1",
        },
    )
    vidrop = start_vidrop(env)
    vidrop.wait_event("daemon_ready")
    drop(folders["inbox"] / "one.json", sidecar())
    drop(folders["inbox"] / "one.png", make_image(tmp_path / "one.png").read_bytes())

    # The command got the manifest on stdin and the key facts in its environment.
    calls = wait_for(
        lambda: record.exists() and [json.loads(line) for line in record.open()], 120, what="the command hook"
    )
    manifest = json.loads((folders["outbox"] / "one.json").read_text())
    assert calls[0]["payload"] == manifest
    assert calls[0]["env"]["VIDROP_JOB_ID"] == manifest["job_id"] and calls[0]["env"]["VIDROP_JOB_STATE"] == "done"
    assert calls[0]["env"]["VIDROP_JOB_VIDEO"] == str(folders["outbox"] / "one.mp4")

    # The flaky webhook failed twice and got it the third time.
    wait_for(lambda: [r for r in hook_server.requests if r[0] == "/flaky" and r[2] == 200], 60, what="a 200")
    flaky = [r for r in hook_server.requests if r[0] == "/flaky"]
    assert [r[2] for r in flaky] == [500, 500, 200] and flaky[-1][1] == manifest

    # The webhook that never answers: three timed-out attempts, then a dead-letter line.
    dead_letter = folders["state"] / "hooks-dead-letter.jsonl"
    wait_for(dead_letter.exists, 60, what="the dead-letter file")
    lines = [json.loads(line) for line in dead_letter.open()]
    assert [(line["target"], line["attempts"]) for line in lines] == [(f"{hook_server.url}/hang", 3)]
    assert lines[0]["payload"] == manifest and "timed out" in lines[0]["error"]

    # Meanwhile the queue went on: the next job ran, and the daemon stops cleanly.
    drop(folders["inbox"] / "two.json", sidecar())
    drop(folders["inbox"] / "two.png", make_image(tmp_path / "two.png").read_bytes())
    wait_for((folders["outbox"] / "two.mp4").exists, 120, what="the second video")
    assert vidrop.events_named("hook_attempt_failed") and vidrop.events_named("hook_dead_lettered")
    hook_server.release.set()
    assert vidrop.stop() == 0
