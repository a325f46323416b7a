"""The web pages: server-rendered views over the REST API (see docs/pages.md)."""

import api.pages.agents
import api.pages.executions
import api.pages.live  # noqa: F401  (the three modules' routes join the blueprint)
from api.pages.base import bp

__all__ = ["bp"]
