"""The trivial agent both sides of bench/throughput.py run (plain-text output).

It stamps its own start time before anything else, reads the message on
stdin, appends "<message> <start>" to $BENCH_RECORD (one O_APPEND write, so
concurrent runs never interleave; the bench counts lines per message to prove
each execution ran exactly once) and prints its start and end timestamps
(seconds since the epoch) on one line, then the message on the next.
Run it with `python -S` so interpreter start-up stays as small as it can be.
"""

import time

STARTED = time.time()  # first statement after the docstring: "agent process started"

import os  # noqa: E402
import sys  # noqa: E402

message = sys.stdin.read().strip()
record = os.environ.get("BENCH_RECORD")
if record:
    fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{message} {STARTED:.6f}\n".encode())
    finally:
        os.close(fd)
sys.stdout.write(f"{STARTED:.6f} {time.time():.6f}\n{message}\n")
