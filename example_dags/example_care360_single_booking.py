"""
Book one Care360 appointment from a manual trigger.

Trigger it from the UI: the form asks for each field (typed params: an email, one of the five
locations, a date-time start). Every booking field of the operator is templated from ``params``.

Connection: create a connection ``care360_default`` of type ``Care360`` with the API key as its
password and ``{"environment": "staging"}`` (or ``production``) as its extra; or set::

    export AIRFLOW_CONN_CARE360_DEFAULT='{"conn_type": "care360", "password": "<API key>",
                                          "extra": {"environment": "staging"}}'

To try it locally, point ``host`` at the simulator (``care360-simulator --port 8360 --api-key k``)::

    export AIRFLOW_CONN_CARE360_DEFAULT='{"conn_type": "care360", "password": "k",
                                          "host": "http://127.0.0.1:8360"}'
"""

from __future__ import annotations

from datetime import datetime

from airflow.providers.common.compat.sdk import DAG, Param

from airflow_provider_care360.operators.care360 import ScheduleAppointmentOperator
from airflow_provider_care360.validation import LOCATIONS

with DAG(
    dag_id="example_care360_single_booking",
    description="Book one Care360 appointment from a manual trigger",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    # One run at a time: two runs of the same rows at once could each look, find nothing, and book
    # (no compare-and-set is open to tasks); see the README, \"Errors and retries\".
    max_active_runs=1,
    tags=["care360", "example"],
    default_args={"retries": 3, "email_on_failure": False, "email_on_retry": False},
    params={
        "event_type_id": Param(
            "85f13305-0647-4473-9e63-0a56af405f6f",
            type="string",
            minLength=1,
            title="Event type id",
            description="Id of the Calendly event type to book.",
        ),
        "start_time": Param(
            type="string",
            format="date-time",
            title="Start time",
            description="ISO 8601 with an offset, e.g. 2025-11-28T04:30:00Z; must be a free slot.",
        ),
        "email": Param(type="string", format="email", title="Invitee email"),
        "first_name": Param(None, type=["null", "string"], title="First name"),
        "last_name": Param(None, type=["null", "string"], title="Last name"),
        "timezone": Param("America/New_York", type="string", title="Invitee time zone (IANA)"),
        "location": Param("zoom_conference", type="string", enum=list(LOCATIONS), title="Location"),
        "utm_campaign": Param(None, type=["null", "string"], title="UTM campaign"),
    },
):
    ScheduleAppointmentOperator(
        task_id="book_appointment",
        event_type_id="{{ params.event_type_id }}",
        start_time="{{ params.start_time }}",
        invitee_email="{{ params.email }}",
        first_name="{{ params.first_name or '' }}",
        last_name="{{ params.last_name or '' }}",
        timezone="{{ params.timezone }}",
        location="{{ params.location }}",
        tracking={"utm_campaign": "{{ params.utm_campaign or '' }}", "utm_source": "airflow"},
    )
