"""Producers: every trigger submits executions through `submit_execution`."""

from producer.submit import ChatTurn, Submitted, submit_execution

__all__ = ["ChatTurn", "Submitted", "submit_execution"]
