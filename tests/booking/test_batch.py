"""
run_batch and the batch journal with a thread-safe stand-in hook and store, on the real clock (the
batch runs real worker threads), with waits of a second or two at most.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from airflow_provider_care360._responses import AtInstant, read_at_instant
from airflow_provider_care360.booking.batch import (
    PACE_LEAD,
    ROWS_PER_KEY,
    BatchJournal,
    Pacer,
    Row,
    run_batch,
)
from airflow_provider_care360.booking.engine import BookingOptions
from airflow_provider_care360.booking.journal import fingerprint
from airflow_provider_care360.exceptions import Care360AuthError, Care360RateLimitError
from airflow_provider_care360.outcomes import Outcome
from airflow_provider_care360.rows import chunk_rows

OPTIONS = BookingOptions(settle_delay=0.0, apply_window=0.5)


def row(i: int) -> Row:
    return Row(
        i,
        {
            "eventTypeId": "evt",
            "startTime": f"2030-01-01T{10 + i // 2:02d}:{30 * (i % 2):02d}:00Z",
            "email": f"row{i}@example.com",
            "timezone": "UTC",
            "location": "zoom_conference",
        },
    )


class Hook:
    """A ledger behind a lock; scripted answers to bookings and lookups."""

    request_window = 1.0

    def __init__(self, answers: list[Any] | None = None, lookup_error: Exception | None = None) -> None:
        self.lock = threading.Lock()
        self.answers = list(answers or [])
        self.lookup_error = lookup_error
        self.ledger: list[dict[str, Any]] = []
        self.sends: list[tuple[float, str]] = []
        self.lookups = 0

    def appointments_at(self, *, email: str, start_time: str) -> AtInstant:
        with self.lock:
            self.lookups += 1
            if self.lookup_error is not None:
                raise self.lookup_error
            mine = [a for a in self.ledger if a["email"] == email]
        return read_at_instant(mine, datetime.fromisoformat(start_time))

    def send_booking(self, payload: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.sends.append((time.monotonic(), payload["email"]))
            answer = self.answers.pop(0) if self.answers else None
        if isinstance(answer, Exception):
            raise answer
        with self.lock:
            n = len(self.ledger)
            self.ledger.append(
                {
                    "id": f"a{n}",
                    "email": payload["email"],
                    "start": payload["startTime"],
                    "status": "CONFIRMED",
                    "createdAt": datetime.now(UTC).isoformat(),
                }
            )
        return {"status": 200, "success": True}

    def cancel_appointment(self, **_: Any) -> dict[str, Any]:
        return {"success": True}


class Store:
    def __init__(self, fail_on: int | None = None) -> None:
        self.lock = threading.Lock()
        self.data: dict[str, Any] = {}
        self.writes: list[tuple[float, str, Any]] = []
        self.fail_on = fail_on

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        with self.lock:
            if self.fail_on is not None and len(self.writes) + 1 == self.fail_on:
                self.writes.append((time.monotonic(), key, None))
                raise RuntimeError("API server error: 404 task instance not found")
            self.writes.append((time.monotonic(), key, json.loads(json.dumps(value))))
            self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


class Log:
    def info(self, msg: Any, *args: Any) -> None:
        pass

    warning = info


def batch(rows: list[Row], hook: Hook, store: Store | None, **kwargs: Any) -> Any:
    journal = (
        BatchJournal(store, try_number=kwargs.pop("try_number", 1), attempt=1) if store is not None else None
    )
    return run_batch(rows, hook_for=lambda: hook, options=OPTIONS, journal=journal, log=Log(), **kwargs)


def test_the_in_flight_entry_is_written_after_the_pace_wait_right_before_the_send() -> None:
    """A try killed while a row waited for its place must not leave a stale in-flight time behind."""
    hook, store = Hook(), Store()
    batch([row(0), row(1), row(2)], hook, store, concurrency=3, max_rate=(1, 0.7))
    sending = [(at, v) for at, _, v in store.writes if v and any(e[0] == "s" for e in v.values())]
    assert len(hook.sends) == 3 and len(sending) >= 3
    gaps = sorted(hook.sends[i][0] - sending[i][0] for i in range(3))
    assert max(gaps) < 0.3  # each entry right before its send, not before the pace wait
    assert hook.sends[2][0] - hook.sends[0][0] >= 1.3  # paced: one a 0.7 s


class UnevenStore(Store):
    """A store whose writes take uneven times (every third takes 80 ms), recording when each ended."""

    def __init__(self) -> None:
        super().__init__()
        self.ended: list[tuple[float, Any]] = []

    def set(self, key: str, value: Any) -> None:
        if len(self.writes) % 3 == 0:
            time.sleep(0.08)
        super().set(key, value)
        self.ended.append((time.time(), json.loads(json.dumps(value))))


def test_max_rate_counts_each_booking_from_its_send_so_uneven_journal_writes_never_crowd_a_window() -> None:
    """
    A place is given before the in-flight entry is written, and the writes take uneven times; the
    limit is on arrivals, so any ``n`` consecutive sends must still be a whole window (plus the
    margin) apart.
    """
    hook = Hook()
    batch([row(i) for i in range(8)], hook, UnevenStore(), concurrency=4, max_rate=(2, 0.4))
    times = sorted(t for t, _ in hook.sends)
    assert len(times) == 8
    gaps = [times[k + 2] - times[k] for k in range(len(times) - 2)]
    # Counted at the send, each gap is the window plus the margin; the hook's own times come a moment
    # after the pacer's, so only the window itself is asserted (counted from the turn, gaps fell to 0.37).
    assert min(gaps) >= 0.4, gaps


def test_a_place_given_ahead_of_its_time_is_counted_in_the_rows_in_flight_window(monkeypatch: Any) -> None:
    """
    A row given its place up to PACE_LEAD early writes its entry, then waits out the rest before it
    sends: the entry's window must reach past the place's time, or a retry would look too early.
    """
    places: list[float] = []  # each place's time, on the wall clock
    given = Pacer.before_booking

    def spy(pacer: Pacer) -> float:
        at = given(pacer)
        places.append(at - time.monotonic() + time.time())
        return at

    monkeypatch.setattr(Pacer, "before_booking", spy)
    store = UnevenStore()
    batch([row(i) for i in range(4)], Hook(), store, concurrency=2, max_rate=(1, 0.3))
    entries = {(k, v[k][3], v[k][4]) for _, _, v in store.writes if v for k in v if v[k][0] == "s"}
    covered = sorted(sent_at + window - Hook.request_window for _, sent_at, window in entries)
    assert len(covered) == len(places) == 4
    # Matched in order: the entry's sent_at plus its extra window reaches each place's time (sent_at
    # is rounded to the millisecond). Without the extra, the paced rows' entries end up to 0.1 s short.
    assert all(c >= p - 0.002 for c, p in zip(covered, sorted(places), strict=True)), (covered, places)
    assert max(p - c for c, p in zip(sorted(e[1] for e in entries), sorted(places), strict=True)) > 0.03


def test_the_wait_for_a_place_is_not_counted_in_the_in_flight_window_only_the_lead() -> None:
    """A row that waited for its turn (the pace, a 429 pause): its window grows by the lead only."""
    hook, store = Hook([Care360RateLimitError("429", retry_after=1, summary="429")]), Store()
    batch([row(i) for i in range(3)], hook, store, concurrency=1, max_rate=(1, 0.5))
    windows = [v[k][4] for _, _, v in store.writes if v for k in v if v[k][0] == "s"]
    assert len(windows) >= 4  # the 429's try, its resend after the pause, and two rows paced 0.5 s
    assert max(windows) <= Hook.request_window + PACE_LEAD + 0.01, windows


def test_a_stop_wakes_rows_waiting_for_a_long_pause_and_sends_nothing_more() -> None:
    hook = Hook([Care360RateLimitError("429", retry_after=30, summary="429")])
    started = time.monotonic()
    run = batch([row(i) for i in range(4)], hook, Store(), concurrency=4, max_sleep=1)
    assert time.monotonic() - started < 5
    assert len(hook.sends) <= 4 and len({email for _, email in hook.sends}) == len(hook.sends)
    outcomes = [r.outcome for r in run.results]
    assert Outcome.THROTTLED in outcomes and all(
        r.retry_after for r in run.results if r.outcome is Outcome.THROTTLED
    )
    # A row stopped right before its send is throttled too, not "not sent": the operator defers only
    # when every row left is throttled.
    assert set(outcomes) <= {Outcome.BOOKED, Outcome.THROTTLED}


def test_429s_that_name_no_wait_back_off_and_stop_instead_of_spinning() -> None:
    hook = Hook([Care360RateLimitError("429", summary="429") for _ in range(50)])
    started = time.monotonic()
    run = batch([row(0)], hook, Store(), max_sleep=3)
    assert time.monotonic() - started < 8 and len(hook.sends) <= 3
    assert run.results[0].outcome is Outcome.THROTTLED


def test_a_row_whose_journal_write_fails_fails_alone_and_every_row_keeps_its_result() -> None:
    hook, store = Hook(), Store(fail_on=3)
    run = batch([row(i) for i in range(5)], hook, store, concurrency=1)
    outcomes = [r.outcome for r in run.results]
    assert len(outcomes) == 5 and outcomes.count(Outcome.NOT_SENT) == 1
    assert outcomes.count(Outcome.BOOKED) == 4 and len(hook.sends) == 4


def test_a_rejected_key_stops_the_batch_fails_it_and_settles_no_row() -> None:
    hook, store = (
        Hook(lookup_error=Care360AuthError("401", http_status=401, summary="the key was rejected")),
        Store(),
    )
    run = batch([row(i) for i in range(6)], hook, store, concurrency=2)
    assert isinstance(run.fatal, Care360AuthError) and hook.sends == []
    assert all(r.outcome is Outcome.NOT_SENT for r in run.results)
    assert not any(e[0] == "d" for v in store.data.values() for e in v.values())


def test_a_try_resumed_after_a_deferral_reads_what_it_recorded_before() -> None:
    """The try number does not change on resume: try 1 must read the journal too."""
    hook, store = Hook(), Store()
    batch([row(0), row(1)], hook, store)
    looked = hook.lookups
    run = batch([row(0), row(1), row(2)], hook, store, try_number=1)
    assert [r.outcome for r in run.results] == [Outcome.BOOKED, Outcome.BOOKED, Outcome.BOOKED]
    assert hook.lookups - looked == 1 and len(hook.sends) == 3  # rows 0 and 1 neither looked up nor sent


def test_a_full_journal_key_stays_far_under_the_rest_apis_64_kib() -> None:
    store = Store()
    journal = BatchJournal(store, try_number=1, attempt=7, key="k")
    from airflow_provider_care360.booking.batch import RowJournal

    for i in range(ROWS_PER_KEY):
        entry = RowJournal(journal, i, row(i).payload)
        entry.sending(window=40.0)
        entry.unclear()
    size = len(json.dumps(store.data["care360_batch/0"]))
    assert size < 16 * 1024, size


def test_the_fingerprint_is_keyed() -> None:
    body = row(0).payload
    assert fingerprint(body, "key-a") != fingerprint(body, "key-b") != fingerprint(body)
    assert fingerprint(body, "key-a") == fingerprint(dict(reversed(list(body.items()))), "key-a")


def test_chunk_rows_keeps_an_invitees_repeats_in_one_chunk() -> None:
    rows = [{"email": f"r{i}@example.com", "start_time": f"2030-01-01T1{i}:00:00Z"} for i in range(5)]
    rows.append({"email": "R0@Example.com", "start_time": "2030-01-01T11:00:00+01:00"})  # repeats row 0
    chunks = chunk_rows(rows, 2)
    assert [len(c) for c in chunks] == [3, 2, 1]
    assert rows[5] in chunks[0]
    with pytest.raises(ValueError):
        chunk_rows(rows, 0)


def test_rows_left_when_airflow_stops_the_task_say_so_and_name_no_429() -> None:
    """on_kill (a timeout, a termination) sets the stop event: the rows left are not sent, and why."""
    stop = threading.Event()

    class SlowHook(Hook):
        def send_booking(self, payload: dict[str, Any]) -> dict[str, Any]:
            answer = super().send_booking(payload)
            stop.set()  # Airflow stops the task while the first booking is on its way
            return answer

    hook = SlowHook()
    run = batch([row(i) for i in range(5)], hook, Store(), concurrency=1, stop=stop)
    assert [r.outcome for r in run.results] == [Outcome.BOOKED] + [Outcome.NOT_SENT] * 4
    assert len(hook.sends) == 1
    for result in run.results[1:]:
        assert result.http_status is None and result.retry_after is None
        assert "Airflow stopped the task" in result.message and "429" not in result.message


def test_journal_writes_are_grouped_and_every_in_flight_entry_is_stored_before_its_booking() -> None:
    class SlowStore(Store):
        """The supervisor's round trip: a few ms each, and like dag.test()'s, never two at once."""

        active = 0

        def set(self, key: str, value: Any) -> None:
            SlowStore.active += 1
            try:
                assert SlowStore.active == 1, "two calls to the store at once"
                time.sleep(0.01)
                super().set(key, value)
            finally:
                SlowStore.active -= 1

    hook, store = Hook(), SlowStore()
    n = 28  # row(i) starts at 10:00 + 30 min * i: 28 rows end before midnight
    first = ROWS_PER_KEY - n // 2  # the rows span two keys, written by workers at the same time
    rows = [Row(first + i, row(i).payload) for i in range(n)]
    journal = BatchJournal(store, try_number=1, attempt=1)
    run = run_batch(rows, hook_for=lambda: hook, options=OPTIONS, journal=journal, log=Log(), concurrency=4)
    assert [r.outcome for r in run.results] == [Outcome.BOOKED] * n
    # Ungrouped, a row costs two writes (in flight, then done): 2n. Outcomes go with the next write.
    assert journal.sets == len(store.writes) and journal.sets <= n + 2, journal.sets
    index_of = {r.payload["email"]: str(r.index) for r in rows}
    for at, email in hook.sends:
        index = index_of[email]
        stored = [w for w in store.writes if w[0] < at and w[2] and w[2].get(index, [""])[0] == "s"]
        assert stored, f"row {index} was sent before its in-flight entry was stored"
    # The flush at the end stores every outcome: a retry skips every row.
    entries = {**store.data["care360_batch/0"], **store.data["care360_batch/1"]}
    assert {k: v[0] for k, v in entries.items()} == {str(r.index): "d" for r in rows}


def test_an_in_flight_entry_the_store_refused_is_not_stored_later_with_another_rows() -> None:
    hook, store = Hook(), Store(fail_on=2)
    run = batch([row(i) for i in range(3)], hook, store, concurrency=1)
    assert [r.outcome for r in run.results] == [Outcome.BOOKED, Outcome.NOT_SENT, Outcome.BOOKED]
    assert "1" not in store.data["care360_batch/0"]  # row 1 was never sent: no entry in flight


def test_a_row_whose_booking_meets_429s_is_looked_up_once() -> None:
    limit = [Care360RateLimitError("429", retry_after=0.2, http_status=429, summary="429") for _ in range(2)]
    hook = Hook(limit)
    run = batch([row(0), row(1)], hook, Store(), concurrency=1)
    assert [r.outcome for r in run.results] == [Outcome.BOOKED, Outcome.BOOKED]
    assert len(hook.sends) == 4 and hook.lookups == 2  # row 0: three sends, one lookup


def test_a_429_to_the_lookup_is_not_a_lookup_done() -> None:
    class LookupLimited(Hook):
        def appointments_at(self, *, email: str, start_time: str) -> AtInstant:
            with self.lock:
                first = self.lookups == 0
            if first:
                with self.lock:
                    self.lookups += 1
                raise Care360RateLimitError("429", retry_after=0.2, http_status=429, summary="429")
            return super().appointments_at(email=email, start_time=start_time)

    hook = LookupLimited()
    hook.ledger.append(
        {**row(0).payload, "id": "a0", "start": row(0).payload["startTime"], "status": "CONFIRMED"}
    )
    run = batch([row(0)], hook, Store())
    assert run.results[0].outcome is Outcome.ALREADY_BOOKED and hook.sends == []


def test_a_row_stopped_while_its_unclear_answer_settles_is_ambiguous_not_unsent() -> None:
    """Its booking left (a 503 may be applied); Airflow's stop lands during the settle delay."""
    from airflow_provider_care360.exceptions import Care360AmbiguousError

    stop = threading.Event()

    class Unclear(Hook):
        def send_booking(self, payload: dict[str, Any]) -> dict[str, Any]:
            with self.lock:
                self.sends.append((time.monotonic(), payload["email"]))
            stop.set()
            raise Care360AmbiguousError("503", http_status=503, summary="Care360 answered 503")

    options = BookingOptions(settle_delay=0.1, apply_window=0.5)
    for store in (Store(), None):
        stop.clear()
        hook = Unclear()
        journal = BatchJournal(store, try_number=1, attempt=1) if store is not None else None
        run = run_batch(
            [row(0)], hook_for=lambda hook=hook: hook, options=options, journal=journal, log=Log(), stop=stop
        )
        result = run.results[0]
        assert len(hook.sends) == 1
        assert result.outcome is Outcome.AMBIGUOUS and "may exist" in result.message, result
        assert result.retry_after and result.retry_after >= options.apply_window
