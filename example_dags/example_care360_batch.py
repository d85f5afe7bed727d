"""
Book a batch of invitees, one mapped task instance per booking, within the API's rate limit.

``load_invitees`` returns a list of dicts of operator arguments (from a CRM export, a warehouse
table, a file); ``ScheduleAppointmentOperator.partial(...).expand_kwargs(...)`` books each one as
its own task instance, so each booking succeeds, fails or retries on its own.

Concurrency: every instance runs in the ``care360`` pool, so at most that pool's slots book at
once, however many instances the batch has. Create the pool before the first run::

    airflow pools set care360 4 "Care360 booking API"

Size the pool to the rate limit: with a limit of R bookings a minute, a few slots keep the API
busy without bursting past it, and ``retries`` covers the 429s that still happen (each retried by
Airflow after ``retry_delay``; nothing books twice, a 429 means nothing was booked).

Connection: ``care360_default`` of type ``Care360``, the API key as its password, and
``{"environment": "production"}`` or ``"staging"`` as its extra (see the README).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.providers.common.compat.sdk import DAG, task

from airflow_provider_care360.operators.care360 import ScheduleAppointmentOperator

EVENT_TYPE_ID = "85f13305-0647-4473-9e63-0a56af405f6f"
BATCH_SIZE = 10


@task
def load_invitees() -> list[dict[str, Any]]:
    """Stand-in for a CRM export: ten invitees, each in its own slot tomorrow from 14:00 UTC."""
    first_slot = (datetime.now(UTC) + timedelta(days=1)).replace(hour=14, minute=0, second=0, microsecond=0)
    return [
        {
            "start_time": (first_slot + timedelta(minutes=30 * i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "invitee_email": f"patient{i:02d}@example.com",
            "first_name": f"Patient{i:02d}",
            "timezone": "Europe/London",
            "tracking": {"utm_campaign": "batch", "salesforce_uuid": f"crm-{i:04d}"},
        }
        for i in range(BATCH_SIZE)
    ]


with DAG(
    dag_id="example_care360_batch",
    description="Book a batch of invitees with dynamic task mapping",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    tags=["care360", "example"],
    default_args={"email_on_failure": False, "email_on_retry": False},
):
    ScheduleAppointmentOperator.partial(
        task_id="book_appointment",
        event_type_id=EVENT_TYPE_ID,
        location="zoom_conference",
        pool="care360",
        retries=5,
        retry_delay=timedelta(seconds=30),
    ).expand_kwargs(load_invitees())
