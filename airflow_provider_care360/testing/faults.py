"""Faults: how to answer the next requests of one kind instead of following the contract."""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FAULT_TARGETS", "Fault", "FaultQueue"]

#: The queues of faults: which requests a fault answers.
FAULT_TARGETS = ("booking", "lookup", "cancel", "availability")


@dataclass
class Fault:
    """
    How to answer one request instead of following the contract.

    :param status: HTTP status to answer with.
    :param body: the body: ``bytes``/``str`` as given, anything else as JSON; ``None`` for the
        documented body of ``status`` where there is one.
    :param headers: extra response headers (``Retry-After``, ``X-RateLimit-Reset``, ...).
    :param content_type: the ``Content-Type`` of the answer.
    :param delay: seconds to wait before answering (longer than the client's read timeout makes a
        read timeout).
    :param apply: record the booking in the ledger (before the delay or reset), as if the server
        did the work and only the answer went wrong. The slot is taken even if it was already.
    :param apply_after: seconds after the request arrived at which the booking enters the ledger, by
        a background timer, whatever the answer is and whenever it goes out (at once, after
        ``delay``, or a ``reset``): a backend that keeps working after its gateway answered (502,
        503, 504) or after the client gave up. ``0`` applies it at once, before answering. The body
        is checked against the booking rules when the request arrives (an invalid one is never
        applied) and the one-on-one slot when it is applied (a slot booked in the meantime makes
        the late application a no-op, as the backend's own 400 would). ``None`` (default): not
        applied, unless ``apply``. Only for ``target="booking"``; not together with ``apply``.
    :param reset: close the connection with a TCP reset instead of answering.
    :param passthrough: answer by the contract after all; a place-holder that lets one request
        through in a queued sequence (e.g. the first lookup passes, the second fails).
    :param target: which requests it answers: ``"booking"`` (the POST, default) or ``"lookup"``
        (Fetch Appointments). Faults of each target are queued separately, in order.
    """

    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    delay: float = 0.0
    apply: bool = False
    reset: bool = False
    passthrough: bool = False
    target: str = "booking"
    apply_after: float | None = None

    def __post_init__(self) -> None:
        if self.target not in FAULT_TARGETS:
            raise ValueError(f"target must be one of {', '.join(FAULT_TARGETS)}, got {self.target!r}")
        after = self.apply_after
        if after is not None:
            if isinstance(after, bool) or not isinstance(after, (int, float)) or not math.isfinite(after):
                raise ValueError(f"apply_after must be a number of seconds or None, got {after!r}")
            if after < 0:
                raise ValueError(f"apply_after must not be negative, got {after!r}")
            if self.apply:
                raise ValueError("apply and apply_after are exclusive (apply: at once, slot forced)")
            if self.target != "booking":
                raise ValueError(f"apply_after books: target must be 'booking', not {self.target!r}")


class FaultQueue:
    """One queue of faults per target, taken in order; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Fault]] = {target: deque() for target in FAULT_TARGETS}

    def add(self, fault: Fault, times: int = 1) -> None:
        with self._lock:
            self._queues[fault.target].extend([fault] * times)

    def next(self, target: str) -> Fault | None:
        """The fault that answers the next request of ``target``, or ``None`` to follow the contract."""
        with self._lock:
            queue = self._queues[target]
            fault = queue.popleft() if queue else None
        return None if fault is None or fault.passthrough else fault

    def clear(self) -> None:
        with self._lock:
            for queue in self._queues.values():
                queue.clear()
