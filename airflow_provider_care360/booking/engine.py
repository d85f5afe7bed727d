"""
The booking engine: look before booking, send once, settle unclear answers, keep the journal.

Every operator books through :class:`BookingEngine`: ``ScheduleAppointmentOperator`` once per task,
the batch operator once per row. The engine takes what it needs as arguments (the hook, the
validated request body, its options, the journal, a logger and a clock) and returns a
:class:`BookingResult`, or raises a typed :class:`~airflow_provider_care360.exceptions.Care360Error`.
It imports nothing from Airflow.

The rules, with the lookup (``check_existing=True``):

1. Look the invitee up at the start instant. Found: ``already_booked``, nothing sent.
2. If the journal shows an earlier try's request in flight (it sent and recorded no outcome), wait
   until that request must have been applied if it ever will be (its apply window), and look again.
3. Write the journal's in-flight entry (the fence: a try that cannot write sends nothing), then send.
4. An unclear answer (read timeout, reset, 5xx, an unreadable 2xx) is settled by a lookup
   ``settle_delay`` later: found is ``booked``. Not found means *not found yet*: the entry stays in
   flight and the try fails as ``ambiguous`` (retryable, with the rest of the apply window as its
   wait); the next try waits out the window, looks, and books only if the appointment is missing.
5. A 400 after which the lookup finds the invitee's appointment at that instant is ``already_booked``.
6. Optionally (``verify_booking``), one more lookup after booking: a second appointment for the
   invitee at the instant (two runs of the same row at once) is cancelled, the later created one.

Without the lookup (``check_existing=False``) the journal alone decides: an earlier try of the same
attempt that sent and recorded nothing fails the try as ``ambiguous``; one that booked is replayed;
an entry from before the task was cleared is stale, and the try sends again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from airflow_provider_care360._pii import mask_email
from airflow_provider_care360._responses import AtInstant, lookup_unclear
from airflow_provider_care360.booking.journal import Entry
from airflow_provider_care360.exceptions import (
    Care360AmbiguousError,
    Care360AmbiguousRetryableError,
    Care360BadRequestError,
    Care360Error,
    Care360NotSentError,
    Care360RateLimitError,
    Care360ValidationError,
)
from airflow_provider_care360.outcomes import Outcome

__all__ = ["DEFAULT_APPLY_WINDOW", "BookingEngine", "BookingOptions", "BookingResult", "Clock", "Journal"]

#: Seconds after an unclear answer during which Care360 may still apply the request and show it in
#: lookups. The contract promises no bound (section 3); 60 s covers a backend that books 30 s after
#: its gateway answered, plus as long again for the booking to show in lookups, and matches the
#: 60 s upstream timeout that common gateways and load balancers default to.
DEFAULT_APPLY_WINDOW = 60.0

_CANCEL_REASON = "Duplicate booking: the invitee was booked twice at this start; the earlier booking stands."


class BookingHook(Protocol):
    """What the engine needs of :class:`~airflow_provider_care360.hooks.care360.Care360Hook`."""

    def appointments_at(self, *, email: str, start_time: str) -> AtInstant: ...

    def send_booking(self, payload: dict[str, Any]) -> dict[str, Any]: ...

    def cancel_appointment(
        self, *, email: str, appointment_id: str, reason: str | None = None
    ) -> dict[str, Any]: ...

    @property
    def request_window(self) -> float: ...


class Journal(Protocol):
    """What the engine needs of a journal: a single booking's, or one row's of a batch."""

    fingerprint: str

    def prior(self) -> Entry | None: ...

    def is_stale(self, entry: Entry) -> bool: ...

    def sending(self, window: float) -> None: ...

    def unclear(self) -> float: ...

    def done(self, outcome: str) -> None: ...

    def known(self, outcome: str) -> None: ...

    def forget(self) -> None: ...


class Logger(Protocol):
    """A ``logging.Logger`` or Airflow's structlog task logger."""

    def info(self, msg: Any, /, *args: Any) -> Any: ...

    def warning(self, msg: Any, /, *args: Any) -> Any: ...


