"""Producers: every trigger submits executions through `submit_execution`."""

from producer.submit import ChatTurn, Submitted, Task, submit_execution, submit_many

__all__ = ["ChatTurn", "Submitted", "Task", "submit_execution", "submit_many"]
