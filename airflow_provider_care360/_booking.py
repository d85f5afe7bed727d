"""
How ScheduleAppointmentOperator books: look first, send once, settle an unclear answer, keep the journal.

Imported when a task runs, never when a DAG file is parsed: a scheduler parsing a DAG that uses the
operator does not compile or import any of this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

    from airflow_provider_care360._journal import BookingJournal
    from airflow_provider_care360.exceptions import Care360Error
    from airflow_provider_care360.operators.care360 import ScheduleAppointmentOperator

__all__ = ["book"]


def book(op: ScheduleAppointmentOperator, context: Context, record: dict[str, Any]) -> None:
    """Book, or find the booking; fill ``record`` in; raise a ``Care360Error`` on failure."""
    from airflow_provider_care360._journal import BookingJournal
    from airflow_provider_care360._pii import mask_email
    from airflow_provider_care360.exceptions import (
        Care360AmbiguousError,
        Care360AmbiguousRetryableError,
        Care360Error,
        Outcome,
    )
    from airflow_provider_care360.validation import build_booking_payload

    payload = build_booking_payload(
        event_type_id=op.event_type_id,
        start_time=op.start_time,
        email=op.invitee_email,
        timezone=op.timezone,
        location=op.location,
        first_name=op.first_name,
        last_name=op.last_name,
        tracking=op.tracking,
    )
    record.update(
        event_type_id=payload["eventTypeId"], start_time=payload["startTime"], email=payload["email"]
    )
    who = mask_email(payload["email"])
    what = f"event type {payload['eventTypeId']} at {payload['startTime']} for {who}"
    journal = BookingJournal.from_context(context, payload)
    prior = journal.prior() if journal else None

    if op.check_existing:
        if prior and prior["state"] == "sending":
            _wait_for_earlier_try(op, prior)
        existing = op.hook.find_appointment_at(email=payload["email"], start_time=payload["startTime"])
        if existing is not None:
            op.log.info("Care360 already has %s: nothing was sent", what)
            record.update(
                outcome=Outcome.ALREADY_BOOKED.value,
                appointment=existing,
                message="The appointment already exists at this start: nothing was sent.",
            )
            return
    elif prior is not None:
        _replay_earlier_try(op, prior, journal, record)
        if record["outcome"]:
            return

    op.log.info("Booking Care360 %s", what)
    if journal:
        connect, read = op.hook.settings.timeout
        journal.sending(window=connect + read)
    op._sent = True
    try:
        response = op.hook.send_booking(payload)
    except Care360Error as exc:
        if exc.outcome is Outcome.AMBIGUOUS and op.check_existing:
            _settle(op, exc, payload, journal, record, context)
            return
        if journal:
            journal.done(exc.outcome.value)
        if isinstance(exc, Care360AmbiguousError) and op.retry_on_ambiguous:
            raise Care360AmbiguousRetryableError(
                f"{exc.message.split('. ')[0]}. The booking may or may not exist; "
                "retry_on_ambiguous=True: Airflow will retry, which may book the invitee twice.",
                http_status=exc.http_status,
                api_message=exc.api_message,
                api_error=exc.api_error,
                response=exc.response,
            ) from None
        raise
    if journal and not op.check_existing:
        # Only check_existing=False replays a recorded booking. With the lookup, a success needs
        # no entry: no later try follows it short of a clear, which empties the store, and a later
        # try would look first anyway (one call to the store saved per booking).
        journal.done(Outcome.BOOKED.value)
    op.log.info("Booked Care360 %s", what)
    record.update(
        outcome=Outcome.BOOKED.value,
        http_status=200,
        response=response,
        message="Booked: Care360 answered 200 with success=true.",
    )


def _wait_for_earlier_try(op: ScheduleAppointmentOperator, prior: dict[str, Any]) -> None:
    """An earlier try sent the booking and never recorded an answer: let its request end first."""
    import time

    sent_at, window = prior.get("sent_at"), prior.get("window")
    if not isinstance(sent_at, (int, float)) or not isinstance(window, (int, float)):
        return
    remaining = min(sent_at + window + op.settle_delay - time.time(), window + op.settle_delay)
    if remaining > 0:
        op.log.warning(
            "Try %s of this task sent the booking and recorded no answer; its request may still be "
            "waiting. Waiting %.1f s for it to end before looking the invitee up.",
            prior.get("try"),
            remaining,
        )
        time.sleep(remaining)


def _replay_earlier_try(
    op: ScheduleAppointmentOperator,
    prior: dict[str, Any],
    journal: BookingJournal | None,
    record: dict[str, Any],
) -> None:
    """``check_existing=False``: decide from the journal alone whether this try may send."""
    from airflow_provider_care360.exceptions import (
        Care360AmbiguousError,
        Care360BadRequestError,
        Outcome,
    )

    same = journal is not None and prior.get("fingerprint") == journal.fingerprint
    if prior["state"] == "sending" and not op.retry_on_ambiguous:
        raise Care360AmbiguousError(
            f"Try {prior.get('try')} of this task sent the booking and ended without recording "
            "Care360's answer (its worker was killed or lost its heartbeat). The booking may or "
            "may not exist, so this try sends nothing. Check the calendar for this invitee before "
            "clearing the task, or use check_existing=True (the default) to let the provider look."
        )
    if prior["state"] == "done" and prior.get("outcome") == Outcome.BOOKED.value:
        if not same:
            raise Care360BadRequestError(
                f"Try {prior.get('try')} of this task already booked an appointment with other "
                "booking fields than this try's. Nothing was sent: a task books once; clear the "
                "task to book the new fields."
            )
        op.log.info("Try %s of this task booked this appointment: nothing was sent", prior.get("try"))
        record.update(
            outcome=Outcome.BOOKED.value,
            message=f"Booked by try {prior.get('try')} of this task; nothing was sent again.",
        )


def _settle(
    op: ScheduleAppointmentOperator,
    error: Care360Error,
    payload: dict[str, Any],
    journal: BookingJournal | None,
    record: dict[str, Any],
    context: Context,
) -> None:
    """After an unclear answer, look the invitee up: booked, or safe to book again."""
    import time

    from airflow_provider_care360.exceptions import (
        Care360AmbiguousRetryableError,
        Care360Error,
        Care360NotSentError,
        Outcome,
    )

    unclear = error.message.split(". ")[0]
    op.log.warning(
        "No clear answer from Care360 (%s); looking the invitee up in %.1f s to settle it",
        unclear,
        op.settle_delay,
    )
    time.sleep(op.settle_delay)
    details: dict[str, Any] = {"http_status": error.http_status, "response": error.response}
    try:
        found = op.hook.find_appointment_at(email=payload["email"], start_time=payload["startTime"])
    except Care360Error as lookup_error:
        if journal:
            journal.done(Outcome.AMBIGUOUS.value)
        raise Care360AmbiguousRetryableError(
            f"{unclear}. The lookup that would settle whether the booking exists failed too "
            f"({lookup_error.message.split('. ')[0]}). Running the task again is safe: every try "
            "looks the invitee up before it books.",
            **details,
        ) from None
    if found is not None:
        op.log.info("%s. The lookup shows the appointment exists: booked once.", unclear)
        record.update(
            outcome=Outcome.BOOKED.value,
            http_status=error.http_status,
            response=error.response,
            appointment=found,
            message=f"{unclear}. The lookup shows the appointment exists: booked once.",
        )
        return
    if journal:
        journal.done(Outcome.NOT_SENT.value)
    ti = context["ti"]
    tries_left = getattr(ti, "try_number", 0) <= getattr(ti, "max_tries", 0)
    raise Care360NotSentError(
        f"{unclear}. The lookup shows the booking does not exist: nothing was booked, and the task "
        "is safe to run again" + ("; Airflow will retry it." if tries_left else " (it has no retries left)."),
        **details,
    ) from None
