"""The stream-json parser reads what a run says about itself, and never trips over bad lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from workers.stream_json import ParsedRun, StreamJsonParser, TextParser, parser_for

REPO = str(Path(__file__).resolve().parents[1])

INIT = {"type": "system", "subtype": "init", "session_id": "s-init", "model": "claude-x"}
USER = {"type": "user", "message": {"content": [{"type": "tool_result", "content": "ok"}]}}


def assistant(model: str = "claude-sonnet-4-6", usage: Any = None, **fields: Any) -> dict:
    """Build an assistant event."""
    message: dict[str, Any] = {"model": model, "content": [{"type": "text", "text": "hi"}]}
    if usage is not None:
        message["usage"] = usage
    return {"type": "assistant", "message": {**message, **fields}, "session_id": "s-init"}


def result(**fields: Any) -> dict:
    """Build a success result event, fields overriding the defaults."""
    event = {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "result": "final text",
        "session_id": "s-result",
        "total_cost_usd": 0.0897,
        "duration_ms": 16142,
        "num_turns": 6,
    }
    return {**event, **fields}


def parse(*events: Any) -> ParsedRun:
    """Feed events, as JSON lines unless already strings, and return the parsed run."""
    parser = StreamJsonParser()
    for event in events:
        parser.feed(event if isinstance(event, str) else json.dumps(event))
    return parser.result()


def test_a_full_run_yields_session_model_cost_turns_and_response() -> None:
    run = parse(INIT, assistant(usage={"input_tokens": 12, "output_tokens": 80}), USER, result())
    assert run.session_id == "s-init" and run.model_used == "claude-sonnet-4-6"
    assert run.cost == Decimal("0.0897") and run.num_turns == 6
    assert run.response == "final text" and run.has_result and not run.is_error
    assert (run.input_tokens, run.output_tokens) == (12, 80) and run.error is None


def test_tokens_sum_the_assistant_messages_without_a_result_usage() -> None:
    usage = [{"input_tokens": 3, "output_tokens": 5}, {"input_tokens": 4, "output_tokens": 6}]
    run = parse(INIT, assistant(usage=usage[0]), assistant(usage=usage[1]), result())
    assert (run.input_tokens, run.output_tokens) == (7, 11)


def test_a_message_repeated_per_content_block_counts_its_usage_once() -> None:
    usage = {"input_tokens": 3, "output_tokens": 5}
    run = parse(assistant(usage=usage, id="msg_1"), assistant(usage=usage, id="msg_1"))
    assert (run.input_tokens, run.output_tokens) == (3, 5)


def test_the_result_usage_beats_the_sum_of_assistant_messages() -> None:
    totals = {"input_tokens": 100, "output_tokens": 200, "cache_read_input_tokens": 7}
    run = parse(assistant(usage={"input_tokens": 1, "output_tokens": 2}), result(usage=totals))
    assert (run.input_tokens, run.output_tokens) == (100, 200)


def test_the_model_is_the_last_one_an_assistant_message_named() -> None:
    assert parse(INIT, assistant("a"), assistant("b"), result()).model_used == "b"


def test_the_session_falls_back_to_the_result_without_an_init_line() -> None:
    assert parse(assistant(), result()).session_id == "s-result"


def test_the_response_comes_from_the_last_result() -> None:
    run = parse(result(result="first"), result(result="second", num_turns=2))
    assert (run.response, run.num_turns) == ("second", 2)


def test_a_run_without_a_result_line_has_no_result() -> None:
    run = parse(INIT, assistant())
    assert not run.has_result and run.response is None and run.cost is None
    assert run.session_id == "s-init"


def test_nothing_at_all_gives_an_empty_run() -> None:
    assert parse() == ParsedRun()


def test_lines_that_are_not_json_objects_are_skipped_and_feed_returns_none() -> None:
    parser = StreamJsonParser()
    junk = ["this is not json", "[1,2,3]", "42", '"text"', "null", "", "{bad", "[" * 100_000]
    for line in junk:
        assert parser.feed(line) is None
    assert parser.feed(json.dumps(result())) == result()
    assert parser.result().response == "final text"


def test_unknown_types_and_fields_are_returned_but_ignored() -> None:
    parser = StreamJsonParser()
    event = {"type": "stream_event", "whatever": {"nested": [1]}}
    assert parser.feed(json.dumps(event)) == event
    assert parser.result() == ParsedRun()


def test_an_is_error_result_is_an_error_with_its_text() -> None:
    run = parse(INIT, result(is_error=True, result="API Error: 529 overloaded"))
    assert run.is_error and run.error == "API Error: 529 overloaded" and run.has_result


def test_an_error_subtype_is_an_error_named_by_its_subtype() -> None:
    event = result(subtype="error_max_turns")
    del event["result"]
    run = parse(event)
    assert run.is_error and run.error == "error_max_turns" and run.response is None


@pytest.mark.parametrize(
    "fields",
    [
        {"total_cost_usd": "abc", "num_turns": "six", "result": 7, "session_id": 5},
        {"total_cost_usd": True, "num_turns": 6.5, "usage": "lots", "is_error": "yes"},
        {"total_cost_usd": None, "usage": {"input_tokens": "1", "output_tokens": False}},
        {"total_cost_usd": [1], "subtype": 3, "usage": []},
    ],
)
def test_fields_of_the_wrong_type_are_ignored(fields: dict) -> None:
    run = parse({"type": "system", "subtype": "init", "session_id": 9}, result(**fields))
    assert run.has_result and not run.is_error
    assert run.cost is None or run.cost == Decimal("0.0897")
    assert run.session_id in (None, "s-result")


def test_assistant_events_of_the_wrong_shape_are_ignored() -> None:
    run = parse(
        {"type": "assistant", "message": "text"},
        {"type": "assistant"},
        assistant(model=None, usage={"input_tokens": None}),  # type: ignore[arg-type]
        result(),
    )
    assert run.model_used is None and run.input_tokens is None and run.has_result


def test_infinite_costs_are_ignored() -> None:
    assert parse('{"type": "result", "total_cost_usd": Infinity}').cost is None


def test_the_cost_is_the_exact_decimal_of_the_printed_number() -> None:
    assert parse(result(total_cost_usd=0.1)).cost == Decimal("0.1")
    assert parse(result(total_cost_usd=2)).cost == Decimal("2")


def test_the_text_parser_takes_all_lines_as_the_response() -> None:
    parser = TextParser()
    assert parser.feed("one") is None and parser.feed('{"type": "result"}') is None
    assert parser.result() == ParsedRun(response='one\n{"type": "result"}', has_result=True)


def test_parser_for_picks_the_parser_by_output_format() -> None:
    assert isinstance(parser_for("claude-stream-json"), StreamJsonParser)
    assert isinstance(parser_for("text"), TextParser)
    with pytest.raises(ValueError):
        parser_for("xml")


def test_the_demo_agent_output_parses_into_a_complete_run(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agx.demo_agent", "--model", "demo-1", "--session-id", "sess"],
        input="hello there garbage",
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        check=True,
        env={**os.environ, "AGX_DEMO_SESSIONS": str(tmp_path)},
    )
    parser = StreamJsonParser()
    for line in done.stdout.splitlines():
        parser.feed(line)
    run = parser.result()
    assert (run.session_id, run.model_used, run.response) == (
        "sess",
        "demo-1",
        "demo: hello there garbage",
    )
    assert run.cost == Decimal("0.00007") and (run.input_tokens, run.output_tokens) == (3, 4)
