"""Operators for the Care360 API."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperator

from airflow_provider_care360.retry import RETRY_POLICIES_SUPPORTED, Care360RetryPolicy

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

    from airflow_provider_care360.hooks.care360 import Care360Hook, Timeout

# The hook, validation and response handling are imported in execute(): a scheduler parsing a DAG
# file that uses this operator only pays for what building the task needs.

__all__ = ["ScheduleAppointmentOperator"]


class ScheduleAppointmentOperator(BaseOperator):
    """
    Book one Care360 appointment for one invitee.

    All booking fields are validated before any request is sent; a bad field fails the task at
    once, naming the field. A rejected booking (400, 401) fails at once too; a rate-limited one
    (429) is retried by Airflow's own task retries. A request that may have reached Care360 but
    got no clear answer fails at once by default, because a retry could book the invitee twice.

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
    :param retry_on_ambiguous: retry, like a request that was never sent, when the outcome is
        unknown (read timeout, connection reset after sending, 500/502/504). Off by default,
        because such a retry may book the invitee twice.
    :param retry_policy: on Airflow >= 3.3, defaults to
        :class:`~airflow_provider_care360.retry.Care360RetryPolicy` (a 429 waits what the API asked);
        a policy passed here or in ``default_args`` replaces it.
    :return: the API's JSON answer (pushed to XCom).
    """

    template_fields: Sequence[str] = (
        "event_type_id",
        "start_time",
        "invitee_email",
        "timezone",
        "location",
        "first_name",
        "last_name",
        "tracking",
        "care360_conn_id",
    )
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
        retry_on_ambiguous: bool = False,
        **kwargs: Any,
    ) -> None:
        if RETRY_POLICIES_SUPPORTED and kwargs.get("retry_policy") is None:
            kwargs["retry_policy"] = Care360RetryPolicy()
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
        self.retry_on_ambiguous = retry_on_ambiguous

    def render_template(
        self, content: Any, context: Any, jinja_env: Any = None, seen_oids: set[int] | None = None
    ) -> Any:
        # A string with no Jinja markers renders to itself: skip compiling it (mapped batches
        # pass literal values for every field). It also keeps "123" a string under
        # render_template_as_native_obj, where Jinja would turn it into an int.
        if isinstance(content, str) and not any(mark in content for mark in ("{{", "{%", "{#")):
            return content
        return super().render_template(content, context, jinja_env, seen_oids)

    @cached_property
    def hook(self) -> Care360Hook:
        from airflow_provider_care360.hooks.care360 import Care360Hook

        return Care360Hook(care360_conn_id=self.care360_conn_id, timeout=self.request_timeout)

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_care360._pii import mask_email
        from airflow_provider_care360.exceptions import (
            Care360AmbiguousError,
            Care360AmbiguousRetryableError,
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
        self.log.info(
            "Booking Care360 event type %s at %s for %s",
            payload["eventTypeId"],
            payload["startTime"],
            mask_email(payload["email"]),
        )
        try:
            result = self.hook.send_booking(payload)
        except Care360AmbiguousError as exc:
            if not self.retry_on_ambiguous:
                raise
            raise Care360AmbiguousRetryableError(
                f"{exc.message} (retry_on_ambiguous=True: Airflow will retry, which may book twice)",
                status_code=exc.status_code,
                api_message=exc.api_message,
                api_error=exc.api_error,
            ) from exc
        finally:
            self.hook.close()
        self.log.info(
            "Booked Care360 event type %s at %s for %s",
            payload["eventTypeId"],
            payload["startTime"],
            mask_email(payload["email"]),
        )
        return result
