"""DAGs the deployment test triggers over REST: one booking from the run's conf, retried quickly."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.providers.common.compat.sdk import DAG, task

from airflow_provider_care360.operators.care360 import (
    BatchScheduleAppointmentOperator,
    ScheduleAppointmentOperator,
)

#: The simulator's late bookings in these tests land within 8 s of their request.
APPLY_WINDOW = 10.0

for dag_id, check_existing, verify in (
    ("care360_d_book", True, False),
    ("care360_d_no_check", False, False),
    ("care360_d_verify", True, True),
):
    with DAG(
        dag_id,
        schedule=None,
        start_date=datetime(2025, 1, 1),
        catchup=False,
        params={"email": "", "start_time": "", "conn_id": "care360_default"},
        default_args={
            "retries": 2,
            "retry_delay": timedelta(seconds=2),
            "email_on_failure": False,
            "email_on_retry": False,
        },
    ):
        ScheduleAppointmentOperator(
            task_id="book",
            event_type_id="evt-deploy",
            start_time="{{ params.start_time }}",
            invitee_email="{{ params.email }}",
            timezone="UTC",
            location="zoom_conference",
            care360_conn_id="{{ params.conn_id }}",
            check_existing=check_existing,
            verify_booking=verify,
            settle_delay=1.0 if verify else 0.5,
            apply_window=APPLY_WINDOW,
        )


@task
def conf_rows(**context: Any) -> list[dict[str, Any]]:
    return list(context["dag_run"].conf["rows"])


# A batch from the run's conf, deferring through long waits (the deployment runs a triggerer).
with DAG(
    "care360_d_batch",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    default_args={
        "retries": 2,
        "retry_delay": timedelta(seconds=2),
        "email_on_failure": False,
        "email_on_retry": False,
    },
):
    BatchScheduleAppointmentOperator(
        task_id="book",
        rows=conf_rows(),
        event_type_id="evt-deploy-batch",
        timezone="UTC",
        location="zoom_conference",
        settle_delay=0.5,
        apply_window=APPLY_WINDOW,
        concurrency=4,
        max_sleep=2,
        deferrable=True,
    )
