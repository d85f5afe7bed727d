"""
The booking journal: what a try of a booking task sent, kept in Airflow's ``task_state_store``.

Airflow >= 3.3 keeps small JSON values per (DAG run, task, map index) across tries (AIP-103), and
**across clears**: ``clear_task_instances`` (``airflow/models/taskinstance.py``) never touches the
store, whose rows "retries of the same task share" (``airflow/models/task_state_store.py``); only
``[state_store] clear_on_success``, the REST API or ``airflow state-store clean`` (after the
retention, 30 days by default) delete them.

So each entry names the *attempt* that wrote it: the task instance's ``max_tries`` as the server
sent it to the try. Only a clear changes it: ``clear_task_instances`` sets ``max_tries =
try_number + retries`` (``airflow/models/taskinstance.py``), as does the scheduler for a cleared
running task (``airflow/jobs/scheduler_job_runner.py``); retries, heartbeat timeouts and killed
workers leave it alone, and a DAG file edited to another ``retries`` does not change it either
(``max_tries`` is set when the task instance is created). An entry of another attempt is stale:
the task was cleared since, and this try is a fresh start.

Before a try sends a booking it writes ``state: "sending"``; when an answer leaves the outcome
unclear it adds ``unclear_at``. A booking Care360 answered 200 to becomes ``state: "done"``, kept so
that a retry replays it if the try dies before Airflow records its success (a lookup could lag
behind it); an outcome the lookup itself showed deletes the entry, since a later lookup shows it
too. A finished booking task therefore leaves one small row (~200 bytes) until ``[state_store]
clear_on_success`` deletes it at success, or ``airflow state-store clean`` after the retention.

The write before the send is the fence: a try
whose write fails sends nothing. A try that lost its heartbeat has lost its task instance id too (a
new try gets a new id, ``TaskInstance.prepare_db_for_next_try``), and the execution API answers 404
to its writes (``airflow/api_fastapi/execution_api/routes/task_state_store.py``); a try whose
supervisor died cannot reach it at all.

The journal holds a fingerprint of the request body (an HMAC-SHA-256 keyed with the connection's API
key), never the body itself: no personal data goes into the metadata database, and the digest cannot
be checked against a guessed invitee without the key. Pure code, no Airflow imports.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["KEY", "BookingJournal", "Entry", "StateStore", "attempt_of", "fingerprint"]

KEY = "care360_booking"
_VERSION = 2


class StateStore(Protocol):
    """What the journal needs of ``context["task_state_store"]``."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: Any) -> None: ...

    def delete(self, key: str) -> None: ...


def fingerprint(payload: Mapping[str, Any], key: str | None = None) -> str:
    """
    A short digest of the request body: tells "the same booking" from "other fields".

    :param key: a secret to key it with (the connection's API key): an HMAC, so that someone who can
        read the metadata DB cannot confirm a guessed invitee and start time from the digest (a
        booking body has little entropy: an email, a slot on a grid, five locations).
    """
    body = json.dumps(payload, sort_keys=True).encode()
    if key:
        return hmac.new(key.encode(), body, hashlib.sha256).hexdigest()[:32]
    return hashlib.sha256(body).hexdigest()[:32]


def attempt_of(max_tries: Any) -> int | None:
    """
    The attempt marker of a try: the task instance's ``max_tries`` as the server sent it.

    Tries of one attempt (retries after failures, a killed worker, a heartbeat timeout) share it; a
    clear changes it. ``None`` where it is not known.
    """
    return max_tries if isinstance(max_tries, int) and not isinstance(max_tries, bool) else None


