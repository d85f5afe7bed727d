"""Facts of the Care360 API contract shared by the client and the simulator (no Airflow imports)."""

from __future__ import annotations

#: The ``location`` values the API accepts.
LOCATIONS: tuple[str, ...] = (
    "google_conference",
    "zoom_conference",
    "gotomeeting_conference",
    "microsoft_teams_conference",
    "webex_conference",
)

#: Wire name of each ``tracking`` member, keyed by its snake_case twin.
TRACKING_KEYS: dict[str, str] = {
    "utm_campaign": "utmCampaign",
    "utm_source": "utmSource",
    "utm_medium": "utmMedium",
    "utm_content": "utmContent",
    "utm_term": "utmTerm",
    "salesforce_uuid": "salesforceUuid",
}

APPOINTMENTS_PATH = "/api/v1/calendar/appointments"
AVAILABILITY_PATH = "/api/v1/calendar/provider-availability"
CANCEL_PATH = APPOINTMENTS_PATH + "/cancel"

#: The booking arguments of ScheduleAppointmentOperator (and the keys of a mapped row); the
#: operator's template fields are these and ``care360_conn_id``.
BOOKING_FIELDS: tuple[str, ...] = (
    "event_type_id",
    "start_time",
    "invitee_email",
    "timezone",
    "location",
    "first_name",
    "last_name",
    "tracking",
    "row_key",
)

#: The booking arguments that carry personal data: kept out of Airflow's rendered fields in clear.
PERSONAL_FIELDS: tuple[str, ...] = ("invitee_email", "first_name", "last_name", "tracking")

#: How an outcome record carries the invitee's email: ``masked`` (the default) or ``raw``.
RECORD_EMAIL_MODES: tuple[str, ...] = ("masked", "raw")
