"""Output limits: a 10 MB line, invalid UTF-8 and 1 GB of output leave the worker bounded."""

from __future__ import annotations

import sys

import psutil

from producer import submit_execution
from tests.conftest import statuses, wait_for
from tests.helpers import stored

LONG_LINE = (
    "import sys; w = sys.stdout.buffer.write; w(b'x' * (10 * 1024 * 1024)); "
    "w(b'\\n\\xff\\xfe bad utf8\\n'); w(b'tail without newline')"
)
ONE_GIGABYTE = (
    "import sys; chunk = b'y' * (1024 * 1024 - 1) + b'\\n'; w = sys.stdout.buffer.write\n"
    "for _ in range(1024): w(chunk)\nw(b'done\\n')"
)


def test_a_10_mb_line_and_invalid_utf8_are_capped_with_a_marker(services, make_agent, processes):
    make_agent("text", command=[sys.executable, "-c", LONG_LINE], output="text")
    processes.workers()
    eid = submit_execution(services, "text", "go").execution.id
    wait_for(lambda: statuses(services, [eid])[eid] == "completed", 60, message="completed")
    _, transcript = stored(services, eid)
    first, second, third = transcript.content.split("\n")
    assert first.startswith("x" * 1000) and "line truncated" in first
    assert len(first) < 2 * 1024 * 1024
    assert "\ufffd" in second and "bad utf8" in second
    assert third == "tail without newline"


def test_a_gigabyte_of_output_is_drained_capped_and_the_worker_memory_stays_bounded(
    services, make_agent, processes
):
    make_agent(
        "flood", command=[sys.executable, "-c", ONE_GIGABYTE], output="text", timeout_seconds=300
    )
    pool = processes.workers(threads=2)
    eid = submit_execution(services, "flood", "go").execution.id
    peak = 0

    def done() -> bool:
        nonlocal peak
        for proc in psutil.Process(pool.pid).children(recursive=True):
            try:
                if "dramatiq" in " ".join(proc.cmdline()):
                    peak = max(peak, proc.memory_info().rss)
            except psutil.Error:
                pass
        return (
            statuses(services, [eid])[eid] != "pending"
            and statuses(services, [eid])[eid] != "running"
        )

    wait_for(done, 240, 0.2, "the flood to finish")
    row, transcript = stored(services, eid)
    assert row.status == "completed", row.error
    assert transcript.truncated and "[output truncated after" in transcript.content
    assert len(transcript.content) <= 70 * 1024 * 1024
    print(f"\nworker peak RSS during 1 GB of output: {peak / 2**20:.0f} MiB")
    assert peak < 1024 * 2**20
