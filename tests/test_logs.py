"""Logs: one line per execution's end with its id and agent as fields; JSON on request."""

from __future__ import annotations

import json
import logging
import os

from shared import logs
from tests.conftest import wait_for, worker_env
from tests.helpers import finished


def test_worker_logs_are_json_lines_naming_the_execution_and_agent(
    client, services, make_agent, processes, settings, tmp_path
):
    make_agent("demo")
    env = worker_env(settings)
    env["AGX_LOG_FORMAT"] = "json"
    processes.start("workers", "--processes", "1", "--threads", "2", env=env)
    eid = client.post("/api/agents/demo/task", json={"message": "hi"}).json["execution_id"]
    wait_for(lambda: finished(services, eid), 30)

    def ended() -> dict | None:
        for path in tmp_path.glob("workers-*.log"):
            for line in path.read_text().splitlines():
                if eid in line and "execution ended" in line:
                    return json.loads(line[line.index("{") :])
        return None

    record = wait_for(ended, 10, message="the end line")
    assert record["execution_id"] == eid and record["agent"] == "demo"
    assert record["status"] == "completed" and record["level"] == "INFO"
    assert record["message"] == "execution ended (attempt 1)"


def test_text_lines_end_with_the_execution_fields(monkeypatch):
    monkeypatch.delenv("AGX_LOG_FORMAT", raising=False)
    record = logging.LogRecord("agx", logging.INFO, __file__, 1, "ended", (), None)
    for key, value in logs.fields("E1", "demo", status="failed").items():
        setattr(record, key, value)
    line = logs.formatter("%(message)s").format(record)
    assert line == "ended execution_id=E1 agent=demo status=failed"
    monkeypatch.setenv("AGX_LOG_FORMAT", "json")
    parsed = json.loads(logs.formatter().format(record))
    assert parsed["execution_id"] == "E1" and parsed["message"] == "ended"


def test_a_direct_stream_writes_each_record_whole_and_replaces_lone_surrogates(tmp_path):
    path = tmp_path / "log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        handler = logging.StreamHandler(logs.FdStream(fd))  # type: ignore[arg-type]
        handler.setFormatter(logging.Formatter("%(message)s"))
        record = logging.LogRecord("agx", logging.INFO, __file__, 1, "é" * 100_000, (), None)
        handler.handle(record)
        record.msg = "bad \udc80 byte"
        handler.handle(record)
    finally:
        os.close(fd)
    assert path.read_text().splitlines() == ["é" * 100_000, "bad ? byte"]
