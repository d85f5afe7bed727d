"""
The booking journal: what a try of a booking task sent, kept in Airflow's ``task_state_store``.

Airflow >= 3.3 keeps small JSON values per task instance across its tries (AIP-103; cleared when
the task is cleared). Before a try sends a booking it writes ``state: "sending"``; when it knows
the outcome it writes ``state: "done"``. A later try that finds ``sending`` knows an earlier try
sent the booking and never learned what came of it (its worker was killed, or its heartbeat timed
out while the old process still waited). The journal holds a fingerprint of the request body,
never the body itself, so no personal data goes into the metadata database.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

__all__ = ["BookingJournal"]

KEY = "care360_booking"


def fingerprint(payload: dict[str, Any]) -> str:
    """A short digest of the request body: tells "the same booking" from "other fields"."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


class BookingJournal:
    """
    The journal of one task instance.

    :param store: the ``task_state_store`` of the task's context.
    :param payload: the validated request body of this try.
    :param try_number: this try's number, recorded with each entry.
    """

    def __init__(self, store: Any, payload: dict[str, Any], try_number: int | None) -> None:
        self._store = store
        self.fingerprint = fingerprint(payload)
        self._try = try_number

    @classmethod
    def from_context(cls, context: Any, payload: dict[str, Any]) -> BookingJournal | None:
        """The journal, or ``None`` where Airflow has no ``task_state_store`` (before 3.3)."""
        store = context.get("task_state_store") if hasattr(context, "get") else None
        if store is None:
            return None
        ti = context.get("ti")
        return cls(store, payload, getattr(ti, "try_number", None))

    def prior(self) -> dict[str, Any] | None:
        """What an earlier try of this task instance recorded, if anything."""
        if self._try == 1:
            # No earlier try (clearing a task empties its store and does not reset the try number):
            # a call to the store saved for each booking's first try.
            return None
        entry = self._store.get(KEY)
        return entry if isinstance(entry, dict) and entry.get("state") in ("sending", "done") else None

    def sending(self, window: float) -> None:
        """
        Record that this try is about to send the booking.

        :param window: the longest this try's request can stay unanswered (connect plus read
            timeout), so a later try knows when the request must have ended on the client's side.
        """
        self._store.set(
            KEY,
            {
                "state": "sending",
                "fingerprint": self.fingerprint,
                "try": self._try,
                "sent_at": time.time(),
                "window": window,
            },
        )

    def done(self, outcome: str) -> None:
        """Record what came of this try's booking."""
        self._store.set(
            KEY, {"state": "done", "fingerprint": self.fingerprint, "try": self._try, "outcome": outcome}
        )
