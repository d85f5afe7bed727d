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
        from airflow_provider_care360._booking import book

        self._sent = False
        try:
            book(self, context, record)
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
