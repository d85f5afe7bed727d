"""Operators for the Care360 API."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperator

from airflow_provider_care360._contract import BOOKING_FIELDS
from airflow_provider_care360.retry import RETRY_POLICIES_SUPPORTED, Care360RetryPolicy

#: The policy a task gets when neither it nor its DAG's ``default_args`` names one (Airflow >= 3.3).
#: Declared as the ``retry_policy`` default of ``__init__``, so Airflow applies ``default_args`` and
#: ``partial()`` to it as to any argument.
DEFAULT_RETRY_POLICY: Any = Care360RetryPolicy() if RETRY_POLICIES_SUPPORTED else None

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

    from airflow_provider_care360._journal import BookingJournal
    from airflow_provider_care360.exceptions import Care360Error
    from airflow_provider_care360.hooks.care360 import Care360Hook, Timeout

# The hook, validation and response handling are imported in execute(): a scheduler parsing a DAG
# file that uses this operator only pays for what building the task needs.

__all__ = ["ScheduleAppointmentOperator"]


class ScheduleAppointmentOperator(BaseOperator):
    """
    Book one Care360 appointment for one invitee, exactly once.

    All booking fields are validated before any request is sent; a bad field fails the task at
    once, naming the field. Then, by default, the operator looks the invitee up
    (``GET /api/v1/calendar/appointments``) and, when an appointment already starts at the requested
    instant, succeeds without sending anything: a retry after a killed worker, a cleared task and a
    second run of the same row all end with one booking. A rejected booking (400, 401) fails at
    once; a rate-limited one (429) is retried by Airflow's own task retries. A request that got no
    clear answer (read timeout, reset, 500/502/504) is settled by a lookup ``settle_delay`` later:
    the task succeeds if the booking exists, and otherwise fails saying nothing was booked (and
    Airflow retries it, if it has retries left).

    Every try pushes an outcome record to XCom under the key ``care360_outcome`` (see
    :mod:`airflow_provider_care360.outcomes`), also when it fails.

    :param event_type_id: id of the Calendly event type. (templated)
    :param start_time: start of the appointment: an ISO 8601 string or a ``datetime``. An aware
        value is sent as UTC; a naive value is read in the invitee's ``timezone``. (templated)
    :param invitee_email: the invitee's email address (BaseOperator's own ``email`` stays the
        list of alert recipients). (templated)
    :param timezone: the invitee's IANA time zone, e.g. ``America/New_York``. (templated)
    :param location: one of ``google_conference``, ``zoom_conference``,
        ``gotomeeting_conference``, ``microsoft_teams_conference``, ``webex_conference``.
        (templated)
    :param first_name: the invitee's first name, optional. (templated)
    :param last_name: the invitee's last name, optional. (templated)
    :param tracking: UTM and correlation metadata: a dict with any of ``utmCampaign``,
        ``utmSource``, ``utmMedium``, ``utmContent``, ``utmTerm``, ``salesforceUuid`` (or their
        snake_case twins), values string or ``None``. (templated)
    :param care360_conn_id: the Airflow connection to use. (templated)
    :param request_timeout: request timeout in seconds (one number or ``(connect, read)``);
        overrides the connection's ``extra.timeout``.
    :param check_existing: look the invitee up before booking, and settle unclear answers with a
        lookup (default ``True``). ``False`` sends one booking request per try and no lookup; on
        Airflow >= 3.3 a try that finds an earlier try's request unanswered (its worker was killed)
        fails as ambiguous instead of sending again.
    :param settle_delay: how long to wait, after an unclear answer, before the lookup that settles
        it (default 5 s), since a new booking may show in lookups a little after it was made.
    :param retry_on_ambiguous: only with ``check_existing=False``: retry, like a request that was
        never sent, when the outcome is unknown. Off by default, because such a retry may book the
        invitee twice. With ``check_existing=True`` an unclear outcome is settled by the lookup
        and this has no effect.
    :param retry_policy: on Airflow >= 3.3, defaults to
        :class:`~airflow_provider_care360.retry.Care360RetryPolicy` (a 429 waits what the API asked);
        a policy passed here or in ``default_args`` replaces it, and ``None`` switches it off.
    :return: the outcome record (pushed to XCom as ``return_value``).
    """

    template_fields: Sequence[str] = (*BOOKING_FIELDS, "care360_conn_id")
    template_fields_renderers = {"tracking": "json"}
    ui_color = "#e3f2fd"

    def __init__(
        self,
        *,
        event_type_id: str,
        start_time: str | datetime,
        invitee_email: str,
        timezone: str,
        location: str,
        first_name: str | None = None,
        last_name: str | None = None,
        tracking: dict[str, str | None] | str | None = None,
        care360_conn_id: str = "care360_default",
        request_timeout: Timeout | None = None,
        check_existing: bool = True,
        settle_delay: timedelta | float = timedelta(seconds=5),
        retry_on_ambiguous: bool = False,
        retry_policy: Any = DEFAULT_RETRY_POLICY,
        **kwargs: Any,
    ) -> None:
        if RETRY_POLICIES_SUPPORTED or retry_policy is not None:
            kwargs["retry_policy"] = retry_policy  # before 3.3 Airflow refuses it, as for any operator
        super().__init__(**kwargs)
        self.event_type_id = event_type_id
        self.start_time = start_time
        self.invitee_email = invitee_email
        self.timezone = timezone
        self.location = location
        self.first_name = first_name
        self.last_name = last_name
        self.tracking = tracking
        self.care360_conn_id = care360_conn_id
        self.request_timeout = request_timeout
        self.check_existing = check_existing
        delay = settle_delay.total_seconds() if isinstance(settle_delay, timedelta) else float(settle_delay)
        if not 0 <= delay <= 300:
            raise ValueError(f"settle_delay must be between 0 and 300 seconds, got {settle_delay!r}")
        self.settle_delay = delay
        if retry_on_ambiguous and check_existing:
            warnings.warn(
                "retry_on_ambiguous has no effect with check_existing=True: an unclear outcome is "
                "settled by a lookup, and every try looks before it books.",
                UserWarning,
                stacklevel=2,
            )
        self.retry_on_ambiguous = retry_on_ambiguous

    @cached_property
    def hook(self) -> Care360Hook:
        from airflow_provider_care360.hooks.care360 import Care360Hook

        return Care360Hook(care360_conn_id=self.care360_conn_id, timeout=self.request_timeout)

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_care360.exceptions import Care360Error, Outcome
        from airflow_provider_care360.outcomes import OUTCOME_KEY, outcome_record

        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        record = outcome_record(
            event_type_id=self.event_type_id,
            start_time=self.start_time,
            email=self.invitee_email,
            map_index=map_index if isinstance(map_index, int) else -1,
            try_number=getattr(ti, "try_number", None),
        )
        self._sent = False
        try:
            self._book(context, record)
        except Care360Error as exc:
            record["outcome"] = record["outcome"] or exc.outcome.value
            record["http_status"] = record["http_status"] or exc.http_status
            record["message"] = record["message"] or exc.message
            record["response"] = record["response"] or exc.response
            self._push_outcome(ti, OUTCOME_KEY, record)
            raise
        except Exception as exc:
            # Not an answer from Care360 (e.g. the task state store failed): say whether the
            # booking request had already left.
            outcome = Outcome.AMBIGUOUS if self._sent else Outcome.NOT_SENT
            record["outcome"] = record["outcome"] or outcome.value
            record["message"] = record["message"] or (
                f"The task failed with {type(exc).__name__} "
                + ("after the booking request was sent." if self._sent else "before any booking was sent.")
            )
            self._push_outcome(ti, OUTCOME_KEY, record)
            raise
        finally:
            self.hook.close()
        self._push_outcome(ti, OUTCOME_KEY, record)
        return record

    def _push_outcome(self, ti: Any, key: str, record: dict[str, Any]) -> None:
        try:
            ti.xcom_push(key=key, value=record)
        except Exception:  # never let the record hide the task's own result or error
            self.log.warning("Could not push the %s record to XCom", key, exc_info=True)

    def _book(self, context: Context, record: dict[str, Any]) -> None:
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
            event_type_id=self.event_type_id,
            start_time=self.start_time,
            email=self.invitee_email,
            timezone=self.timezone,
            location=self.location,
            first_name=self.first_name,
            last_name=self.last_name,
            tracking=self.tracking,
        )
        record.update(
            event_type_id=payload["eventTypeId"], start_time=payload["startTime"], email=payload["email"]
        )
        who = mask_email(payload["email"])
        what = f"event type {payload['eventTypeId']} at {payload['startTime']} for {who}"
        journal = BookingJournal.from_context(context, payload)
        prior = journal.prior() if journal else None

        if self.check_existing:
            if prior and prior["state"] == "sending":
                self._wait_for_earlier_try(prior)
            existing = self.hook.find_appointment_at(email=payload["email"], start_time=payload["startTime"])
            if existing is not None:
                self.log.info("Care360 already has %s: nothing was sent", what)
                record.update(
                    outcome=Outcome.ALREADY_BOOKED.value,
                    appointment=existing,
                    message="The appointment already exists at this start: nothing was sent.",
                )
                return
        elif prior is not None:
            self._replay_earlier_try(prior, journal, record)
            if record["outcome"]:
                return

        self.log.info("Booking Care360 %s", what)
        if journal:
            connect, read = self.hook.settings.timeout
            journal.sending(window=connect + read)
        self._sent = True
        try:
            response = self.hook.send_booking(payload)
        except Care360Error as exc:
            if exc.outcome is Outcome.AMBIGUOUS and self.check_existing:
                self._settle(exc, payload, journal, record, context)
                return
            if journal:
                journal.done(exc.outcome.value)
            if isinstance(exc, Care360AmbiguousError) and self.retry_on_ambiguous:
                raise Care360AmbiguousRetryableError(
                    f"{exc.message.split('. ')[0]}. The booking may or may not exist; "
                    "retry_on_ambiguous=True: Airflow will retry, which may book the invitee twice.",
                    http_status=exc.http_status,
                    api_message=exc.api_message,
                    api_error=exc.api_error,
                    response=exc.response,
                ) from None
            raise
        if journal and not self.check_existing:
            # Only check_existing=False replays a recorded booking. With the lookup, a success needs
            # no entry: no later try follows it short of a clear, which empties the store, and a later
            # try would look first anyway (one call to the store saved per booking).
            journal.done(Outcome.BOOKED.value)
        self.log.info("Booked Care360 %s", what)
        record.update(
            outcome=Outcome.BOOKED.value,
            http_status=200,
            response=response,
            message="Booked: Care360 answered 200 with success=true.",
        )

    def _wait_for_earlier_try(self, prior: dict[str, Any]) -> None:
        """An earlier try sent the booking and never recorded an answer: let its request end first."""
        import time

        sent_at, window = prior.get("sent_at"), prior.get("window")
        if not isinstance(sent_at, (int, float)) or not isinstance(window, (int, float)):
            return
        remaining = min(sent_at + window + self.settle_delay - time.time(), window + self.settle_delay)
        if remaining > 0:
            self.log.warning(
                "Try %s of this task sent the booking and recorded no answer; its request may still be "
                "waiting. Waiting %.1f s for it to end before looking the invitee up.",
                prior.get("try"),
                remaining,
            )
            time.sleep(remaining)

    def _replay_earlier_try(
        self, prior: dict[str, Any], journal: BookingJournal | None, record: dict[str, Any]
    ) -> None:
        """``check_existing=False``: decide from the journal alone whether this try may send."""
        from airflow_provider_care360.exceptions import (
            Care360AmbiguousError,
            Care360BadRequestError,
            Outcome,
        )

        same = journal is not None and prior.get("fingerprint") == journal.fingerprint
        if prior["state"] == "sending" and not self.retry_on_ambiguous:
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
            self.log.info("Try %s of this task booked this appointment: nothing was sent", prior.get("try"))
            record.update(
                outcome=Outcome.BOOKED.value,
                message=f"Booked by try {prior.get('try')} of this task; nothing was sent again.",
            )

    def _settle(
        self,
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
        self.log.warning(
            "No clear answer from Care360 (%s); looking the invitee up in %.1f s to settle it",
            unclear,
            self.settle_delay,
        )
        time.sleep(self.settle_delay)
        details: dict[str, Any] = {"http_status": error.http_status, "response": error.response}
        try:
            found = self.hook.find_appointment_at(email=payload["email"], start_time=payload["startTime"])
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
            self.log.info("%s. The lookup shows the appointment exists: booked once.", unclear)
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
            "is safe to run again"
            + ("; Airflow will retry it." if tries_left else " (it has no retries left)."),
            **details,
        ) from None
