"""REST: cron schedules (filled in by the schedules work)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("schedules", __name__, url_prefix="/api")
