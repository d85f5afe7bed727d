"""
Book a batch of invitees, one mapped task instance per booking, and write every row's outcome back.

``load_invitees`` reads rows (from a CRM export, a warehouse table, a file) and
``prepare_bookings`` turns them into operator arguments, setting aside each row that could not be
booked (a missing or unknown key, an invalid field) with its reason;
``ScheduleAppointmentOperator.partial(...).expand_kwargs(...)`` books each good row as its own task
instance, so each booking succeeds, fails or retries on its own. Each booking looks
the invitee up first, so running the DAG again with the same rows books nobody twice.

``write_back`` runs when every booking has finished, whatever its state (``trigger_rule="all_done"``).
It pulls every row's outcome record (``pull_outcomes``: across all map indexes), adds the
rows set aside, and returns a summary: counts per outcome, and one line per row that did not end
``booked`` or ``already_booked``, with the reason. Swap its last lines for your warehouse or CRM hook.

Mapping is capped by Airflow's ``[core] max_map_length`` (1024 by default): a longer list fails
``load_invitees``'s downstream with ``unmappable_return_value_length``. Raise the setting
(``AIRFLOW__CORE__MAX_MAP_LENGTH``), or split the batch across runs.

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
from airflow_provider_care360.outcomes import pull_outcomes, summarize_outcomes
from airflow_provider_care360.rows import REJECTED_KEY, prepare_bookings

EVENT_TYPE_ID = "85f13305-0647-4473-9e63-0a56af405f6f"
LOCATION = "zoom_conference"
BATCH_SIZE = 10


@task
def load_invitees(dag_run: Any = None, ti: Any = None) -> list[dict[str, Any]]:
    """The rows to book, as operator arguments; the rows set aside go to XCom for ``write_back``."""
    bookings, rejected = prepare_bookings(
        crm_rows(dag_run), fixed={"event_type_id": EVENT_TYPE_ID, "location": LOCATION}
    )
    ti.xcom_push(key=REJECTED_KEY, value=rejected)
    return bookings


def crm_rows(dag_run: Any) -> list[dict[str, Any]]:
    """
    Stand-in for a CRM export: the run's ``invitees`` if it was triggered with some, else ten
    invitees, each in its own slot tomorrow from 14:00 UTC.
    """
    if dag_run is not None and (dag_run.conf or {}).get("invitees"):
        return list(dag_run.conf["invitees"])
    first_slot = (datetime.now(UTC) + timedelta(days=1)).replace(hour=14, minute=0, second=0, microsecond=0)
    return [
        {
            "start_time": (first_slot + timedelta(minutes=30 * i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "email": f"patient{i:02d}@example.com",
            "first_name": f"Patient{i:02d}",
            "timezone": "Europe/London",
            "tracking": {"utm_campaign": "batch", "salesforce_uuid": f"crm-{i:04d}"},
            "row_key": f"crm-{i:04d}",  # your own id of the row: the records carry it for the write-back
        }
        for i in range(BATCH_SIZE)
    ]


with DAG(
    dag_id="example_care360_batch",
    description="Book a batch of invitees with dynamic task mapping",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    # One run at a time: two runs of the same rows at once could each look, find nothing, and book
    # (no compare-and-set is open to tasks); see the README, \"Errors and retries\".
    max_active_runs=1,
    tags=["care360", "example"],
    default_args={"email_on_failure": False, "email_on_retry": False},
):
    invitees = load_invitees()
    bookings = ScheduleAppointmentOperator.partial(
        task_id="book_appointment",
        event_type_id=EVENT_TYPE_ID,
        location=LOCATION,
        pool="care360",
        retries=5,
        retry_delay=timedelta(seconds=30),
    ).expand_kwargs(invitees)

    @task(trigger_rule="all_done")
    def write_back(rows: list[dict[str, Any]], ti: Any = None) -> dict[str, Any]:
        """Every row's outcome, matched to its row by map index (never by position)."""
        records = pull_outcomes(ti, "book_appointment")
        rejected = ti.xcom_pull(task_ids="load_invitees", key=REJECTED_KEY)
        summary = summarize_outcomes(records, rows, rejected or [])
        print(f"{summary['rows']} rows: {summary['counts']}")
        for problem in summary["problems"]:
            print(f"  row {problem['row_key']}: {problem['outcome']}: {problem['reason']}")
        # Here: write summary["problems"] back, e.g. UPDATE referrals SET booking_error = ... per row.
        return summary

    bookings >> write_back(invitees)
