"""Log lines: text for people, or one JSON object a line with `AGX_LOG_FORMAT=json`.

Lines about one execution carry `execution_id` and `agent` as fields (`log.info(...,
extra=fields(execution_id, agent))`): JSON lines have them as keys, text lines end with
`execution_id=... agent=...`. JSON formatting is python-json-logger's.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from pythonjsonlogger.json import JsonFormatter

FORMAT_ENV = "AGX_LOG_FORMAT"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Fields a record may carry about its execution, shown after the message.
CONTEXT = ("execution_id", "agent", "status")


def fields(execution_id: str, agent: str, **more: Any) -> dict[str, Any]:
    """The `extra` of a line about one execution."""
    return {"execution_id": execution_id, "agent": agent, **more}


class TextFormatter(logging.Formatter):
    """The plain format, with an execution's fields appended when the record has them."""

    def format(self, record: logging.LogRecord) -> str:
        """One line (plus a traceback, if any)."""
        line = super().format(record)
        context = [f"{k}={getattr(record, k)}" for k in CONTEXT if hasattr(record, k)]
        return f"{line} {' '.join(context)}" if context else line


def formatter(text_format: str = TEXT_FORMAT) -> logging.Formatter:
    """JSON when AGX_LOG_FORMAT=json, else text."""
    if os.environ.get(FORMAT_ENV, "").lower() == "json":
        return JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    return TextFormatter(text_format)


def configure(level: int = logging.INFO) -> None:
    """Set up the root logger of an agx process. pika's INFO lines (one set per connection:
    every API and worker thread opens its own) are left out unless `level` asks for DEBUG."""
    logging.basicConfig(level=level)
    logging.getLogger("pika").setLevel(level if level <= logging.DEBUG else logging.WARNING)
    reformat()


def reformat(text_format: str = TEXT_FORMAT) -> None:
    """Give every handler of the root logger agx's formatter (a process whose logging another
    library set up: Dramatiq's worker processes)."""
    chosen = formatter(text_format)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(chosen)


class FdStream:
    """A text stream that writes each call straight to a file descriptor: one write() per log
    record (a pipe takes up to PIPE_BUF bytes whole; a file opened O_APPEND takes each write
    whole), nothing buffered, no other process in between."""

    def __init__(self, fd: int):
        self.fd = fd

    def write(self, text: str) -> int:
        """Write all of `text` (lone surrogates replaced)."""
        data = memoryview(text.encode("utf-8", errors="replace"))
        while data:
            data = data[os.write(self.fd, data) :]
        return len(text)

    def flush(self) -> None:
        """Nothing is buffered."""


def write_directly(fd: int = 2) -> None:
    """Point the root logger's stream handlers at `fd` itself. Dramatiq hands each worker
    process's lines through a pipe to its main process, which writes them to the pool's
    stderr (per line a second process woke up: about 80 us of the pool's CPU per execution's
    end line); a worker process still has that stderr as its fd 2 and writes there itself."""
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler:  # not its subclasses (a FileHandler's file)
            handler.setStream(FdStream(fd))  # type: ignore[arg-type]