@dataclass(frozen=True)
class Entry:
    """
    One journal entry, as read back.

    :param state: ``"sending"`` (a booking request may be in flight or applied) or ``"done"``.
    :param fingerprint: the digest of the request body that try sent.
    :param try_number: the try that wrote it.
    :param attempt: the attempt that try belonged to (see :func:`attempt_of`).
    :param sent_at: when the request left (Unix time).
    :param window: the longest the request could stay unanswered on the client's side (connect plus
        read timeout), in seconds.
    :param unclear_at: when an answer left the outcome unclear (Unix time), if one did.
    :param outcome: the outcome of a ``done`` entry.
    """

    state: str
    fingerprint: str | None = None
    try_number: int | None = None
    attempt: int | None = None
    sent_at: float | None = None
    window: float | None = None
    unclear_at: float | None = None
    outcome: str | None = None

    @classmethod
    def read(cls, raw: Any) -> Entry | None:
        """An entry from the stored JSON, or ``None`` for nothing or something unreadable."""
        if not isinstance(raw, Mapping) or raw.get("state") not in ("sending", "done"):
            return None

        def number(name: str) -> float | None:
            value = raw.get(name)
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

        def whole(name: str) -> int | None:
            value = raw.get(name)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        fp, outcome = raw.get("fingerprint"), raw.get("outcome")
        return cls(
            state=str(raw["state"]),
            fingerprint=fp if isinstance(fp, str) else None,
            try_number=whole("try"),
            attempt=whole("attempt"),
            sent_at=number("sent_at"),
            window=number("window"),
            unclear_at=number("unclear_at"),
            outcome=outcome if isinstance(outcome, str) else None,
        )

    def applied_by(self, apply_window: float) -> float | None:
        """
        The time by which a request this entry left in flight must have been applied, if ever, and
        show in lookups: ``apply_window`` after its unclear answer, or after the latest it could have
        been answered (``sent_at + window``) when no answer was recorded. ``None`` when the entry
        does not say when it sent (an entry that cannot be read is treated as in flight now).
        """
        if self.state != "sending":
            return None
        ends = [t for t in (self.unclear_at, _sum(self.sent_at, self.window)) if t is not None]
        return (min(ends) if ends else time.time()) + apply_window


def _sum(a: float | None, b: float | None) -> float | None:
    return a + b if a is not None and b is not None else None


class BookingJournal:
    """
    The journal of one task instance's booking.

    :param store: the task's ``task_state_store``.
    :param fingerprint: :func:`fingerprint` of this try's request body.
    :param try_number: this try's number.
    :param attempt: this try's attempt (:func:`attempt_of`).
    :param clock: the wall clock (tries may run on different machines, so not a monotonic one).
    """

    def __init__(
        self,
        store: StateStore,
        *,
        fingerprint: str,
        try_number: int | None,
        attempt: int | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.fingerprint = fingerprint
        self.try_number = try_number
        self.attempt = attempt
        self._clock = clock
        self._current: dict[str, Any] | None = None

    def prior(self) -> Entry | None:
        """What an earlier try of this task instance recorded, if anything."""
        if self.try_number == 1:
            # The store is per DAG run and task instance: try 1 has nothing before it (a clear keeps
            # counting tries), so the call to the store is saved on every first try.
            return None
        return Entry.read(self._store.get(KEY))

    def is_stale(self, entry: Entry) -> bool:
        """Whether ``entry`` was written before the task was last cleared (another attempt)."""
        if self.attempt is None:
            return False  # a try that cannot tell its attempt keeps protecting the booking
        return entry.attempt != self.attempt

    def sending(self, window: float) -> None:
        """
        Record that this try is about to send the booking. Raises whatever the store raises: a try
        that cannot write its journal must not send.

        :param window: the longest this try's request can stay unanswered (connect plus read timeout).
        """
        self._write(state="sending", sent_at=self._clock(), window=window)

    def unclear(self) -> float:
        """Record that the answer left the outcome unclear; returns the time it recorded."""
        at = self._clock()
        self._write(**{**(self._current or {"state": "sending"}), "unclear_at": at})
        return at

    def done(self, outcome: str) -> None:
        """Record what came of this try's booking (kept, for a retry to replay it)."""
        self._write(state="done", outcome=outcome)

    def known(self, outcome: str) -> None:
        """The lookup showed the outcome: a later lookup shows it too, so the entry is deleted."""
        self.forget()

    def forget(self) -> None:
        """Delete the entry: nothing was applied, or the outcome is known, and nothing later needs it."""
        self._store.delete(KEY)
        self._current = None

    def _write(self, **fields: Any) -> None:
        entry = {
            **{k: v for k, v in fields.items() if k not in ("fingerprint", "try", "attempt", "v")},
            "fingerprint": self.fingerprint,
            "try": self.try_number,
            "attempt": self.attempt,
            "v": _VERSION,
        }
        self._store.set(KEY, entry)
        self._current = entry
