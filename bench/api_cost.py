"""The API's own CPU per `POST /api/agents/{name}/task`, beside the floor of the server under it.

    python bench/api_cost.py [--count 3000 --client-threads 8 --rounds 3]

Three servers, one after the other, each the same gunicorn worker (`agx.serve.ApiServer`: one
process, its threads, keep-alive as `agx api` serves) answering the same requests from
--client-threads keep-alive connections:

* agx: `agx api` itself, submitting to an agent that no worker serves (the submissions wait
  in its queue; nothing runs), with a bearer key;
* flask: a minimal Flask app with the same route, reading the JSON body and answering a JSON
  body of the same shape, nothing else;
* wsgi: a bare WSGI function doing the same.

It prints the server's CPU (its process group's user + system, from /proc) per request, each
round and the median, and agx's cost beyond each floor. Not a throughput figure: no workers
run, and the client's own CPU is not counted. It uses the bench database `agx_bench`
(truncated), Redis db 14 (flushed) and a queue of its own (deleted at the end).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from agx import procs  # noqa: E402
from agx.embedded import free_port  # noqa: E402
from bench.measure import delete_queues, fresh_database, group_cpu, wait_until  # noqa: E402
from shared.models import Agent  # noqa: E402
from shared.services import Services  # noqa: E402
from shared.settings import Settings, normalize_database_url  # noqa: E402
from shared.store.keys import create_key  # noqa: E402

AGENT = "api-cost"
QUEUE = "agx-bench-api-cost"
ANSWER = {"execution_id": "0" * 26, "status": "pending", "queue_position": 1, "links": {}}

#: The floors, served by the same gunicorn worker class as `agx api` (argv: flask | wsgi, port,
#: threads, the answer's JSON).
FLOOR = """
import json, sys
from agx.serve import ApiServer
ANSWER = sys.argv[4].encode()

def wsgi(environ, start_response):
    json.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)) or b"{}")
    start_response("202 Accepted", [("Content-Type", "application/json"),
                                    ("Content-Length", str(len(ANSWER)))])
    return [ANSWER]

def flask():
    from flask import Flask, Response, request
    app = Flask("floor")

    @app.post("/api/agents/<name>/task")
    def task(name):
        request.get_json()
        return Response(ANSWER, status=202, mimetype="application/json")
    return app

class Floor(ApiServer):
    def load(self):
        return flask() if sys.argv[1] == "flask" else wsgi

Floor("127.0.0.1:" + sys.argv[2], 1, int(sys.argv[3])).run()
"""


def load(port: int, key: str, count: int, threads: int) -> None:
    """`count` POSTs from `threads` keep-alive connections; raises the first failure (a
    connection refused, or an answer other than 202)."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    errors: list[BaseException] = []

    def client(k: int) -> None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            for i in range(k, count, threads):
                body = json.dumps({"message": f"api-cost-{i}"})
                conn.request("POST", f"/api/agents/{AGENT}/task", body, headers)
                resp = conn.getresponse()
                answer = resp.read()
                if resp.status != 202:
                    raise RuntimeError(f"{resp.status} {answer[:200]!r}")
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]


def measure(name: str, argv: list[str], env: dict[str, str], key: str, port: int, a) -> float:
    """Median CPU ms per request of the server started by argv (its process group: gunicorn's
    arbiter and worker), over a.rounds rounds."""
    server = procs.spawn(argv, env=env, log=None)
    try:

        def up() -> bool:
            try:
                load(port, key, a.client_threads, a.client_threads)
                return True
            except OSError:
                return False

        wait_until(up, 60, name)
        load(port, key, a.count // 5, a.client_threads)  # warm up
        rounds = []
        for r in range(a.rounds):
            before = group_cpu(server.pid)[0]
            load(port, key, a.count, a.client_threads)
            rounds.append((group_cpu(server.pid)[0] - before) / a.count * 1000)
            print(f"[{name}] round {r + 1}: {rounds[-1]:.3f} ms/request", flush=True)
        return statistics.median(rounds)
    finally:
        procs.stop(server, grace_seconds=10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=3000, help="requests per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--client-threads", type=int, default=8)
    p.add_argument("--server-threads", type=int, default=32, help="as `agx api --threads`")
    p.add_argument("--db-url", default="postgresql://postgres@127.0.0.1:5432/agx_bench")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    a = p.parse_args()
    if a.db_url.rstrip("/").endswith("/test") or a.redis_url.rstrip("/").endswith("/15"):
        sys.exit("database `test` and Redis db 15 belong to the test suite")

    fresh_database(a.db_url)
    redis.Redis.from_url(a.redis_url).flushdb()
    home = Path(os.environ.get("TMPDIR", "/tmp")) / "agx-bench-api-cost"
    settings = Settings(
        database_url=normalize_database_url(a.db_url),
        redis_url=a.redis_url,
        broker_url=a.amqp_url,
        home=home,
        queue=QUEUE,
    )
    services = Services(settings, pool_size=2)
    submissions = (a.count // 5 + a.count * a.rounds + 2 * a.client_threads) * 2
    with services.Session.begin() as session:
        session.add(
            Agent(
                name=AGENT,
                command=["/bin/true"],
                output="text",
                max_parallel_tasks=16,
                timeout_seconds=300,
                queue_limit=submissions,
            )
        )
        key = create_key(session, "api-cost")
    env = {
        **os.environ,
        "AGX_DATABASE_URL": settings.database_url or "",
        "AGX_REDIS_URL": a.redis_url,
        "AGX_BROKER_URL": a.amqp_url,
        "AGX_QUEUE": QUEUE,
        "AGX_HOME": str(home),
        "PYTHONPATH": str(ROOT),
    }
    threads = str(a.server_threads)
    figures = {}
    try:
        for name in ("agx", "flask", "wsgi"):
            port = free_port()
            if name == "agx":
                argv = [sys.executable, "-m", "agx", "api", "--port", str(port)]
                argv += ["--workers", "1", "--threads", threads]
            else:
                argv = [sys.executable, "-c", FLOOR, name, str(port), threads, json.dumps(ANSWER)]
            figures[name] = measure(name, argv, env, key, port, a)
    finally:
        delete_queues(a.amqp_url, [QUEUE])
        services.close()

    print(
        f"\nCPU of the server per POST .../task ({a.count} requests x {a.rounds} "
        f"rounds, {a.client_threads} keep-alive clients, one gunicorn worker, "
        f"{a.server_threads} threads):"
    )
    for name, label in (
        ("agx", "agx api"),
        ("flask", "minimal Flask app"),
        ("wsgi", "bare WSGI function"),
    ):
        print(f"  {label:20} {figures[name]:.3f} ms")
    print(
        f"agx beyond the Flask floor: {figures['agx'] - figures['flask']:.3f} ms; "
        f"agx / Flask floor = {figures['agx'] / figures['flask']:.2f}; "
        f"Flask floor / WSGI floor = {figures['flask'] / figures['wsgi']:.2f}"
    )


if __name__ == "__main__":
    main()
