"""`agx up` on the embedded default: starts, runs a demo task, stops leaving no process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import psutil

from agx.embedded import free_port
from tests.conftest import wait_for


def _get(url: str, key: str | None = None, body: dict | None = None) -> dict:
    req = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
    )
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _ready(url: str) -> bool:
    try:
        return _get(url + "/readyz")["status"] == "ok"
    except OSError:
        return False


def _child(parent: int, command: str) -> int | None:
    """Pid of the direct child running `agx <command>`."""
    for proc in psutil.Process(parent).children():
        try:
            if proc.cmdline()[3:4] == [command]:  # python -m agx <command> ...
                return proc.pid
        except psutil.Error:
            continue
    return None


def test_agx_up_runs_a_demo_task_and_stops_everything_on_ctrl_c(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGX_")}
    env["AGX_HOME"] = str(tmp_path / "home")
    port = free_port()
    with open(tmp_path / "up.log", "wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "agx", "up", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    family: list[psutil.Process] = []
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ready(url), 90, 0.2, "agx up to be ready")
        key = json.loads((tmp_path / "home" / "up.json").read_text())["api_key"]
        submitted = _get(url + "/api/agents/demo/task", key, {"message": "hello", "wait": True})
        assert submitted["status"] == "completed", submitted
        assert submitted["response"] == "demo: hello"
        reaper = _child(up.pid, "reaper")
        os.kill(reaper, signal.SIGKILL)  # a child that dies is restarted
        wait_for(
            lambda: _child(up.pid, "reaper") not in (None, reaper),
            30,
            0.2,
            "the reaper to be restarted",
        )
        family = psutil.Process(up.pid).children(recursive=True)
        assert len(family) >= 4, "api, workers, reaper, redis (and postgres) run as children"
        postgres_pid = int((tmp_path / "home" / "pgdata" / "postmaster.pid").read_text().split()[0])
        family.append(psutil.Process(postgres_pid))
        start = time.monotonic()
        os.killpg(up.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert up.wait(60) == 0
        print(f"\nagx up stopped in {time.monotonic() - start:.1f} s")
        gone, alive = psutil.wait_procs(family, timeout=10)
        assert not alive, f"left behind: {[p.info if hasattr(p, 'info') else p for p in alive]}"
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
        for proc in family:
            with contextlib.suppress(psutil.Error):
                proc.kill()
    assert "agx is up" in (tmp_path / "up.log").read_text()
