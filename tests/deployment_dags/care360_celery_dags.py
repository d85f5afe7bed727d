"""
DAGs the CeleryExecutor deployment test triggers over REST (tests/test_deployment_celery.py).

Each books the rows of its run's conf: ``care360_c_single`` one mapped
``ScheduleAppointmentOperator`` task instance per row, ``care360_c_batch`` every row in one
``BatchScheduleAppointmentOperator`` task. Both retry quickly, so a try lost with its worker is
followed by the next one soon after the heartbeat timeout.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.providers.common.compat.sdk import DAG, task

from airflow_provider_care360.operators.care360 import (
    BatchScheduleAppointmentOperator,
    ScheduleAppointmentOperator,
)

#: Seconds after a request's answer was due in which Care360 may still apply it (the test's late
#: bookings land within it); the test reads it from here.
APPLY_WINDOW = 15.0
COMMON: dict[str, Any] = {
    "event_type_id": "evt-celery",
    "location": "zoom_conference",
    "timezone": "UTC",
    "settle_delay": 0.5,
    "apply_window": APPLY_WINDOW,
}
DEFAULT_ARGS: dict[str, Any] = {
    "retries": 3,
    "retry_delay": timedelta(seconds=2),
    "email_on_failure": False,
    "email_on_retry": False,
}


@task
def conf_rows(**context: Any) -> list[dict[str, Any]]:
    return list(context["dag_run"].conf["rows"])


with DAG(
    "care360_c_single",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    default_args=DEFAULT_ARGS,
    tags=["care360", "test"],
):
    # Rows: {"invitee_email": ..., "start_time": ...}
    ScheduleAppointmentOperator.partial(task_id="book", **COMMON).expand_kwargs(conf_rows())

with DAG(
    "care360_c_batch",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    default_args=DEFAULT_ARGS,
    tags=["care360", "test"],
):
    # Rows: {"email": ..., "start_time": ...}; the conf's conn_id, if any, names the connection.
    BatchScheduleAppointmentOperator(
        task_id="book",
        rows=conf_rows(),
        care360_conn_id="{{ dag_run.conf.get('conn_id') or 'care360_default' }}",
        concurrency=4,
        deferrable=False,
        **COMMON,
    )
