"""
The booking engine and its journal with a stand-in hook, store and clock: no Airflow, no HTTP.

The stand-in world books on a controlled clock: a booking can land ``apply_after`` seconds after an
unclear answer, lookups can lag behind the ledger, a try can be killed at any step. The property
test at the end runs sequences of those against the rules: an appointment exists at most once, and
a try that succeeded leaves exactly one.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_care360._responses import AtInstant, read_at_instant
from airflow_provider_care360.booking.engine import BookingEngine, BookingOptions, Clock
from airflow_provider_care360.booking.journal import KEY, BookingJournal, Entry, attempt_of, fingerprint
from airflow_provider_care360.exceptions import (
    Care360AmbiguousError,
    Care360AmbiguousRetryableError,
    Care360BadRequestError,
    Care360Error,
    Care360LookupAmbiguousError,
    Care360LookupError,
    Care360NotSentError,
    Care360RateLimitError,
    Care360ValidationError,
)
from airflow_provider_care360.outcomes import Outcome

START = "2026-12-01T15:00:00Z"
PAYLOAD = {
    "eventTypeId": "evt",
    "startTime": START,
    "email": "jane.doe@example.com",
    "timezone": "UTC",
    "location": "zoom_conference",
}
WINDOW = 40.0  # the stand-in hook's connect + read timeout


class Killed(BaseException):
    """Airflow killing the task process (SIGKILL, a timeout): not an ``Exception``."""


@dataclass
class Booking:
    """How the stand-in answers one booking request."""

    answer: str = "ok"  # ok | unclear | 400 | 429 | not_sent | kill
    #: Seconds after the request an unclear or killed one lands; None: never. A 200 lands at once.
    apply_after: float | None = 0.0


@dataclass
class World:
    """A controlled clock with scheduled events, the ledger, and how lookups see it."""

    now: float = 1_000_000.0
    lag: float = 0.0
    ledger: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple[float, int, Any]] = field(default_factory=list)
    kill_in_sleep: int | None = None  # raise Killed in the n-th sleep from now
    sleeps: list[float] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def at(self, when: float, action: Any) -> None:
        heapq.heappush(self.events, (when, next(self._seq), action))

    def advance(self, seconds: float) -> None:
        target = self.now + max(0.0, seconds)
        while self.events and self.events[0][0] <= target:
            when, _, action = heapq.heappop(self.events)
            self.now = max(self.now, when)
            action()
        self.now = target

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.kill_in_sleep is not None:
            self.kill_in_sleep -= 1
            if self.kill_in_sleep < 0:
                self.kill_in_sleep = None
                raise Killed()
        self.advance(seconds)

    def clock(self) -> Clock:
        return Clock(now=lambda: self.now, sleep=self.sleep)

    def active(self) -> list[dict[str, Any]]:
        return [a for a in self.ledger if a["status"] == "CONFIRMED"]


class Hook:
    """Stands in for Care360Hook: a ledger on the world's clock, scripted answers."""

    def __init__(self, world: World, bookings: list[Booking] | None = None, lookups: list[str] | None = None):
        self.world = world
        self.bookings = list(bookings or [])
        self.lookups = list(lookups or [])  # "fail" entries make a lookup fail, in order
        self.sent = 0
        self.looked = 0
        self.cancelled: list[str] = []

    request_window = WINDOW

    def _apply(self) -> None:
        n = len(self.world.ledger)
        self.world.ledger.append(
            {
                "id": f"a{n}",
                "start": START,
                "status": "CONFIRMED",
                "createdAt": datetime.fromtimestamp(self.world.now + n * 1e-3, UTC).isoformat(),
                "bookedAt": self.world.now,
            }
        )

    def appointments_at(self, *, email: str, start_time: str) -> AtInstant:
        self.looked += 1
        if self.lookups and self.lookups.pop(0) == "fail":
            raise Care360LookupError("lookup failed", summary="the lookup failed (500)")
        seen = [a for a in self.world.ledger if a["bookedAt"] + self.world.lag <= self.world.now]
        return read_at_instant(seen, datetime.fromisoformat(start_time))

    def send_booking(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.sent += 1
        booking = self.bookings.pop(0) if self.bookings else Booking()
        if booking.answer == "ok":
            self._apply()  # a 200 means it is booked
        elif booking.apply_after is not None and booking.answer not in ("400", "429", "not_sent"):
            if booking.apply_after == 0:
                self._apply()
            else:
                self.world.at(self.world.now + booking.apply_after, self._apply)
        if booking.answer == "ok":
            return {"status": 200, "success": True}
        if booking.answer == "unclear":
            raise Care360AmbiguousError("504", http_status=504, summary="Care360 answered 504")
        if booking.answer == "400":
            raise Care360BadRequestError("400", http_status=400, summary="Care360 rejected the booking (400)")
        if booking.answer == "429":
            raise Care360RateLimitError("429", http_status=429, retry_after=5, summary="429")
        if booking.answer == "not_sent":
            raise Care360NotSentError("refused", summary="could not reach Care360")
        raise Killed()

    def cancel_appointment(
        self, *, email: str, appointment_id: str, reason: str | None = None
    ) -> dict[str, Any]:
        for item in self.world.ledger:
            if item["id"] == appointment_id and item["status"] == "CONFIRMED":
                item["status"] = "CANCELLED"
                self.cancelled.append(appointment_id)
                return {"success": True}
        raise Care360BadRequestError("no active appointment", http_status=400)


class Store:
    """Stands in for ``task_state_store``; ``fail`` makes writes raise, as a lost supervisor does."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.fail = False
        self.kill_after_write = False

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        if self.fail:
            raise RuntimeError("API server error: 404 task instance not found")
        self.data[key] = value
        if self.kill_after_write:
            self.kill_after_write = False
            raise Killed()

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, msg: str, *args: Any) -> None:
        self.lines.append(msg % args)

    warning = info


def engine(
    world: World,
    hook: Hook,
    store: Store | None,
    *,
    try_number: int = 1,
    attempt: int = 1,
    payload: dict[str, Any] | None = None,
    past_start: Care360ValidationError | None = None,
    **options: Any,
) -> BookingEngine:
    body = payload or PAYLOAD
    journal = (
        BookingJournal(
            store,
            fingerprint=fingerprint(body),
            try_number=try_number,
            attempt=attempt,
            clock=lambda: world.now,
        )
        if store is not None
        else None
    )
    opts = BookingOptions(**{"settle_delay": 5.0, "apply_window": 60.0, **options})
    return BookingEngine(hook, body, opts, journal, Log(), past_start=past_start, clock=world.clock())


def entry(store: Store) -> Entry | None:
    return Entry.read(store.data.get(KEY))


# -- the journal ------------------------------------------------------------------------------------


def test_the_attempt_is_max_tries_which_only_a_clear_changes() -> None:
    # A fresh run with retries=2 has max_tries 2 on every try; a clear after try 3 sets 3 + retries.
    assert attempt_of(2) == 2 and attempt_of(5) == 5
    assert attempt_of(None) is None and attempt_of(True) is None
    store = Store()
    journal = BookingJournal(store, fingerprint="f", try_number=2, attempt=2)
    assert not journal.is_stale(Entry("sending", attempt=2))
    assert journal.is_stale(Entry("sending", attempt=5)) and journal.is_stale(Entry("sending", attempt=None))
    # A try that cannot tell its attempt keeps protecting the booking.
    assert not BookingJournal(store, fingerprint="f", try_number=2, attempt=None).is_stale(Entry("sending"))


def test_editing_retries_in_the_dag_between_tries_does_not_make_the_entry_stale() -> None:
    """max_tries is the server's, set when the run was created: a DAG edited to fewer retries keeps it."""
    world, store = World(), Store()
    hook = Hook(world, [Booking("kill", apply_after=None)])
    with pytest.raises(Killed):
        engine(world, hook, store, attempt=3, check_existing=False).run()
    with pytest.raises(Care360AmbiguousError):
        engine(world, hook, store, try_number=2, attempt=3, check_existing=False).run()
    assert hook.sent == 1


def test_an_unreadable_entry_is_no_entry_and_partial_numbers_are_dropped() -> None:
    assert Entry.read(None) is None and Entry.read("x") is None and Entry.read({"state": "odd"}) is None
    read = Entry.read({"state": "sending", "sent_at": "soon", "try": True, "window": 3})
    assert read is not None and (read.sent_at, read.try_number, read.window) == (None, None, 3.0)


def test_a_try_one_never_reads_the_store() -> None:
    store = Store()
    store.data[KEY] = {"state": "sending"}
    journal = BookingJournal(store, fingerprint="f", try_number=1, attempt=1)
    assert journal.prior() is None


def test_the_apply_window_counts_from_the_unclear_answer_or_the_latest_answer_possible() -> None:
    assert Entry("sending", sent_at=100, window=40, unclear_at=105).applied_by(60) == 165
    assert Entry("sending", sent_at=100, window=40).applied_by(60) == 200  # killed mid-request
    assert Entry("done", outcome="booked").applied_by(60) is None


# -- the rules ------------------------------------------------------------------------------------


def test_a_fresh_booking_looks_once_sends_once_and_keeps_a_done_entry() -> None:
    world, store = World(), Store()
    hook = Hook(world)
    result = engine(world, hook, store).run()
    assert result.outcome is Outcome.BOOKED and (hook.looked, hook.sent) == (1, 1)
    kept = entry(store)
    assert kept is not None and (kept.state, kept.outcome) == ("done", "booked")
    assert "jane" not in str(store.data) and "example.com" not in str(store.data)  # fingerprints only


def test_an_existing_appointment_is_already_booked_and_nothing_is_sent() -> None:
    world = World()
    hook = Hook(world)
    hook._apply()
    result = engine(world, hook, Store()).run()
    assert result.outcome is Outcome.ALREADY_BOOKED and hook.sent == 0


def test_an_unclear_answer_the_lookup_settles_is_booked_in_the_same_try() -> None:
    world, store = World(), Store()
    hook = Hook(world, [Booking("unclear", apply_after=2)])
    result = engine(world, hook, store).run()
    assert result.outcome is Outcome.BOOKED and hook.sent == 1 and world.sleeps == [5.0]
    assert entry(store) is None  # the lookup showed it: nothing later needs the entry


def test_a_late_booking_is_not_found_yet_and_the_retry_waits_out_the_window() -> None:
    """The gateway answers 504 at once and the backend books 15 s later; retry_delay is 1 s."""
    world, store = World(), Store()
    hook = Hook(world, [Booking("unclear", apply_after=15)])
    with pytest.raises(Care360AmbiguousRetryableError) as first:
        engine(world, hook, store, tries_left=True).run()
    assert "does not show the appointment yet" in str(first.value) and "Airflow will retry" in str(
        first.value
    )
    assert first.value.retry_after == pytest.approx(55.0)  # the rest of the 60 s window
    kept = entry(store)
    assert kept is not None and kept.state == "sending" and kept.unclear_at is not None

    world.advance(1.0)  # retry_delay
    result = engine(world, hook, store, try_number=2).run()
    assert result.outcome is Outcome.ALREADY_BOOKED
    assert hook.sent == 1 and len(world.active()) == 1


def test_without_the_wait_the_retry_would_book_twice() -> None:
    """The same story with apply_window=0: the guarantee above is the window, not luck."""
    world, store = World(), Store()
    hook = Hook(world, [Booking("unclear", apply_after=15)])
    with pytest.raises(Care360AmbiguousRetryableError):
        engine(world, hook, store, apply_window=0.0).run()
    world.advance(1.0)
    engine(world, hook, store, try_number=2, apply_window=0.0).run()
    world.advance(60)
    assert len(world.active()) == 2


def test_with_no_retries_left_the_outcome_is_ambiguous_and_says_when_running_again_is_safe() -> None:
    world = World()
    hook = Hook(world, [Booking("unclear", apply_after=None)])
    with pytest.raises(Care360AmbiguousRetryableError) as caught:
        engine(world, hook, Store(), tries_left=False).run()
    text = str(caught.value)
    assert caught.value.outcome is Outcome.AMBIGUOUS
    assert "Running the task again is safe after that time" in text and "nothing was booked" not in text


def test_a_failed_settling_lookup_is_ambiguous_and_retryable() -> None:
    world = World()
    hook = Hook(world, [Booking("unclear", apply_after=None)], lookups=["ok", "fail"])
    with pytest.raises(Care360AmbiguousRetryableError, match="failed too"):
        engine(world, hook, Store()).run()


def test_a_try_killed_mid_request_is_waited_out_before_the_retry_books() -> None:
    world, store = World(), Store()
    hook = Hook(world, [Booking("kill", apply_after=30)])
    with pytest.raises(Killed):
        engine(world, hook, store).run()
    world.advance(2.0)
    result = engine(world, hook, store, try_number=2).run()
    assert result.outcome is Outcome.ALREADY_BOOKED and hook.sent == 1
    assert world.sleeps and world.sleeps[0] == pytest.approx(WINDOW + 60 - 2)


def test_a_retry_after_a_200_whose_success_airflow_never_saw_replays_it_despite_lookup_lag() -> None:
    world, store = World(lag=20.0), Store()
    hook = Hook(world)
    engine(world, hook, store).run()  # booked; imagine the worker dies before Airflow records it
    world.advance(1.0)
    result = engine(world, hook, store, try_number=2).run()
    assert result.outcome is Outcome.BOOKED and "nothing was sent again" in result.message
    assert hook.sent == 1 and hook.looked == 1


def test_a_timeout_while_settling_leaves_the_request_in_flight_for_the_next_try() -> None:
    world, store = World(), Store()
    world.kill_in_sleep = 0
    hook = Hook(world, [Booking("unclear", apply_after=10)])
    booking = engine(world, hook, store)
    with pytest.raises(Killed):
        booking.run()
    assert booking.sent
    kept = entry(store)
    assert kept is not None and kept.state == "sending" and kept.unclear_at is not None
    world.advance(3)
    assert engine(world, hook, store, try_number=2).run().outcome is Outcome.ALREADY_BOOKED
    assert hook.sent == 1


def test_a_try_that_cannot_write_its_journal_sends_nothing() -> None:
    world, store = World(), Store()
    store.fail = True
    hook = Hook(world)
    booking = engine(world, hook, store)
    with pytest.raises(RuntimeError, match="404"):
        booking.run()
    assert hook.sent == 0 and not booking.sent


def test_a_400_after_which_the_lookup_finds_the_invitee_is_already_booked() -> None:
    world = World()
    hook = Hook(world, [Booking("400")])
    world.at(world.now + 0.5, hook._apply)  # a concurrent try took the slot for this invitee
    original = hook.send_booking

    def send(payload: dict[str, Any]) -> dict[str, Any]:
        world.advance(1)
        return original(payload)

    hook.send_booking = send  # type: ignore[method-assign]
    result = engine(world, hook, Store()).run()
    assert result.outcome is Outcome.ALREADY_BOOKED and hook.looked == 2


def test_a_plain_400_stays_rejected() -> None:
    world = World()
    with pytest.raises(Care360BadRequestError):
        engine(world, Hook(world, [Booking("400")]), Store()).run()


@pytest.mark.parametrize("answer", ["429", "not_sent"])
def test_nothing_applied_clears_the_entry_so_the_retry_does_not_wait(answer: str) -> None:
    world, store = World(), Store()
    with pytest.raises(Care360Error):
        engine(world, Hook(world, [Booking(answer)]), store).run()
    assert entry(store) is None


def test_an_unknown_status_fails_closed_without_sending() -> None:
    world = World()
    hook = Hook(world)
    hook._apply()
    world.ledger[0]["status"] = "RESCHEDULED"
    with pytest.raises(Care360LookupAmbiguousError, match="RESCHEDULED"):
        engine(world, hook, Store()).run()
    assert hook.sent == 0


def test_a_past_start_is_rejected_before_any_request_unless_an_earlier_try_may_have_booked_it() -> None:
    past = Care360ValidationError(["start_time: ... is not in the future"])
    world, store = World(), Store()
    hook = Hook(world)
    with pytest.raises(Care360ValidationError):
        engine(world, hook, store, past_start=past).run()
    assert (hook.looked, hook.sent) == (0, 0)

    store.data[KEY] = {"state": "sending", "try": 1, "attempt": 1, "sent_at": world.now - 100, "window": 40}
    hook._apply()
    result = engine(world, hook, store, try_number=2, past_start=past).run()
    assert result.outcome is Outcome.ALREADY_BOOKED and hook.sent == 0
    world.ledger.clear()
    store.data[KEY] = {"state": "sending", "try": 1, "attempt": 1, "sent_at": world.now - 100, "window": 40}
    with pytest.raises(Care360AmbiguousError, match="may exist"):  # not "nothing was booked"
        engine(world, hook, store, try_number=2, past_start=past).run()
    assert hook.looked == 3 and hook.sent == 0


# -- without the lookup -----------------------------------------------------------------------------


def test_without_the_lookup_a_try_after_a_killed_one_of_the_same_attempt_sends_nothing() -> None:
    world, store = World(), Store()
    hook = Hook(world, [Booking("kill", apply_after=1)])
    with pytest.raises(Killed):
        engine(world, hook, store, check_existing=False).run()
    with pytest.raises(Care360AmbiguousError, match="clearing the task sends the booking again"):
        engine(world, hook, store, try_number=2, check_existing=False).run()
    assert hook.sent == 1


def test_without_the_lookup_a_cleared_task_is_a_fresh_start_and_sends_again() -> None:
    world, store = World(), Store()
    hook = Hook(world, [Booking("kill", apply_after=None)])
    with pytest.raises(Killed):
        engine(world, hook, store, check_existing=False).run()  # try 1, attempt 1
    # A person clears the task after try 2 failed: try 3 starts attempt 3.
    result = engine(world, hook, store, try_number=3, attempt=3, check_existing=False).run()
    assert result.outcome is Outcome.BOOKED and hook.sent == 2


def test_without_the_lookup_a_booked_try_is_replayed_and_other_fields_are_refused() -> None:
    world, store = World(), Store()
    hook = Hook(world)
    engine(world, hook, store, check_existing=False).run()
    assert engine(world, hook, store, try_number=2, check_existing=False).run().outcome is Outcome.BOOKED
    other = {**PAYLOAD, "location": "google_conference"}
    with pytest.raises(Care360BadRequestError, match="clear the task to book the new fields"):
        engine(world, hook, store, try_number=3, payload=other, check_existing=False).run()
    assert engine(world, hook, store, try_number=4, attempt=4, payload=other, check_existing=False).run()
    assert hook.sent == 2


def test_with_the_lookup_a_cleared_task_looks_first_and_books_what_is_missing() -> None:
    world, store = World(), Store()
    hook = Hook(world)
    engine(world, hook, store).run()
    # Cleared: a fresh attempt, the booking is there.
    assert engine(world, hook, store, try_number=2, attempt=2).run().outcome is Outcome.ALREADY_BOOKED
    world.ledger[0]["status"] = "CANCELLED"  # somebody cancelled it; clear again
    assert engine(world, hook, store, try_number=3, attempt=3).run().outcome is Outcome.BOOKED
    assert hook.sent == 2 and len(world.active()) == 1


# -- verify_booking ----------------------------------------------------------------------------------


def test_verify_booking_cancels_the_later_of_two_appointments_at_the_instant() -> None:
    world = World()
    hook = Hook(world)
    world.at(world.now + 1, hook._apply)  # a second run of the same row books beside this one
    result = engine(world, hook, Store(), verify_booking=True).run()
    assert len(world.active()) == 1 and hook.cancelled == ["a1"] and result.cancelled == ["a1"]
    assert world.active()[0]["id"] == "a0" and "cancelled" in result.message


def test_verify_booking_cancels_nothing_when_there_is_one() -> None:
    world = World()
    hook = Hook(world)
    result = engine(world, hook, Store(), verify_booking=True).run()
    assert result.cancelled == [] and hook.cancelled == [] and hook.looked == 2


# -- the property ------------------------------------------------------------------------------------

_bookings = st.lists(
    st.builds(
        Booking,
        answer=st.sampled_from(["ok", "unclear", "kill", "429", "not_sent"]),
        apply_after=st.one_of(st.none(), st.floats(min_value=0, max_value=30)),
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=400, deadline=None)
@given(
    bookings=_bookings,
    lookups=st.lists(st.sampled_from(["ok", "fail"]), max_size=6),
    lag=st.floats(min_value=0, max_value=25),
    delays=st.lists(st.floats(min_value=0, max_value=90), min_size=6, max_size=6),
    kill_in_sleep=st.one_of(st.none(), st.integers(min_value=0, max_value=2)),
    kill_after_write=st.booleans(),
)
def test_an_appointment_exists_at_most_once_and_a_successful_try_leaves_exactly_one(
    bookings: list[Booking],
    lookups: list[str],
    lag: float,
    delays: list[float],
    kill_in_sleep: int | None,
    kill_after_write: bool,
) -> None:
    # A booking lands within 30 s of its request and shows in lookups within 25 s of landing:
    # together inside the 60 s apply window.
    world, store = World(lag=lag), Store()
    world.kill_in_sleep = kill_in_sleep
    store.kill_after_write = kill_after_write
    hook = Hook(world, bookings, lookups)
    succeeded = False
    for try_number, delay in enumerate(delays, start=1):
        try:
            engine(world, hook, store, try_number=try_number).run()
        except (Care360Error, Killed):
            world.advance(delay)
            assert len(world.active()) <= 1
            continue
        succeeded = True
        break
    world.advance(120)  # everything in flight lands
    assert len(world.active()) <= 1
    if succeeded:
        assert len(world.active()) == 1


# -- what a review of the engine found ----------------------------------------------------------------


def test_without_a_journal_a_failed_settling_lookup_still_holds_the_window() -> None:
    """Airflow < 3.3: the try itself holds the apply window, whatever the settling lookup did."""
    world = World()
    hook = Hook(world, [Booking("unclear", apply_after=25)], lookups=["ok", "fail"])
    result = engine(world, hook, None, tries_left=True).run()
    assert result.outcome is Outcome.BOOKED and sum(world.sleeps) >= 60
    world.advance(1.0)
    assert engine(world, hook, None, try_number=2).run().outcome is Outcome.ALREADY_BOOKED
    world.advance(60)
    assert len(world.active()) == 1 and hook.sent == 1


def test_verify_after_an_unclear_answer_waits_for_this_trys_own_late_booking() -> None:
    """Another run books at +1 s; this try's 504'd request lands at +20 s: the later one is cancelled."""
    world = World()
    hook = Hook(world, [Booking("unclear", apply_after=20)])
    world.at(world.now + 1, hook._apply)
    result = engine(world, hook, Store(), verify_booking=True).run()
    world.advance(60)
    assert len(world.active()) == 1 and result.cancelled == ["a1"]


def test_a_refused_cancel_of_an_appointment_still_active_is_not_recorded_as_cancelled() -> None:
    world = World()
    hook = Hook(world)
    world.at(world.now + 1, hook._apply)

    def refuse(*, email: str, appointment_id: str, reason: str | None = None) -> dict[str, Any]:
        raise Care360BadRequestError("refused", http_status=400, summary="Care360 refused the cancel (400)")

    hook.cancel_appointment = refuse  # type: ignore[method-assign]
    result = engine(world, hook, Store(), verify_booking=True).run()
    assert result.cancelled == [] and "could not be cancelled" in result.message


def test_a_past_start_with_an_earlier_request_in_flight_is_ambiguous_after_the_window() -> None:
    past = Care360ValidationError(["start_time: 2026-12-01T15:00:00Z is not in the future"])
    world, store = World(), Store()
    store.data[KEY] = {"state": "sending", "try": 1, "attempt": 1, "sent_at": world.now - 5, "window": 40}
    hook = Hook(world)
    with pytest.raises(Care360AmbiguousError, match="leaves out appointments that have ended") as caught:
        engine(world, hook, store, try_number=2, past_start=past).run()
    assert not isinstance(caught.value, Care360ValidationError) and world.sleeps and hook.sent == 0


def test_a_lookup_error_while_an_earlier_request_may_be_in_flight_never_says_nothing_was_booked() -> None:
    world, store = World(), Store()
    store.data[KEY] = {"state": "sending", "try": 1, "attempt": 1, "sent_at": world.now - 5, "window": 40}
    hook = Hook(world, lookups=["fail"])
    with pytest.raises(Care360AmbiguousRetryableError, match="the booking may exist") as caught:
        engine(world, hook, store, try_number=2).run()
    assert "nothing was booked" not in str(caught.value).lower() and hook.sent == 0


def test_an_earlier_request_with_other_fields_still_in_flight_stops_this_try() -> None:
    world, store = World(), Store()
    other = fingerprint({**PAYLOAD, "startTime": "2026-12-01T16:00:00Z"})
    store.data[KEY] = {"state": "sending", "fingerprint": other, "try": 1, "attempt": 1, "sent_at": world.now}
    hook = Hook(world)
    with pytest.raises(Care360AmbiguousError, match="other fields"):
        engine(world, hook, store, try_number=2).run()
    assert hook.sent == 0


@pytest.mark.parametrize("status", [409, 422])
def test_a_slot_taken_409_or_422_by_the_invitee_is_already_booked(status: int) -> None:
    world = World()
    hook = Hook(world)

    def taken(payload: dict[str, Any]) -> dict[str, Any]:
        hook.sent += 1
        hook._apply()  # a concurrent try of the same invitee got there first
        raise Care360BadRequestError(
            "taken", http_status=status, summary=f"Care360 rejected the booking ({status})"
        )

    hook.send_booking = taken  # type: ignore[method-assign]
    assert engine(world, hook, Store()).run().outcome is Outcome.ALREADY_BOOKED


def test_a_task_asked_to_stop_sends_nothing_more() -> None:
    world = World()
    hook = Hook(world)
    journal = BookingJournal(Store(), fingerprint=fingerprint(PAYLOAD), try_number=1, attempt=1)
    stopping = BookingEngine(
        hook, PAYLOAD, BookingOptions(), journal, Log(), clock=world.clock(), should_stop=lambda: True
    )
    with pytest.raises(Care360NotSentError, match="asked to stop"):
        stopping.run()
    assert hook.sent == 0 and not stopping.sent


def test_a_stop_that_lands_during_the_journal_write_sends_nothing_and_leaves_no_entry() -> None:
    """on_kill arrives while the in-flight write is with the supervisor: the send must not follow."""
    world = World()
    hook = Hook(world)
    stopping = [False]

    class StopsOnWrite(Store):
        def set(self, key: str, value: Any) -> None:
            super().set(key, value)
            stopping[0] = True

    store = StopsOnWrite()
    journal = BookingJournal(store, fingerprint=fingerprint(PAYLOAD), try_number=1, attempt=1)
    booking = BookingEngine(
        hook, PAYLOAD, BookingOptions(), journal, Log(), clock=world.clock(), should_stop=lambda: stopping[0]
    )
    with pytest.raises(Care360NotSentError, match="asked to stop"):
        booking.run()
    assert hook.sent == 0 and KEY not in store.data


def test_looked_absent_skips_the_lookup_only_when_no_request_is_in_flight() -> None:
    world, store = World(), Store()
    hook = Hook(world)
    body = engine(world, hook, store)
    fresh = BookingEngine(
        hook, PAYLOAD, body.options, body.journal, Log(), clock=world.clock(), looked_absent=True
    )
    assert fresh.run().outcome is Outcome.BOOKED and (hook.looked, hook.sent) == (0, 1)

    # An earlier try's request in flight (killed mid-request, applied later): look and wait as always.
    world, store = World(), Store()
    hook = Hook(world, [Booking("kill", apply_after=30)])
    with pytest.raises(Killed):
        engine(world, hook, store).run()
    retry = engine(world, hook, store, try_number=2)
    again = BookingEngine(
        hook, PAYLOAD, retry.options, retry.journal, Log(), clock=world.clock(), looked_absent=True
    )
    assert again.run().outcome is Outcome.ALREADY_BOOKED and hook.sent == 1 and hook.looked >= 1
