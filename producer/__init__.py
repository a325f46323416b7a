"""Producers: every trigger submits executions through `submit_execution`."""

from producer.submit import Submitted, submit_execution

__all__ = ["Submitted", "submit_execution"]
