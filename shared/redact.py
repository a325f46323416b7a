"""Replace secrets in agent output with ``[REDACTED]``, in time linear in the text's length.

Covered: Anthropic and OpenAI style keys (``sk-...``), ``Bearer`` tokens,
``Authorization:`` header values, AWS access key ids, GitHub tokens, and
``NAME=value`` / ``NAME: value`` where NAME contains KEY, TOKEN, SECRET,
PASSWORD or PASSWD (the name is kept, the value redacted). A `Redactor` also removes
given values (an agent's env) wherever they appear, raw or JSON-escaped.

Linear time: every repeated part is possessive (``*+``, ``++``), so the engine
never backtracks into it, and each rule may only start where a word starts,
so a position inside a word costs O(1) and a word start at most one scan of
the word. A rule runs only if the text holds its trigger word, a cheap C
substring search, so ordinary text pays for few passes.

A redacted span never includes a quote or a backslash, so a JSON line stays
valid JSON; the numbers, booleans and null of quoted JSON keys are left alone
(``"output_tokens": 80`` is a count, not a credential).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

REDACTED = "[REDACTED]"

_NAME_CHAR = r"[A-Za-z0-9_.\-]"
_CREDENTIAL_WORD = r"(?i:key|token|secret|passwd|password)"
_JSON_LITERAL = r"(?:-?[0-9][0-9.eE+\-]*+|true|false|null)(?![^\s,}\]])"
_QUOTE = r"(?:\\?[\"'])?"  # a value may be quoted, even inside an escaped JSON string
# A quoted key is JSON or a Python repr, where a bare number is a count ("output_tokens": 80).
_QUOTED_KEY_SEP = rf"\\?[\"'][ \t]*+:[ \t]*+(?!{_JSON_LITERAL}|[\[{{])"
_BARE_SEP = r"[ \t]*+[:=][ \t]*+"
_VALUE = r"[^\s\"'`\\]++"

_KEEP = r"\g<keep>" + REDACTED

# (trigger words, any of which must be in the lowered text; pattern; replacement).
# Authorization runs before Bearer so that the whole header value goes.
_RULES: tuple[tuple[tuple[str, ...], re.Pattern[str], str], ...] = tuple(
    (triggers, re.compile(pattern, re.ASCII), replacement)
    for triggers, pattern, replacement in [
        (
            ("authorization",),
            rf"(?<!\w)(?P<keep>(?i:authorization){_QUOTE}{_BARE_SEP}{_QUOTE})[^\"'\\\r\n]++",
            _KEEP,
        ),
        (
            ("bearer",),
            rf"(?<!{_NAME_CHAR})(?P<keep>(?i:bearer)[ \t]++)[A-Za-z0-9._~+/=\-]{{8,}}+",
            _KEEP,
        ),
        (
            ("key", "token", "secret", "passw"),
            # The look-ahead scans the name once for a credential word.
            rf"(?<!{_NAME_CHAR})(?={_NAME_CHAR}*?{_CREDENTIAL_WORD})"
            rf"(?P<keep>{_NAME_CHAR}++(?:{_QUOTED_KEY_SEP}|{_BARE_SEP}){_QUOTE}){_VALUE}",
            _KEEP,
        ),
        # These start with a literal, which the engine finds fast; the look-behind follows it.
        (("sk-",), rf"sk-(?<!{_NAME_CHAR}sk-)[A-Za-z0-9_\-]{{20,}}+", REDACTED),
        (
            ("gh", "github_pat_"),
            rf"g(?<!{_NAME_CHAR}g)(?:h[opsur]_[A-Za-z0-9]{{20,}}+|ithub_pat_\w{{20,}}+)",
            REDACTED,
        ),
        (
            ("akia", "asia"),
            rf"A(?<!{_NAME_CHAR}A)(?:KIA|SIA)[A-Z0-9]{{16}}(?![A-Za-z0-9])",
            REDACTED,
        ),
    ]
)


def redact(text: str) -> str:
    """Return text with every secret it recognises replaced by [REDACTED]."""
    lowered = text.lower()
    for triggers, pattern, replacement in _RULES:
        if any(word in lowered for word in triggers):
            text = pattern.sub(replacement, text)
    return text


MIN_SECRET_CHARS = 8  #: shorter env values ("1", "true", "prod") are not treated as secrets


class Redactor:
    """`redact` plus known secret values (an agent's env values of MIN_SECRET_CHARS or more),
    removed wherever they appear, as written or escaped inside a JSON string."""

    def __init__(self, secrets: Iterable[str] = ()):
        forms: set[str] = set()
        for value in secrets:
            if len(value) >= MIN_SECRET_CHARS:
                forms.update((value, _json_escaped(value, True), _json_escaped(value, False)))
        self._values = sorted(forms, key=len, reverse=True)  # longest first: no partial leftovers

    def __call__(self, text: str) -> str:
        """Text with the known values, then the recognised patterns, replaced by [REDACTED]."""
        for value in self._values:
            if value in text:  # a C substring search: cheap when absent, the usual case
                text = text.replace(value, REDACTED)
        return redact(text)


def _json_escaped(value: str, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only)[1:-1]
