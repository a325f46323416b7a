"""Stop requests reach the worker that runs an execution through one pub/sub subscription."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from shared import keys

log = logging.getLogger(__name__)


class StopListener:
    """One per worker process: maps running execution ids to their stop callbacks."""

    def __init__(self, client: redis.Redis):
        self.client = client
        self._callbacks: dict[str, Callable[[], None]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def register(self, execution_id: str, on_stop: Callable[[], None]) -> None:
        """Call `on_stop` when a stop for this execution is announced."""
        with self._lock:
            self._callbacks[execution_id] = on_stop
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._listen, name="stop-listener", daemon=True
                )
                self._thread.start()

    def unregister(self, execution_id: str) -> None:
        """Forget an execution that finished."""
        with self._lock:
            self._callbacks.pop(execution_id, None)

    def _listen(self) -> None:
        while True:
            try:
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(keys.control_channel())
                for message in pubsub.listen():
                    self._dispatch(message["data"])
            except Exception:  # noqa: BLE001 - Redis restarting, or the client closed under us
                # (redis-py may then raise ValueError): never let the listener die; meanwhile
                # the heartbeat's row check still sees a stop.
                log.warning("stop listener lost Redis; reconnecting", exc_info=True)
                threading.Event().wait(1.0)

    def _dispatch(self, data: bytes | str) -> None:
        execution_id = data.decode() if isinstance(data, bytes) else data
        with self._lock:
            callback = self._callbacks.get(execution_id)
        if callback is not None:
            callback()
