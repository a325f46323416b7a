"""`/metrics` (Prometheus text format) and the request metrics of every API route.

Open by default, as Prometheus scrapes expect; with `AGX_METRICS_TOKEN` set it answers only
`Authorization: Bearer <that token>` (it names agents, so keep it off public networks or
set the token). Samples of every gunicorn process are served together (shared/metrics.py).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST

from api.context import Unauthorized, bearer_token, services
from shared import metrics
from shared.services import Services
from shared.slots import Usage
from shared.store import agents

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def scrape() -> Any:
    """Every metric of this API's processes, and the slot gauges read from Redis now."""
    svc = services()
    expected = svc.settings.metrics_token
    if expected and not hmac.compare_digest((bearer_token() or "").encode(), expected.encode()):
        raise Unauthorized("/metrics needs 'Authorization: Bearer <AGX_METRICS_TOKEN>'")
    body = metrics.exposition(metrics.SlotsCollector(lambda: _usage(svc)))
    return Response(body, mimetype=CONTENT_TYPE_LATEST)


def _usage(svc: Services) -> Iterator[tuple[str, int, Usage]]:
    with svc.Session() as session:
        limits = agents.limits(session)
    for agent, capacity in limits.items():
        yield agent, capacity, svc.slots.usage(agent)


def instrument(app: Flask) -> None:
    """Count and time every request by route template (never by raw path)."""

    @app.before_request
    def started() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def finished(response: Response) -> Response:
        rule = request.url_rule
        route = rule.rule if rule is not None else "unmatched"
        count(route, request.method, response.status_code, g.get("metrics_started"))
        return response


def count(route: str, method: str, status: int, began: float | None) -> None:
    """Count an answered request, and time it from `began` (a perf_counter reading)."""
    metrics.REQUESTS.labels(route, method, str(status)).inc()
    if began is not None:
        metrics.REQUEST_SECONDS.labels(route).observe(time.perf_counter() - began)
