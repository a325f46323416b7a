"""Producers: every trigger submits executions through `submit_execution`."""

from producer.submit import Submitted, publish_or_defer, submit_execution

__all__ = ["Submitted", "publish_or_defer", "submit_execution"]
