"""Parse an agent's stdout, line by line, into the facts an execution records.

`StreamJsonParser` reads Claude Code's ``--output-format stream-json`` events;
`TextParser` takes plain output as the response. Both accept any line without
raising: lines that are not JSON objects, unknown fields and fields of the
wrong type are skipped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

STREAM_JSON = "claude-stream-json"
TEXT = "text"


@dataclass
class ParsedRun:
    """What a run's output says about it."""

    session_id: str | None = None
    model_used: str | None = None
    cost: Decimal | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    num_turns: int | None = None
    response: str | None = None
    is_error: bool = False
    has_result: bool = False
    error: str | None = None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    # bool is an int subclass, but "true" tokens are no count.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _cost(value: Any) -> Decimal | None:
    """Turn a JSON number into a Decimal via str, so 0.1 stays 0.1, not 0.1000000000000000055."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return Decimal(str(value)) if math.isfinite(value) else None


@dataclass
class _Usage:
    """Token counts from one usage object."""

    input_tokens: int | None
    output_tokens: int | None

    @classmethod
    def of(cls, usage: Any) -> _Usage:
        """Read the counts from a usage object, None where absent or malformed."""
        usage = _dict(usage)
        return cls(_int(usage.get("input_tokens")), _int(usage.get("output_tokens")))


def _total(counts: list[int | None]) -> int | None:
    known = [n for n in counts if n is not None]
    return sum(known) if known else None


class StreamJsonParser:
    """Accumulate a ParsedRun from Claude Code stream-json lines."""

    def __init__(self) -> None:
        self._run = ParsedRun()  # fields taken straight from the events
        self._init_session: str | None = None
        self._result_session: str | None = None
        # The CLI repeats a message's usage on each content block it emits: count it once per id.
        self._usage_by_message: dict[str, _Usage] = {}
        self._result_usage = _Usage(None, None)

    def feed(self, line: str) -> dict[str, Any] | None:
        """Take one stdout line; return its JSON object, or None when it is not one."""
        try:
            event = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: absurdly nested arrays
            return None
        if not isinstance(event, dict):
            return None
        kind = event.get("type")
        if kind == "system" and event.get("subtype") == "init":
            self._init_session = _str(event.get("session_id")) or self._init_session
        elif kind == "assistant":
            self._assistant(_dict(event.get("message")))
        elif kind == "result":
            self._result(event)
        return event

    def _assistant(self, message: dict[str, Any]) -> None:
        self._run.model_used = _str(message.get("model")) or self._run.model_used
        if "usage" in message:
            key = _str(message.get("id")) or f"#{len(self._usage_by_message)}"
            self._usage_by_message[key] = _Usage.of(message["usage"])

    def _result(self, event: dict[str, Any]) -> None:
        run = self._run
        run.has_result = True
        self._result_session = _str(event.get("session_id")) or self._result_session
        run.cost = _cost(event.get("total_cost_usd"))
        run.num_turns = _int(event.get("num_turns"))
        run.response = _str(event.get("result"))
        if "usage" in event:  # the CLI's own totals beat our sum of the assistant messages
            self._result_usage = _Usage.of(event["usage"])
        subtype = _str(event.get("subtype")) or ""
        run.is_error = event.get("is_error") is True or subtype.startswith("error")
        run.error = (run.response or subtype or "error") if run.is_error else None

    def result(self) -> ParsedRun:
        """Return what the lines so far say about the run."""
        usages = self._usage_by_message.values()
        inputs = self._result_usage.input_tokens
        outputs = self._result_usage.output_tokens
        return replace(
            self._run,
            session_id=self._init_session or self._result_session,
            input_tokens=_total([u.input_tokens for u in usages]) if inputs is None else inputs,
            output_tokens=_total([u.output_tokens for u in usages]) if outputs is None else outputs,
        )


MAX_TEXT_RESPONSE_CHARS = 1_048_576  #: a text agent's response is cut here (transcript is whole)


class TextParser:
    """Take plain-text output as the response, up to MAX_TEXT_RESPONSE_CHARS."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._size = 0
        self._cut = False

    def feed(self, line: str) -> dict[str, Any] | None:
        """Keep the line (within the cap); plain text never yields a JSON object."""
        if self._size + len(line) > MAX_TEXT_RESPONSE_CHARS:
            self._cut = True
        else:
            self._lines.append(line)
            self._size += len(line) + 1
        return None

    def result(self) -> ParsedRun:
        """Return the lines joined as the response of a finished run."""
        text = "\n".join(self._lines)
        if self._cut:
            text += "\n[response truncated; the full output is in the transcript]"
        return ParsedRun(response=text, has_result=True)


def outcome_fields(parsed: ParsedRun) -> dict[str, Any]:
    """The execution columns a parsed run fills (all but status, error and exit code)."""
    return {
        "response": parsed.response,
        "model_used": parsed.model_used,
        "cost": parsed.cost,
        "input_tokens": parsed.input_tokens,
        "output_tokens": parsed.output_tokens,
        "num_turns": parsed.num_turns,
        "claude_session_id": parsed.session_id,
    }


def parser_for(output: str) -> StreamJsonParser | TextParser:
    """Return a fresh parser for an agent's output format."""
    if output == STREAM_JSON:
        return StreamJsonParser()
    if output == TEXT:
        return TextParser()
    raise ValueError(f"unknown agent output format: {output!r}")
