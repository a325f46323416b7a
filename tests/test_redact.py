"""Secrets are redacted from agent output, JSON stays JSON, and huge lines take linear time."""

from __future__ import annotations

import json
import time

import pytest

from shared.redact import REDACTED, redact

LINEAR_BUDGET_SECONDS = 3.0  # measured well under 1 s per 10 MB; quadratic would take hours


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("key sk-ant-api03-abcdefghijklmnopqrstuv ok", "key [REDACTED] ok"),
        ("openai sk-proj-abcdefghijklmnopqrstuvwx.", "openai [REDACTED]."),
        ("Authorization: Bearer abcdef0123456789", "Authorization: [REDACTED]"),
        ("proxy-authorization=Basic dXNlcjpwYXNz", "proxy-authorization=[REDACTED]"),
        ("header Bearer abcdef0123456789 sent", "header Bearer [REDACTED] sent"),
        ("aws AKIAIOSFODNN7EXAMPLE here", "aws [REDACTED] here"),
        ("gh ghp_abcdefghijklmnopqrstuvwxyz0123", "gh [REDACTED]"),
        ("gh gho_abcdefghijklmnopqrstuvwxyz0123", "gh [REDACTED]"),
        ("gh ghs_abcdefghijklmnopqrstuvwxyz0123", "gh [REDACTED]"),
        ("pat github_pat_11ABCDEFG0123456789_abcdefghij", "pat [REDACTED]"),
        ("ANTHROPIC_API_KEY=sk-ant-demo1234567890abcdefXYZ", "ANTHROPIC_API_KEY=[REDACTED]"),
        ("db.password: hunter2 next", "db.password: [REDACTED] next"),
        ("PASSWD=1234 x-api-key: abc", "PASSWD=[REDACTED] x-api-key: [REDACTED]"),
        (
            "export GITHUB_TOKEN='ghx' my_secret = \"s3\"",
            "export GITHUB_TOKEN='[REDACTED]' my_secret = \"[REDACTED]\"",
        ),
        ("client_Secret:abc,def", "client_Secret:[REDACTED]"),
    ],
)
def test_secrets_are_redacted_and_their_names_kept(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "plain prose with no secrets at all",
        "a task-abcdefghijklmnopqrstuvwxyz is not a key, nor is ask-abcdefghijklmnopqrstuvwxyz",
        "sk-short",
        "the bearer of bad news",
        "AKIAIOSFODNN7EXAMPLEX is too long to be an access key id",
        "x=1 name: value size=10",
        "[REDACTED]",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


def test_the_demo_agents_fake_credentials_are_redacted_and_the_line_stays_json() -> None:
    text = (
        "ANTHROPIC_API_KEY=sk-ant-demo1234567890abcdefXYZ "
        "Authorization: Bearer abcdef0123456789abcdef0123"
    )
    line = json.dumps({"type": "assistant", "message": {"content": [{"text": text}]}})
    redacted = redact(line)
    assert "sk-ant" not in redacted and "abcdef0123456789" not in redacted
    assert json.loads(redacted)["message"]["content"][0]["text"] == (
        "ANTHROPIC_API_KEY=[REDACTED] Authorization: [REDACTED]"
    )


def test_json_credentials_are_redacted_but_token_counts_stay() -> None:
    event = {
        "usage": {"input_tokens": 12, "output_tokens": 80, "cache_read_input_tokens": 0},
        "api_key": "abc123",
        "keys": [1, 2],
        "secret": True,
        "escaped": json.dumps({"password": "pw"}),
    }
    redacted = json.loads(redact(json.dumps(event)))
    assert redacted["usage"] == event["usage"] and redacted["keys"] == [1, 2]
    assert redacted["api_key"] == REDACTED and redacted["secret"] is True
    assert json.loads(redacted["escaped"]) == {"password": REDACTED}


def test_redacting_twice_changes_nothing_more() -> None:
    once = redact("TOKEN=abc Bearer abcdefghijkl sk-abcdefghijklmnopqrstuvwxyz")
    assert redact(once) == once == "TOKEN=[REDACTED] Bearer [REDACTED] [REDACTED]"


@pytest.mark.parametrize(
    "unit",
    [
        "a",
        " ",
        "KEY=",
        "Bearer ",
        "key",
        "a_key ",
        '"password":',
        '"key":1,',
        "sk-",
        "ghp_",
        "AKIA",
        "Authorization:",
        "x=",
    ],
)
def test_a_ten_megabyte_line_is_redacted_in_linear_time(unit: str) -> None:
    text = unit * (10_000_000 // len(unit))
    begun = time.perf_counter()
    redact(text)
    assert time.perf_counter() - begun < LINEAR_BUDGET_SECONDS