@dataclass(frozen=True)
class Clock:
    """The wall clock and a sleep: real ones by default, controlled ones in tests."""

    now: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep


@dataclass(frozen=True)
class BookingOptions:
    """
    How the engine books.

    :param check_existing: look before booking and settle unclear answers with the lookup.
    :param settle_delay: seconds between an unclear answer and the lookup that settles it.
    :param apply_window: seconds after an unclear answer before the booking may be sent again.
    :param retry_on_ambiguous: without the lookup, send again after an unclear answer (may book twice).
    :param verify_booking: one more lookup after booking; cancel a second appointment at the instant.
    :param tries_left: whether Airflow retries the task if this try fails (only for messages).
    """

    check_existing: bool = True
    settle_delay: float = 5.0
    apply_window: float = DEFAULT_APPLY_WINDOW
    retry_on_ambiguous: bool = False
    verify_booking: bool = False
    tries_left: bool = False


@dataclass
class BookingResult:
    """What came of a booking that succeeded: ``booked`` or ``already_booked``."""

    outcome: Outcome
    message: str
    http_status: int | None = None
    response: dict[str, Any] | None = None
    appointment: dict[str, Any] | None = None
    #: Ids of appointments cancelled as duplicates (``verify_booking``).
    cancelled: list[str] = field(default_factory=list)


