"""Errors that carry an HTTP status and a stable code, raised by producers and services."""

from __future__ import annotations


class AgxError(Exception):
    """Base error: `status` for HTTP, `code` for machines, the message for people."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, object]:
        """The body of an error response."""
        body: dict[str, object] = {"code": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        return {"error": body}


class InvalidField(AgxError):
    """A request field is missing or malformed."""

    status = 422
    code = "invalid_field"

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}", field)


class NotFound(AgxError):
    """The named thing does not exist (or is not visible to the caller)."""

    status = 404
    code = "not_found"


class Conflict(AgxError):
    """The request clashes with the current state."""

    status = 409
    code = "conflict"


class AlreadyFired(Conflict):
    """A schedule's execution for this due time exists already (one_fire_per_due_time)."""

    code = "already_fired"


class QueueFull(AgxError):
    """The agent's waiting list is at its queue_limit."""

    status = 429
    code = "queue_full"


class TooManyStreams(AgxError):
    """The caller's key already holds as many live streams as it may in this API process."""

    status = 429
    code = "too_many_streams"
    retry_after_seconds = 1


class StreamsBusy(AgxError):
    """This API process already serves as many live streams as it may; another may not."""

    status = 503
    code = "streams_busy"
    retry_after_seconds = 1
