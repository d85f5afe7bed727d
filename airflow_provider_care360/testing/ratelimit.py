"""The simulator's rate limits: fixed windows that open at their first request."""

from __future__ import annotations

import math
import threading
import time
from typing import NamedTuple

__all__ = ["RateLimiter", "Tier", "Verdict"]


class Tier(NamedTuple):
    """One limit a request counts against: ``limit`` requests per ``window`` seconds, named ``name``."""

    name: str
    limit: int
    window: float


class Verdict(NamedTuple):
    """What one tier says of a request: refused or not, requests left, seconds until its window ends."""

    refused: bool
    remaining: int
    reset_in: int


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
        [verdict] = self.hit_all([Tier(name, limit, window)])
        return verdict.refused, verdict.remaining, verdict.reset_in

    def hit_all(self, tiers: list[Tier]) -> list[Verdict]:
        """
        Count one request against several tiers at once, atomically: if any tier refuses it, it
        counts against none of them (a refused request spends nothing); otherwise against all.

        :return: one :class:`Verdict` per tier, in order; ``remaining`` is after this request.
        """
        with self._lock:
            now = time.monotonic()
            states = []
            for tier in tiers:
                state = self._windows.setdefault(tier.name, [now, 0])
                if now - state[0] >= tier.window:
                    state[:] = [now, 0]
                states.append(state)
            refused = [state[1] >= tier.limit for tier, state in zip(tiers, states, strict=True)]
            if not any(refused):
                for state in states:
                    state[1] += 1
            return [
                Verdict(
                    refused=no,
                    remaining=max(0, tier.limit - int(state[1])),
                    reset_in=max(1, math.ceil(state[0] + tier.window - now)),
                )
                for tier, state, no in zip(tiers, states, refused, strict=True)
            ]

    def clear(self) -> None:
        with self._lock:
            self._windows.clear()
