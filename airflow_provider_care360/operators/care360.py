"""Operators for the Care360 API."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from datetime import UTC as _UTC
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.providers.common.compat.sdk import BaseOperator

from airflow_provider_care360._contract import BOOKING_FIELDS, PERSONAL_FIELDS, RECORD_EMAIL_MODES
from airflow_provider_care360._pii import mask_email, mask_name
from airflow_provider_care360.retry import RETRY_POLICIES_SUPPORTED, Care360RetryPolicy

#: The policy a task gets when neither it nor its DAG's ``default_args`` names one (Airflow >= 3.3).
#: Declared as the ``retry_policy`` default of ``__init__``, so Airflow applies ``default_args`` and
#: ``partial()`` to it as to any argument.
DEFAULT_RETRY_POLICY: Any = Care360RetryPolicy() if RETRY_POLICIES_SUPPORTED else None

if TYPE_CHECKING:
    import jinja2
    from airflow.providers.common.compat.sdk import Context

    from airflow_provider_care360.booking.engine import BookingEngine
    from airflow_provider_care360.hooks.care360 import Care360Hook, Timeout

# The hook, validation and response handling are imported in execute(): a scheduler parsing a DAG
# file that uses this operator only pays for what building the task needs.

__all__ = ["OUTCOMES_KEY", "BatchScheduleAppointmentOperator", "ScheduleAppointmentOperator"]


class _PersonalFieldsOutOfRendering:
    """
    Keeps the personal fields of a booking operator out of Airflow's rendered fields.

    Every rendering passes through ``_do_render_template_fields``, plain and mapped tasks alike (a
    mapped task renders its unmapped operator through it: airflow/sdk/definitions/mappedoperator.py).
    Airflow stores the rendered attributes right after rendering (rendered_task_instance_fields,
    shown under Rendered Templates): the real values are kept for the request, and masked ones left
    on the attributes Airflow reads.
    """

    #: The template fields that carry personal data.
    personal_fields: ClassVar[tuple[str, ...]] = ()

    def _do_render_template_fields(
        self,
        parent: Any,
        template_fields: Any,
        context: Context,
        jinja_env: jinja2.Environment,
        seen_oids: set[int],
    ) -> None:
        super()._do_render_template_fields(  # type: ignore[misc]
            parent, template_fields, context, jinja_env, seen_oids
        )
        if parent is self and "_personal" not in self.__dict__:
            # Once: Airflow 2.11's dag.test() renders the already rendered (masked) copy again.
            self._personal = {name: getattr(self, name) for name in self.personal_fields}
            for name, value in self._personal.items():
                object.__setattr__(self, name, _masked(name, value))

    def _field(self, name: str) -> Any:
        """A booking field as rendered: the real value of a personal field, not its masked form."""
        personal: dict[str, Any] = getattr(self, "_personal", {})
        return personal[name] if name in personal else getattr(self, name)


class ScheduleAppointmentOperator(_PersonalFieldsOutOfRendering, BaseOperator):
    """
    Book one Care360 appointment for one invitee, exactly once.

    All booking fields are validated before any request is sent; a bad field fails the task at
    once, naming the field. Then, by default, the operator looks the invitee up
    (``GET /api/v1/calendar/appointments``) and, when an appointment already starts at the requested
    instant, succeeds without sending anything: a retry after a killed worker, a cleared task and a
    second run of the same row all end with one booking. A rejected booking (400, 401) fails at
    once; a rate-limited one (429) is retried by Airflow's own task retries. A request that got no
    clear answer (read timeout, reset, 500/502/504) is settled by a lookup ``settle_delay`` later:
    the task succeeds if the booking exists. If the lookup does not show it yet, Care360 may still
    apply it: the try fails as ``ambiguous`` and nothing is sent again until ``apply_window`` after
    the unclear answer; the next try (a retry, or a run after a clear) waits for that, looks again,
    and books only if the appointment is still missing.

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
    :param row_key: your own id of the row (a CRM or warehouse key), carried by the outcome record so a
        write-back joins on it. Not sent to Care360. (templated)
    :param record_email: how the outcome record carries the invitee's email: ``"masked"`` (default,
        ``j***@e***.com``) or ``"raw"`` (the address as sent, for a write-back that joins on it; it
        then sits in Airflow's XCom table).
    :param care360_conn_id: the Airflow connection to use. (templated)
    :param request_timeout: request timeout in seconds (one number or ``(connect, read)``);
        overrides the connection's ``extra.timeout``.
    :param check_existing: look the invitee up before booking, and settle unclear answers with a
        lookup (default ``True``). ``False`` sends one booking request per try and no lookup; on
        Airflow >= 3.3 a try that finds an earlier try's request unanswered (its worker was killed)
        fails as ambiguous instead of sending again.
    :param settle_delay: how long to wait, after an unclear answer, before the lookup that settles
        it (default 5 s), since a new booking may show in lookups a little after it was made.
    :param apply_window: how long after an unclear answer Care360 may still apply the request and
        show it in lookups (default 60 s): until then the booking is never sent again. A try that
        finds an earlier try's request in flight waits for the window's end before it looks again.
    :param verify_booking: after booking, look once more; a second appointment for the invitee at
        the same start (two runs of the same row at once) is cancelled, the later created one, and
        the record lists it under ``cancelled``. One more lookup per booking; off by default.
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
    personal_fields = PERSONAL_FIELDS
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
        row_key: Any = None,
        record_email: str = "masked",
        care360_conn_id: str = "care360_default",
        request_timeout: Timeout | None = None,
        check_existing: bool = True,
        settle_delay: timedelta | float = timedelta(seconds=5),
        apply_window: timedelta | float = timedelta(seconds=60),
        verify_booking: bool = False,
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
        self.row_key = row_key
        if record_email not in RECORD_EMAIL_MODES:
            raise ValueError(
                f"record_email must be one of {', '.join(RECORD_EMAIL_MODES)}, got {record_email!r}"
            )
        self.record_email = record_email
        self.care360_conn_id = care360_conn_id
        self.request_timeout = request_timeout
        self.check_existing = check_existing
        delay = settle_delay.total_seconds() if isinstance(settle_delay, timedelta) else float(settle_delay)
        if not 0 <= delay <= 300:
            raise ValueError(f"settle_delay must be between 0 and 300 seconds, got {settle_delay!r}")
        self.settle_delay = delay
        window = apply_window.total_seconds() if isinstance(apply_window, timedelta) else float(apply_window)
        if not 0 <= window <= 3600:
            raise ValueError(f"apply_window must be between 0 and 3600 seconds, got {apply_window!r}")
        self.apply_window = window
        if verify_booking and not check_existing:
            raise ValueError("verify_booking needs check_existing=True: it checks with the lookup")
        self.verify_booking = verify_booking
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
        from airflow_provider_care360.outcomes import OUTCOME_KEY, appointment_summary, outcome_record

        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        record = outcome_record(
            event_type_id=self.event_type_id,
            start_time=self.start_time,
            email=self._recorded_email(self._field("invitee_email")),
            row_key=self.row_key,
            map_index=map_index if isinstance(map_index, int) else -1,
            try_number=getattr(ti, "try_number", None),
        )
        engine: BookingEngine | None = None
        try:
            engine = self._engine(context, record)
            result = engine.run()
        except BaseException as exc:  # a timeout (AirflowTaskTimeout) is recorded too, then re-raised
            _record_failure(
                record,
                exc,
                sent=engine is not None and engine.sent,
                then=_after_unclear(self.check_existing, context.get("task_state_store") is not None),
            )
            self._push_outcome(ti, OUTCOME_KEY, record)
            raise
        finally:
            self.hook.close()
        record.update(
            outcome=result.outcome.value,
            http_status=result.http_status,
            response=result.response,
            appointment=appointment_summary(result.appointment),
            message=result.message,
            cancelled=result.cancelled,
        )
        return record  # pushed once, as the return value; a failed try pushes it under OUTCOME_KEY

    def _recorded_email(self, email: Any) -> Any:
        return email if self.record_email == "raw" or not isinstance(email, str) else mask_email(email)

    def _engine(self, context: Context, record: dict[str, Any]) -> BookingEngine:
        """Validate the fields and build the engine with this try's journal."""
        from airflow_provider_care360._responses import parse_instant
        from airflow_provider_care360.booking.engine import BookingEngine, BookingOptions
        from airflow_provider_care360.booking.journal import BookingJournal, attempt_of, fingerprint
        from airflow_provider_care360.exceptions import Care360ValidationError
        from airflow_provider_care360.validation import build_booking_payload, past_start_problem

        fields: dict[str, Any] = {
            "event_type_id": self.event_type_id,
            "start_time": self.start_time,
            "email": self._field("invitee_email"),
            "timezone": self.timezone,
            "location": self.location,
            "first_name": self._field("first_name"),
            "last_name": self._field("last_name"),
            "tracking": self._field("tracking"),
        }
        try:
            # A past start is checked below: a retry may first have to look for an earlier try's booking.
            payload = build_booking_payload(**fields, require_future=False)
        except Care360ValidationError:
            build_booking_payload(**fields)  # raises, listing every problem (a past start too)
            raise
        record.update(
            event_type_id=payload["eventTypeId"],
            start_time=payload["startTime"],
            email=self._recorded_email(payload["email"]),
        )
        start = parse_instant(payload["startTime"])
        problem = past_start_problem(start) if start is not None else None
        ti = context["ti"]
        try_number, max_tries = getattr(ti, "try_number", None), getattr(ti, "max_tries", None)
        store = context.get("task_state_store")
        journal = None
        if store is not None:
            journal = BookingJournal(
                store,
                fingerprint=fingerprint(payload, self.hook.settings.api_key),
                try_number=try_number,
                attempt=attempt_of(max_tries),
            )
        tries_left = isinstance(try_number, int) and isinstance(max_tries, int) and try_number <= max_tries
        options = BookingOptions(
            check_existing=self.check_existing,
            settle_delay=self.settle_delay,
            apply_window=self.apply_window,
            retry_on_ambiguous=self.retry_on_ambiguous,
            verify_booking=self.verify_booking,
            tries_left=tries_left,
        )
        return BookingEngine(
            self.hook,
            payload,
            options,
            journal,
            self.log,
            past_start=Care360ValidationError([problem]) if problem else None,
            should_stop=lambda: getattr(self, "_stopping", False),
        )

    def on_kill(self) -> None:
        # Airflow calls this on SIGTERM (a mark-success, mark-failed or clear of a running task) and
        # gives the task a few seconds before SIGKILL: send nothing more meanwhile.
        self._stopping = True

    def _push_outcome(self, ti: Any, key: str, record: dict[str, Any]) -> None:
        try:
            ti.xcom_push(key=key, value=record)
        except Exception:  # never let the record hide the task's own result or error
            self.log.warning("Could not push the %s record to XCom", key, exc_info=True)


def _after_unclear(check_existing: bool, journal: bool) -> str:
    """What happens after a try ended without knowing whether its booking request was applied."""
    if not check_existing:
        return (
            "Check the calendar for this invitee: a retry sends nothing (check_existing=False), and "
            "clearing the task sends the booking again."
        )
    if journal:
        return (
            "Running it again is safe: the next try waits out the apply window, looks first, and books "
            "only if the appointment is missing."
        )
    return (
        "The next try looks the invitee up before it books; a request Care360 applies after that may "
        "book twice (Airflow < 3.3 keeps no journal)."
    )


def _record_failure(record: dict[str, Any], exc: BaseException, *, sent: bool, then: str) -> None:
    """Fill the record of a try that raised: from a Care360 error, or from what was sent."""
    from airflow_provider_care360.exceptions import Care360Error
    from airflow_provider_care360.outcomes import Outcome

    if isinstance(exc, Care360Error):
        record.update(
            outcome=exc.outcome.value,
            http_status=exc.http_status,
            message=exc.message,
            response=exc.response,
        )
        return
    # Not an answer from Care360: a timeout, a termination, a failed journal write. Say whether the
    # booking request had already left.
    outcome = Outcome.AMBIGUOUS if sent else Outcome.NOT_SENT
    record["outcome"] = outcome.value
    record["message"] = (
        f"The try ended with {type(exc).__name__} after the booking request was sent: the booking may or "
        f"may not exist. {then}"
        if sent
        else f"The try ended with {type(exc).__name__} before any booking was sent."
    )


def _masked(name: str, value: Any) -> Any:
    """The form of a personal field that Airflow may store and show: masked, its shape kept."""
    if value is None or value == "":
        return value
    if name == "rows":
        count = len(value) if isinstance(value, (list, tuple)) else "?"
        return f"<{count} rows: not shown, they hold personal data>"
    if name == "invitee_email":
        return mask_email(value)
    if name == "tracking":
        if isinstance(value, dict):
            return {key: None if item is None else "***" for key, item in value.items()}
        return "***"
    return mask_name(value)


#: The XCom key of a batch task's records, one per row, pushed on every try.
OUTCOMES_KEY = "care360_outcomes"
#: Where a batch deferring without a journal keeps the keyed fingerprints of its settled rows.
RESUME_KEY = "care360_batch_resume"
_COMMON_FIELDS = (
    "event_type_id",
    "start_time",
    "timezone",
    "location",
    "first_name",
    "last_name",
    "tracking",
)


def _default_deferrable() -> bool:
    from airflow.configuration import conf

    return conf.getboolean("operators", "default_deferrable", fallback=False)


class BatchScheduleAppointmentOperator(_PersonalFieldsOutOfRendering, BaseOperator):
    """
    Book many rows in one task, each exactly once, at the API's own pace.

    Every row goes through the same booking engine as :class:`ScheduleAppointmentOperator` (look
    first, send once, settle unclear answers, the journal), ``concurrency`` rows at a time, all
    sharing one rate-limit state: a 429 pauses the whole batch until the time Care360 named. A wait
    up to ``max_sleep`` is slept in the task; a longer one (a daily quota) defers the task to the
    triggerer until then (``deferrable=True``) and resumes where it stopped, or, with
    ``deferrable=False``, ends the try with the rows left ``throttled`` for the retry to book. The
    trigger only waits: only the task books.

    Every try pushes one record per row under ``care360_outcomes`` (the single operator's record plus
    ``row``, the row's index in ``rows``), also when it fails, and returns the summary
    :func:`~airflow_provider_care360.outcomes.summarize_outcomes` builds. The task succeeds when
    every row has an outcome running again cannot change (booked, already booked, duplicate,
    rejected), and fails, so Airflow retries it, when any row is throttled, not sent or ambiguous; a
    retry books only those rows (on Airflow >= 3.3 the journal in ``task_state_store`` tells which
    rows are settled; earlier, every row is looked up again).

    :param rows: the rows, as :func:`~airflow_provider_care360.rows.prepare_bookings` takes them
        (booking fields, ``email`` or ``invitee_email``, optional ``row_key``). (templated)
    :param event_type_id: the booking fields common to every row (``event_type_id``, ``start_time``,
        ``timezone``, ``location``, ``first_name``, ``last_name``, ``tracking``), each optional where
        the rows carry it; a row may not set a field also given here. (templated)
    :param concurrency: requests in flight at once (default 4).
    :param max_rate: ``(n, seconds)``, e.g. ``(500, 60)``: send at most ``n`` bookings in any
        ``seconds`` (each counted from its send, the window 50 ms longer for the trip), so a known
        limit is never hit and no 429 is spent: set it to the limit. Default: no pacing.
    :param max_sleep: the longest wait slept in the task (default 60 s); a longer one defers or ends
        the try.
    :param deferrable: defer through long waits (default ``[operators] default_deferrable``).
    :param fail_on_rejected: fail the task (without retrying) after every row is done when any row was
        rejected (default ``False``: rejected rows are reported in the summary).
    :param record_email: ``"masked"`` (default) or ``"raw"``, as on the single operator.
    :param care360_conn_id: as on the single operator. (templated)
    :param request_timeout: as on the single operator.
    :param settle_delay: as on the single operator.
    :param apply_window: as on the single operator.
    """

    template_fields: Sequence[str] = ("rows", *_COMMON_FIELDS, "care360_conn_id")
    personal_fields = ("rows", "first_name", "last_name", "tracking")
    template_fields_renderers = {"tracking": "json"}
    ui_color = "#bbdefb"

    def __init__(
        self,
        *,
        rows: Any,
        event_type_id: str | None = None,
        start_time: str | datetime | None = None,
        timezone: str | None = None,
        location: str | None = None,
        first_name: str | None = None,
        last_name: str | None = None,
        tracking: dict[str, str | None] | str | None = None,
        care360_conn_id: str = "care360_default",
        request_timeout: Timeout | None = None,
        settle_delay: timedelta | float = timedelta(seconds=5),
        apply_window: timedelta | float = timedelta(seconds=60),
        concurrency: int = 4,
        max_rate: tuple[int, float] | None = None,
        max_sleep: timedelta | float = timedelta(seconds=60),
        deferrable: bool | None = None,
        fail_on_rejected: bool = False,
        record_email: str = "masked",
        retry_policy: Any = DEFAULT_RETRY_POLICY,
        **kwargs: Any,
    ) -> None:
        if RETRY_POLICIES_SUPPORTED or retry_policy is not None:
            kwargs["retry_policy"] = retry_policy
        super().__init__(**kwargs)
        self.rows = rows
        self.event_type_id = event_type_id
        self.start_time = start_time
        self.timezone = timezone
        self.location = location
        self.first_name = first_name
        self.last_name = last_name
        self.tracking = tracking
        self.care360_conn_id = care360_conn_id
        self.request_timeout = request_timeout
        self.settle_delay = _seconds_between(settle_delay, "settle_delay", 0, 300)
        self.apply_window = _seconds_between(apply_window, "apply_window", 0, 3600)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= 64:
            raise ValueError(f"concurrency must be a whole number from 1 to 64, got {concurrency!r}")
        self.concurrency = concurrency
        if max_rate is not None:
            try:
                n, per = max_rate
                valid = isinstance(n, int) and not isinstance(n, bool) and n >= 1 and float(per) > 0
            except (TypeError, ValueError):
                valid = False
            if not valid:
                raise ValueError(f"max_rate must be (bookings, seconds) such as (500, 60), got {max_rate!r}")
            max_rate = (int(n), float(per))
        self.max_rate = max_rate
        self.max_sleep = _seconds_between(max_sleep, "max_sleep", 0, 86400)
        self.deferrable = _default_deferrable() if deferrable is None else deferrable
        self.fail_on_rejected = fail_on_rejected
        if record_email not in RECORD_EMAIL_MODES:
            raise ValueError(
                f"record_email must be one of {', '.join(RECORD_EMAIL_MODES)}, got {record_email!r}"
            )
        self.record_email = record_email

    def on_kill(self) -> None:
        # Airflow calls this on SIGTERM and gives the task a few seconds: start no booking more.
        self.__dict__["_killed"] = True  # also when the run has not made its stop event yet
        stop = self.__dict__.get("_stop")
        if stop is not None:
            stop.set()

    def execute(self, context: Context) -> dict[str, Any]:
        return self._run(context, resumed=False)

    def execute_complete(self, context: Context, event: Any = None) -> dict[str, Any]:
        """Back from the triggerer after a long wait: book the rows left."""
        return self._run(context, resumed=True)

    def _run(self, context: Context, *, resumed: bool) -> dict[str, Any]:
        from airflow_provider_care360._responses import parse_instant
        from airflow_provider_care360.booking.batch import FINAL, BatchJournal, Row, RowResult, run_batch
        from airflow_provider_care360.booking.engine import BookingOptions
        from airflow_provider_care360.booking.journal import attempt_of, fingerprint
        from airflow_provider_care360.exceptions import (
            Care360AmbiguousRetryableError,
            Care360BadRequestError,
            Care360NotSentError,
            Care360RateLimitError,
            Care360ValidationError,
        )
        from airflow_provider_care360.hooks.care360 import Care360Hook
        from airflow_provider_care360.outcomes import (
            Outcome,
            appointment_summary,
            outcome_record,
            summarize_outcomes,
        )
        from airflow_provider_care360.rows import payload_of, prepare_indexed
        from airflow_provider_care360.validation import past_start_problem

        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        map_index = map_index if isinstance(map_index, int) else -1
        try_number, max_tries = getattr(ti, "try_number", None), getattr(ti, "max_tries", None)
        raw_rows = self._field("rows")
        if isinstance(raw_rows, (str, bytes)) or not hasattr(raw_rows, "__iter__"):
            raise Care360ValidationError(
                [f"rows: a {type(raw_rows).__name__} is not allowed; allowed: a list of rows"]
            )
        rows_list = list(raw_rows)
        fixed = {name: self._field(name) for name in _COMMON_FIELDS if self._field(name) not in (None, "")}
        good, set_aside = prepare_indexed(
            rows_list, fixed=fixed, record_email=self.record_email, require_future=False
        )
        for record in set_aside:
            record["map_index"] = map_index
            record["try_number"] = try_number
        batch_rows: list[Row] = []
        records: dict[int, dict[str, Any]] = {r["row"]: r for r in set_aside}
        raw = self.record_email == "raw"
        for index, kwargs in good:
            merged = {**fixed, **kwargs}
            payload = payload_of(merged, require_future=False)
            start = parse_instant(payload["startTime"])
            problem = past_start_problem(start) if start is not None else None
            batch_rows.append(Row(index, payload, Care360ValidationError([problem]) if problem else None))
            record = outcome_record(
                event_type_id=payload["eventTypeId"],
                start_time=payload["startTime"],
                email=payload["email"] if raw else mask_email(payload["email"]),
                row_key=merged.get("row_key"),
                map_index=map_index,
                try_number=try_number,
            )
            record["row"] = index
            records[index] = record

        store = context.get("task_state_store")
        first = Care360Hook(care360_conn_id=self.care360_conn_id, timeout=self.request_timeout)
        settings = first.settings  # read the connection once, on this thread
        # Back from a deferral, this try's XComs are kept (Airflow clears them only when a try
        # starts): without a journal (Airflow < 3.3), the rows settled before the wait, by their
        # keyed fingerprints (RESUME_KEY), are not looked up again. With a journal, the journal decides.
        final = {o.value for o in FINAL}
        earlier: set[int] = set()
        if resumed and store is None:
            pulled = ti.xcom_pull(task_ids=self.task_id, key=RESUME_KEY, map_indexes=map_index)
            settled_fps = pulled if isinstance(pulled, dict) else {}
            outcomes = ti.xcom_pull(task_ids=self.task_id, key=OUTCOMES_KEY, map_indexes=map_index)
            by_row = {i.get("row"): i for i in outcomes or [] if isinstance(i, dict)}
            for r in batch_rows:
                item = by_row.get(r.index)
                same = settled_fps.get(str(r.index)) == fingerprint(r.payload, settings.api_key)
                if same and item is not None and item.get("outcome") in final:
                    earlier.add(r.index)
                    records[r.index] = {**item, "try_number": try_number}
        todo = [r for r in batch_rows if r.index not in earlier]

        journal = None
        if store is not None:
            journal = BatchJournal(
                store, try_number=try_number, attempt=attempt_of(max_tries), key=settings.api_key
            )
        options = BookingOptions(
            check_existing=True,
            settle_delay=self.settle_delay,
            apply_window=self.apply_window,
            tries_left=isinstance(try_number, int) and isinstance(max_tries, int) and try_number <= max_tries,
        )
        hooks: list[Care360Hook] = []

        def hook_for() -> Care360Hook:
            hook = Care360Hook(care360_conn_id=self.care360_conn_id, timeout=self.request_timeout)
            hook.__dict__["settings"] = settings
            hooks.append(hook)
            return hook

        self.log.info(
            "Care360 batch: %d rows (%d set aside, %d settled before), %d to book, %d at a time",
            len(rows_list),
            len(set_aside),
            len(batch_rows) - len(todo),
            len(todo),
            self.concurrency,
        )
        sink: dict[int, RowResult] = {}
        # One stop event a run: a batch that stopped for a long wait sets it, and the run that
        # resumes after the deferral may be this same operator object (dag.test() on Airflow 2 runs
        # both in one process), which must not start out stopped.
        stop = self.__dict__["_stop"] = threading.Event()
        if self.__dict__.get("_killed"):
            stop.set()
        try:
            run = run_batch(
                todo,
                hook_for=hook_for,
                options=options,
                journal=journal,
                log=self.log,
                concurrency=self.concurrency,
                max_rate=self.max_rate,
                max_sleep=self.max_sleep,
                stop=stop,
                sink=sink,
            )
        except BaseException as exc:  # a timeout: every finished row keeps its record, the rest say why
            for row in todo:
                if row.index not in sink:
                    records[row.index].update(
                        outcome=Outcome.AMBIGUOUS.value,
                        message=f"The try ended with {type(exc).__name__} while this row was in progress or "
                        "queued: its booking may have been sent. The next try looks it up first.",
                    )
            self._push_records(ti, records, list(sink.values()))
            raise
        finally:
            for hook in hooks:
                hook.close()
        results = run.results
        for result in results:
            records[result.index].update(
                outcome=result.outcome.value,
                http_status=result.http_status,
                message=result.message,
                response=result.response,
                appointment=appointment_summary(result.appointment),
                cancelled=result.cancelled,
            )
        ordered = self._push_records(ti, records, [])
        summary = summarize_outcomes(ordered)
        if run.fatal is not None:
            raise run.fatal  # a rejected key, an unusable lookup, a bad connection: fix it, run again

        left = [r for r in results if r.outcome not in FINAL]
        throttled = [r for r in left if r.outcome is Outcome.THROTTLED]
        if throttled and len(throttled) == len(left):
            wait_for = max(r.retry_after or 0.0 for r in throttled)
            if wait_for > self.max_sleep and self.deferrable:
                from airflow_provider_care360._compat import DateTimeTrigger

                resume_at = datetime.now(tz=_UTC) + timedelta(seconds=wait_for)
                self.log.info(
                    "Care360 asked to wait %.0f s: deferring %d rows until %s",
                    wait_for,
                    len(throttled),
                    resume_at,
                )
                if store is None:  # no journal: the resumed run skips the rows settled, by fingerprint
                    settled_fps = {
                        str(r.index): fingerprint(r.payload, settings.api_key)
                        for r in batch_rows
                        if records[r.index].get("outcome") in final
                    }
                    ti.xcom_push(key=RESUME_KEY, value=settled_fps)
                self.defer(trigger=DateTimeTrigger(moment=resume_at), method_name="execute_complete")
            raise Care360RateLimitError(
                f"Care360 rate limit (429): {len(throttled)} of {len(rows_list)} rows were not sent; Care360 "
                f"asked to wait {wait_for:.0f} s. Nothing was sent for them; the retry books them.",
                retry_after=wait_for,
                http_status=429,
                summary=f"{len(throttled)} rows throttled",
            )
        if left:
            counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
            ambiguous = [r for r in left if r.outcome is Outcome.AMBIGUOUS]
            message = (
                f"Care360 batch: {len(left)} of {len(rows_list)} rows are not settled yet ({counts}). "
                "The retry books only those, looking each up first."
            )
            if ambiguous:
                raise Care360AmbiguousRetryableError(
                    message, retry_after=max(r.retry_after or 0.0 for r in ambiguous), summary=message
                )
            raise Care360NotSentError(message, summary=message)
        rejected = summary["counts"].get(Outcome.REJECTED.value, 0)
        if rejected and self.fail_on_rejected:
            raise Care360BadRequestError(
                f"Care360 batch: every row is done, and {rejected} were rejected (fail_on_rejected=True); "
                "see the care360_outcomes records for why.",
                summary=f"{rejected} rows rejected",
            )
        return summary

    def _push_records(
        self, ti: Any, records: dict[int, dict[str, Any]], partial: list[Any]
    ) -> list[dict[str, Any]]:
        from airflow_provider_care360.outcomes import appointment_summary

        for result in partial:
            records[result.index].update(
                outcome=result.outcome.value, message=result.message, http_status=result.http_status
            )
            records[result.index]["appointment"] = appointment_summary(result.appointment)
        ordered = [records[i] for i in sorted(records)]
        try:
            ti.xcom_push(key=OUTCOMES_KEY, value=ordered)
        except Exception:
            self.log.warning("Could not push the %s records to XCom", OUTCOMES_KEY, exc_info=True)
        return ordered


def _seconds_between(value: timedelta | float, name: str, low: float, high: float) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not low <= seconds <= high:
        raise ValueError(f"{name} must be between {low:g} and {high:g} seconds, got {value!r}")
    return seconds
