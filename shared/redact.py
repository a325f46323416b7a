"""Replace secrets in agent output with ``[REDACTED]``, in time linear in the text's length.

Covered: Anthropic and OpenAI style keys (``sk-...``), ``Bearer`` tokens,
``Authorization:`` header values, AWS access key ids, GitHub tokens, and
``NAME=value`` / ``NAME: value`` where NAME contains KEY, TOKEN, SECRET,
PASSWORD or PASSWD (the name is kept, the value redacted).

Linear time: every repeated part is possessive (``*+``, ``++``), so the engine
never backtracks into it, and every rule starts with a literal or with a
look-behind that only a word's first character passes, so each start position
costs O(1) except word starts, which cost at most the word's length once.
Spans never include a quote or a backslash, so redacting a JSON line leaves
valid JSON; JSON numbers, booleans and null are left alone (``"output_tokens":
80`` is a count, not a credential).
"""

from __future__ import annotations

import re

REDACTED = "[REDACTED]"

_NAME_CHAR = r"[A-Za-z0-9_.\-]"
_CREDENTIAL_WORD = r"(?i:key|token|secret|passwd|password)"
_JSON_LITERAL = r"(?:-?[0-9][0-9.eE+\-]*+|true|false|null)(?![^\s,}\]])"
_QUOTE = r"(?:\\?[\"'])?"  # a value may be quoted, even inside an escaped JSON string
# A quoted key is JSON or a Python repr, where a bare number is a count ("output_tokens": 80).
_QUOTED_KEY_SEP = rf"\\?[\"'][ \t]*+:[ \t]*+(?!{_JSON_LITERAL}|[\[{{])"
_BARE_SEP = r"[ \t]*+[:=][ \t]*+"
_VALUE = r"[^\s\"'`\\]++"

_PATTERN = re.compile(
    "|".join(
        [
            # NAME=value; the look-ahead scans the name once for a credential word.
            rf"(?<!{_NAME_CHAR})(?={_NAME_CHAR}*?{_CREDENTIAL_WORD})"
            rf"(?P<name>{_NAME_CHAR}++(?:{_QUOTED_KEY_SEP}|{_BARE_SEP}){_QUOTE}){_VALUE}",
            rf"(?<!\w)(?P<auth>(?i:authorization){_QUOTE}{_BARE_SEP}{_QUOTE})[^\"'\\\r\n]++",
            r"(?<![\w\-])(?P<bearer>(?i:bearer)[ \t]++)[A-Za-z0-9._~+/=\-]{8,}+",
            r"(?<![\w\-])sk-[A-Za-z0-9_\-]{20,}+",
            r"(?<!\w)(?:gh[opsur]_[A-Za-z0-9]{20,}+|github_pat_\w{20,}+)",
            r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])",
        ]
    )
)


def _replace(match: re.Match[str]) -> str:
    kept = match.group("name") or match.group("auth") or match.group("bearer") or ""
    return kept + REDACTED


def redact(text: str) -> str:
    """Return text with every secret it recognises replaced by [REDACTED]."""
    return _PATTERN.sub(_replace, text)
