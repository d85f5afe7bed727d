"""The simulator's rate limits: fixed windows that open at their first request."""

from __future__ import annotations

import math
import threading
import time

__all__ = ["RateLimiter"]


class RateLimiter:
    """
    Counts requests per named window. A window opens at its first request and lasts ``window``
    seconds; past ``limit`` requests in it, each is refused until it ends.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, list[float]] = {}

    def hit(self, name: str, limit: int, window: float) -> tuple[bool, int, int]:
        """Count one request: ``(refused, remaining, seconds until the window ends, at least 1)``."""
        with self._lock:
            now = time.monotonic()
            state = self._windows.setdefault(name, [now, 0])
            if now - state[0] >= window:
                state[:] = [now, 0]
            reset_in = max(1, math.ceil(state[0] + window - now))
            refused = state[1] >= limit
            if not refused:
                state[1] += 1
            remaining = max(0, limit - int(state[1]))
        return refused, remaining, reset_in

    def clear(self) -> None:
        with self._lock:
            self._windows.clear()
