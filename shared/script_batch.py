"""Several Lua scripts in one Redis round trip.

redis-py's pipeline checks `SCRIPT EXISTS` before every execute that holds a Script: a
round trip more than the batch itself. Here each script goes as a bare EVALSHA; one that
Redis no longer knows (it restarted, or its scripts were flushed) is run again on its own,
which loads it. Commands are independent (no MULTI): the others are not repeated.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError


class ScriptBatch:
    """Queue script calls with `add`, send them with `execute`."""

    def __init__(self, client: redis.Redis):
        self.client = client
        self._calls: list[tuple[Script, list[Any], list[Any]]] = []

    def add(self, script: Script, keys: list[Any], args: list[Any]) -> int:
        """Queue one call; returns its index in `execute`'s answer."""
        self._calls.append((script, keys, args))
        return len(self._calls) - 1

    def execute(self) -> list[Any]:
        """Run everything queued, in order, in one round trip; raise the first error."""
        pipe = self.client.pipeline(transaction=False)
        for script, keys, args in self._calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        results = pipe.execute(raise_on_error=False)
        for i, result in enumerate(results):
            if isinstance(result, NoScriptError):
                script, keys, args = self._calls[i]
                results[i] = script(keys=keys, args=args, client=self.client)
            elif isinstance(result, Exception):
                raise result
        self._calls.clear()
        return results
