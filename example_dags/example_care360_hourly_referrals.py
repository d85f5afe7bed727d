"""
Every hour, book the referrals that arrived in that hour.

``select_referrals`` stands in for a warehouse query over the run's data interval::

    SELECT email, first_name, last_name, timezone, created_at
    FROM referrals
    WHERE created_at >= %(data_interval_start)s AND created_at < %(data_interval_end)s

Swap its body for your warehouse hook (``get_records(sql, parameters=...)``). ``prepare_bookings``
turns the rows into operator arguments and sets aside each row that could not be booked, with its
reason; ``expand_kwargs`` books each good row as its own task instance, so one failing booking fails
alone and is retried (or not) alone. ``report`` accounts for every row of the hour, booked or not.

Connection: ``care360_default`` of type ``Care360``, the API key as its password, and
``{"environment": "production"}`` or ``"staging"`` as its extra (see the README).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.providers.common.compat.sdk import DAG, task

from airflow_provider_care360.operators.care360 import ScheduleAppointmentOperator
from airflow_provider_care360.outcomes import pull_outcomes, summarize_outcomes
from airflow_provider_care360.rows import REJECTED_KEY, prepare_bookings

try:
    from airflow.sdk import CronDataIntervalTimetable
except ImportError:  # Airflow 2
    from airflow.timetables.interval import CronDataIntervalTimetable

EVENT_TYPE_ID = "2f0c7a6e-referral-intake"  # your intake event type


@task
def select_referrals(
    data_interval_start: datetime | None = None, data_interval_end: datetime | None = None, ti: Any = None
) -> list[dict[str, Any]]:
    """The referrals created in [data_interval_start, data_interval_end), as booking arguments."""
    assert data_interval_start is not None and data_interval_end is not None  # filled in by Airflow
    # Stand-in rows: a referral at the start and one at the half hour of the interval.
    rows = [
        {
            "email": f"referral{i}@example.com",
            "first_name": f"Referral{i}",
            "timezone": "America/Chicago",
            "created_at": data_interval_start + timedelta(minutes=30 * i),
        }
        for i in range(2)
    ]
    bookings = [
        {
            "event_type_id": EVENT_TYPE_ID,
            # An intake call a day after the referral arrived, on the half-hour slot it fell in.
            "start_time": (row["created_at"] + timedelta(days=1))
            .replace(minute=row["created_at"].minute // 30 * 30, second=0, microsecond=0)
            .strftime("%Y-%m-%dT%H:%M:%SZ"),
            "email": row["email"],
            "first_name": row["first_name"],
            "timezone": row["timezone"],
            "location": "google_conference",
            "tracking": {"utm_source": "referrals", "utm_medium": "hourly"},
        }
        for row in rows
        if data_interval_start <= row["created_at"] < data_interval_end
    ]
    good, rejected = prepare_bookings(bookings)
    ti.xcom_push(key=REJECTED_KEY, value=rejected)  # accounted for by report
    return good


with DAG(
    dag_id="example_care360_hourly_referrals",
    description="Book the referrals of each hour",
    # A data-interval timetable: each run covers the hour before it. (A plain cron string on
    # Airflow 3 gives runs whose data interval is a single instant.)
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["care360", "example"],
    default_args={
        "retries": 5,
        "retry_delay": timedelta(minutes=1),
        "email_on_failure": False,
        "email_on_retry": False,
    },
):
    referrals = select_referrals()
    booked = ScheduleAppointmentOperator.partial(task_id="book_referral").expand_kwargs(referrals)

    @task(trigger_rule="all_done")
    def report(rows: list[dict[str, Any]], ti: Any = None) -> dict[str, Any]:
        """Every referral of the hour: booked, already booked, or why not."""
        records = pull_outcomes(ti, "book_referral")
        rejected = ti.xcom_pull(task_ids="select_referrals", key=REJECTED_KEY)
        return summarize_outcomes(records, rows, rejected or [])

    booked >> report(referrals)