def _at(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class BookingEngine:
    """
    Books one appointment by the rules above.

    :param hook: does the I/O (lookup, booking, cancel).
    :param payload: the validated request body.
    :param options: see :class:`BookingOptions`.
    :param journal: the task instance's journal, or ``None`` where Airflow has no ``task_state_store``.
    :param log: where to say what it does (no personal data beyond a masked email).
    :param past_start: the validation error to raise when the start is in the past, unless the
        journal shows an earlier try may have booked it (then the engine looks and reports what it
        finds, or replays the earlier try's booking).
    :param clock: the wall clock and sleep.
    :param should_stop: asked right before each send; ``True`` (Airflow asked the task to stop:
        ``on_kill``, or a batch that stopped) sends nothing more.
    :param before_send: waits for a place to send (a batch's shared pace) before the journal's
        in-flight entry is written, so the entry's time is the request's.
    :param at_send: called between the in-flight entry's write and the send: waits out what is left
        of a place given a moment ahead of its time (the write overlaps the wait; the hook's
        ``request_window`` counts that moment in the entry's window).
    :param looked_absent: this try's lookup found no appointment, and the booking it sent since was
        answered 429 (refused, so not applied): send again without looking again (a batch row that
        waited out a 429 pause). Ignored when the journal shows a request in flight.

    After :meth:`run` returns or raises, :attr:`sent` says whether a booking request left, and
    :attr:`throttled` whether Care360 answered it 429.
    """

    def __init__(
        self,
        hook: BookingHook,
        payload: dict[str, Any],
        options: BookingOptions,
        journal: Journal | None,
        log: Logger,
        *,
        past_start: Care360ValidationError | None = None,
        clock: Clock | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        before_send: Callable[[], None] = lambda: None,
        at_send: Callable[[], None] = lambda: None,
        looked_absent: bool = False,
    ) -> None:
        self.hook = hook
        self.payload = payload
        self.options = options
        self.journal = journal
        self.log = log
        self.past_start = past_start
        self.clock = clock or Clock()
        self.should_stop = should_stop
        self.before_send = before_send
        self.at_send = at_send
        self.looked_absent = looked_absent
        self.sent = False
        self.throttled = False
        who = mask_email(payload["email"])
        self.what = f"event type {payload['eventTypeId']} at {payload['startTime']} for {who}"

    # -- the rules --------------------------------------------------------------------------------

    def run(self) -> BookingResult:
        prior = self.journal.prior() if self.journal else None
        if self.options.check_existing:
            return self._with_lookup(prior)
        return self._without_lookup(prior)

    def _with_lookup(self, prior: Entry | None) -> BookingResult:
        if (replayed := self._replay(prior)) is not None:
            return replayed
        in_flight = prior if prior is not None and prior.state == "sending" else None
        if in_flight is not None and self.journal is not None:
            other = in_flight.fingerprint is not None and in_flight.fingerprint != self.journal.fingerprint
            if other and not self.journal.is_stale(in_flight):
                raise Care360AmbiguousError(
                    f"Try {in_flight.try_number} of this task sent a booking with other fields than this "
                    "try's and recorded no outcome: that booking may exist. Nothing was sent: a task books "
                    "once. Check the calendar for this invitee; clearing the task books the new fields "
                    "(if no appointment exists at their start).",
                    summary=f"try {in_flight.try_number} sent other fields",
                )
        if self.past_start is not None:
            if in_flight is None:
                raise self.past_start
            found = self._look(in_flight).found
            if found is None:
                self._wait_out(in_flight)
                found = self._look(in_flight).found
            if found is not None:
                return self._already(
                    found, "booked by an earlier try of this task (the start has passed since)"
                )
            raise Care360AmbiguousError(
                f"{self.past_start.problems[0]}. An earlier try of this task sent the booking and recorded "
                "no outcome, and the lookup does not show it; but Care360 leaves out appointments that have "
                "ended, so it may exist. Nothing was sent by this try: check the calendar for this invitee.",
                summary="the start has passed and an earlier try's booking may exist",
            )
        if self.looked_absent and in_flight is None:
            return self._send_and_settle()  # looked a moment ago; the only send since was refused
        reading = self._look(in_flight)
        if reading.found is not None:
            return self._already(reading.found, "nothing was sent")
        if in_flight is not None:
            self._wait_out(in_flight)
            reading = self._look(in_flight)
            if reading.found is not None:
                return self._already(reading.found, f"booked by try {in_flight.try_number}; nothing was sent")
        return self._send_and_settle()

    def _replay(self, prior: Entry | None) -> BookingResult | None:
        """A booking an earlier try of this attempt made and Airflow never saw succeed: not sent again."""
        if prior is None or self.journal is None or prior.state != "done":
            return None
        if prior.outcome != Outcome.BOOKED.value or self.journal.is_stale(prior):
            return None
        if prior.fingerprint != self.journal.fingerprint:
            then = (
                "clear the task to book the new fields (it looks first, and books only if no "
                "appointment exists at their start)"
                if self.options.check_existing
                else "clear the task to book the new fields"
            )
            raise Care360BadRequestError(
                f"Try {prior.try_number} of this task already booked an appointment with other "
                f"booking fields than this try's. Nothing was sent: a task books once; {then}.",
                summary=f"try {prior.try_number} booked other fields",
            )
        self.log.info("Try %s of this task booked this appointment: nothing was sent", prior.try_number)
        return BookingResult(
            Outcome.BOOKED, f"Booked by try {prior.try_number} of this task; nothing was sent again."
        )

    def _without_lookup(self, prior: Entry | None) -> BookingResult:
        if prior is not None and self.journal is not None and self.journal.is_stale(prior):
            self.log.info(
                "The journal's entry is from before the task was cleared (try %s): a fresh start",
                prior.try_number,
            )
            prior = None
        if (replayed := self._replay(prior)) is not None:
            return replayed
        if prior is not None and self.journal is not None:
            if prior.state == "sending" and not self.options.retry_on_ambiguous:
                raise Care360AmbiguousError(
                    f"Try {prior.try_number} of this task sent the booking and ended without recording "
                    "Care360's answer (its worker was killed or lost its heartbeat). The booking may or "
                    "may not exist, so this try sends nothing. Check the calendar for this invitee; "
                    "clearing the task sends the booking again (check_existing=False), and "
                    "check_existing=True (the default) lets the provider look instead.",
                    summary=f"try {prior.try_number} sent the booking and recorded no answer",
                )
        if self.past_start is not None:
            raise self.past_start
        try:
            response = self._send()
        except Care360Error as exc:
            error = exc
        else:
            if self.journal:
                self.journal.done(Outcome.BOOKED.value)  # kept: a retry replays it
            return self._booked(response)
        if self.journal and error.outcome is not Outcome.AMBIGUOUS:
            self.journal.done(error.outcome.value)
        elif self.journal:
            self.journal.unclear()
        if isinstance(error, Care360AmbiguousError) and self.options.retry_on_ambiguous:
            raise Care360AmbiguousRetryableError(
                f"{error.summary}. The booking may or may not exist; retry_on_ambiguous=True: Airflow "
                "will retry, which may book the invitee twice.",
                **self._details(error),
            )
        raise error

    def _send_and_settle(self) -> BookingResult:
        try:
            response = self._send()
        except Care360Error as exc:
            error = exc
        else:
            if self.journal:
                # Kept, not deleted: if this try dies before Airflow records its success, the retry
                # replays the booking instead of trusting a lookup that may lag behind it.
                self.journal.done(Outcome.BOOKED.value)
            result = self._booked(response)
            if self.options.verify_booking:
                self._verify(result)
            return result
        # Outside the except block: a timeout or a lookup error while settling must not carry the
        # booking's error as its context (the retry policy would read it as the cause).
        if error.outcome is Outcome.AMBIGUOUS:
            return self._settle(error)
        if isinstance(error, Care360BadRequestError) and error.http_status in (400, 409, 422):
            if (already := self._settle_refusal(error)) is not None:
                return already
        self.throttled = self.sent and isinstance(error, Care360RateLimitError)
        if self.journal:
            self.journal.forget()  # refused, throttled or not sent: nothing was applied
        raise error

    # -- steps --------------------------------------------------------------------------------------

    def _stop_if_asked(self) -> None:
        if self.should_stop():
            raise Care360NotSentError(
                "The task was asked to stop before the booking was sent: nothing was sent.",
                summary="the task was asked to stop",
            )

    def _look(self, in_flight: Entry | None = None) -> AtInstant:
        """
        Look the invitee up at the start. While an earlier try's request may be in flight, a failed
        lookup must not read as "nothing was booked": its error becomes ambiguous.
        """
        try:
            reading = self.hook.appointments_at(
                email=self.payload["email"], start_time=self.payload["startTime"]
            )
            if not reading.clear:
                raise lookup_unclear(reading)
        except Care360Error as exc:
            if in_flight is None or exc.outcome is Outcome.AMBIGUOUS:
                raise
            cls = Care360AmbiguousRetryableError if exc.retryable else Care360AmbiguousError
            then = "Airflow will retry: that try looks first." if exc.retryable else "Check the calendar."
            raise cls(
                f"{exc.summary}. Try {in_flight.try_number} of this task sent the booking and recorded no "
                f"outcome, so the booking may exist; nothing was sent by this try. {then}",
                retry_after=exc.retry_after,
                **self._details(exc),
            ) from None
        return reading

    def _send(self) -> dict[str, Any]:
        self._stop_if_asked()
        self.before_send()
        self._stop_if_asked()
        if self.journal:
            self.journal.sending(window=self.hook.request_window)  # the fence: no write, no send
        self.at_send()
        if self.should_stop():  # Airflow stopped the task while the write was on its way
            if self.journal:
                self.journal.forget()
            self._stop_if_asked()
        self.log.info("Booking Care360 %s", self.what)
        self.sent = True
        return self.hook.send_booking(self.payload)

    def _booked(self, response: dict[str, Any]) -> BookingResult:
        self.log.info("Booked Care360 %s", self.what)
        return BookingResult(
            Outcome.BOOKED,
            "Booked: Care360 answered 200 with success=true.",
            http_status=200,
            response=response,
        )

    def _already(self, found: dict[str, Any], how: str) -> BookingResult:
        self.log.info("Care360 already has %s: %s", self.what, how)
        if self.journal:
            self.journal.known(Outcome.ALREADY_BOOKED.value)
        return BookingResult(
            Outcome.ALREADY_BOOKED,
            f"The appointment already exists at this start: {how}.",
            appointment=found,
        )

    def _wait_out(self, entry: Entry) -> None:
        """Wait until an earlier try's request must have been applied, if it ever will be."""
        applied_by = entry.applied_by(self.options.apply_window)
        if applied_by is None:
            return
        longest = self.options.apply_window + (entry.window or 0.0)
        remaining = min(applied_by - self.clock.now(), longest)
        if remaining <= 0:
            return
        self.log.warning(
            "Try %s of this task sent the booking and recorded no outcome, and the lookup does not show "
            "it yet. Care360 may still apply it: waiting %.1f s (the apply window) before looking again.",
            entry.try_number,
            remaining,
        )
        self.clock.sleep(remaining)

    def _settle(self, error: Care360Error) -> BookingResult:
        """After an unclear answer: booked if the lookup finds it, else "not found yet"."""
        unclear_at = self.journal.unclear() if self.journal else self.clock.now()
        delay = self.options.settle_delay
        self.log.warning(
            "No clear answer from Care360 (%s); looking the invitee up in %.1f s to settle it",
            error.summary,
            delay,
        )
        self.clock.sleep(delay)
        lookup_error: Care360Error | None = None
        try:
            found = self._look().found
        except Care360Error as exc:
            lookup_error, found = exc, None
        safe_at = unclear_at + self.options.apply_window
        if found is not None:
            if self.options.verify_booking:
                # The appointment found may be another run's, with this try's request still to land:
                # look for a second one only once the apply window has ended.
                self.clock.sleep(max(0.0, safe_at - self.clock.now()))
                result = BookingResult(Outcome.BOOKED, "", error.http_status, error.response, found)
                self._verify(result)
                found = result.appointment
                cancelled = result.cancelled
            else:
                cancelled = []
            message = f"{error.summary}. The lookup shows the appointment exists: booked once."
            self.log.info("%s", message)
            if self.journal:
                self.journal.known(Outcome.BOOKED.value)
            return BookingResult(
                Outcome.BOOKED, message, error.http_status, error.response, found, cancelled=cancelled
            )
        if self.journal is None:
            # No task_state_store (Airflow < 3.3): nothing carries "in flight" to the next try, so
            # this try holds the apply window itself, then looks once more.
            self.log.warning(
                "The lookup does not show the appointment yet; waiting for the apply window to end "
                "(%.1f s) before looking again",
                max(0.0, safe_at - self.clock.now()),
            )
            self.clock.sleep(max(0.0, safe_at - self.clock.now()))
            try:
                found = self._look().found
            except Care360Error as exc:
                lookup_error = exc
                safe_at = self.clock.now()  # the window has ended: the next try's lookup can be trusted
            else:
                if found is not None:
                    message = f"{error.summary}. The lookup shows the appointment exists: booked once."
                    return BookingResult(Outcome.BOOKED, message, error.http_status, error.response, found)
                raise Care360NotSentError(
                    f"{error.summary}. The lookup still does not show the appointment "
                    f"{self.options.apply_window:.0f} s after the unclear answer: nothing was booked, and "
                    "the task is safe to run again"
                    + (
                        "; Airflow will retry it."
                        if self.options.tries_left
                        else " (it has no retries left)."
                    ),
                    **self._details(error),
                )
        if lookup_error is not None:
            looked = f"The lookup that would settle it failed too ({lookup_error.summary})"
        else:
            looked = f"The lookup {delay:.0f} s later does not show the appointment yet"
        then = (
            "Airflow will retry: that try waits until then, looks again, and books only if the "
            "appointment is still missing."
            if self.options.tries_left
            else "Running the task again is safe after that time: it looks first, and books only if the "
            "appointment is still missing."
        )
        raise Care360AmbiguousRetryableError(
            f"{error.summary}. {looked}: Care360 may still apply the request, so the booking may or may "
            f"not exist, and nothing is sent again until {self.options.apply_window:.0f} s after the "
            f"unclear answer ({_at(safe_at)}). {then}",
            retry_after=max(0.0, safe_at - self.clock.now()),
            **self._details(error),
        )

    def _settle_refusal(self, error: Care360Error) -> BookingResult | None:
        """A 400 may be "the slot is taken" by this invitee's own booking: one lookup tells."""
        try:
            found = self._look().found
        except Care360Error as lookup_error:
            self.log.warning(
                "Care360 refused the booking (%s); the lookup that would tell whether the invitee holds "
                "this slot failed (%s)",
                error.summary,
                lookup_error.summary,
            )
            return None
        if found is None:
            return None
        if self.journal:
            self.journal.known(Outcome.ALREADY_BOOKED.value)
        return BookingResult(
            Outcome.ALREADY_BOOKED,
            f"{error.summary}; the lookup shows the invitee's appointment at this start exists "
            "(booked by an earlier try or another run): booked once.",
            http_status=error.http_status,
            response=error.response,
            appointment=found,
        )

    def _verify(self, result: BookingResult) -> None:
        """One more lookup after booking; cancel any second appointment at the instant."""
        self.clock.sleep(self.options.settle_delay)
        try:
            reading = self.hook.appointments_at(
                email=self.payload["email"], start_time=self.payload["startTime"]
            )
        except Care360Error as exc:
            self.log.warning("Could not verify the booking (%s): no duplicate was looked for", exc.summary)
            result.message += f" The check for a second appointment failed ({exc.summary})."
            return
        if not reading.active:
            return
        keep, extras = reading.active[0], reading.active[1:]
        result.appointment = keep
        for extra in extras:
            if not isinstance(extra.get("id"), str) or not extra["id"]:
                result.message += " A second appointment without an id exists and could not be cancelled."
                continue
            appointment_id = extra["id"]
            try:
                self.hook.cancel_appointment(
                    email=self.payload["email"], appointment_id=appointment_id, reason=_CANCEL_REASON
                )
            except Care360BadRequestError as exc:
                # Refused: cancelled already (by the other run's check, which found the same pair), or
                # refused outright. Only a lookup tells which.
                if self._still_active(appointment_id):
                    self.log.warning(
                        "Care360 refused to cancel appointment %s (%s)", appointment_id, exc.summary
                    )
                    result.message += (
                        f" A second appointment ({appointment_id}) exists and could not be cancelled."
                    )
                    continue
                self.log.info("Duplicate appointment %s was already cancelled", appointment_id)
            except Care360Error as exc:
                self.log.warning(
                    "Could not cancel duplicate appointment %s (%s)", appointment_id, exc.summary
                )
                result.message += (
                    f" A second appointment ({appointment_id}) exists and could not be cancelled."
                )
                continue
            result.cancelled.append(appointment_id)
            self.log.warning(
                "Cancelled duplicate appointment %s; appointment %s stands", appointment_id, keep.get("id")
            )
        if result.cancelled:
            result.message += (
                f" A second appointment for the invitee at this start was found and cancelled "
                f"({', '.join(result.cancelled)}); the earlier one ({keep.get('id')}) stands."
            )

    def _still_active(self, appointment_id: str) -> bool:
        try:
            reading = self.hook.appointments_at(
                email=self.payload["email"], start_time=self.payload["startTime"]
            )
        except Care360Error:
            return True  # cannot tell: do not claim it was cancelled
        return any(a.get("id") == appointment_id for a in reading.active)

    @staticmethod
    def _details(error: Care360Error) -> dict[str, Any]:
        return {
            "http_status": error.http_status,
            "api_message": error.api_message,
            "api_error": error.api_error,
            "response": error.response,
            "summary": error.summary,
        }
