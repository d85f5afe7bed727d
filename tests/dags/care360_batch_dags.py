"""Batch DAGs the test suite runs with ``dag.test()``: rows from the run's conf."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.providers.common.compat.sdk import DAG, task

from airflow_provider_care360.operators.care360 import BatchScheduleAppointmentOperator

START = datetime(2025, 1, 1)
COMMON: dict[str, Any] = {
    "event_type_id": "evt-batch",
    "location": "zoom_conference",
    "timezone": "UTC",
    "settle_delay": 0.2,
    "apply_window": 2.0,
    "concurrency": 4,
}


@task
def conf_rows(**context: Any) -> list[dict[str, Any]]:
    return list(context["dag_run"].conf["rows"])


for dag_id, extra, retries in (
    # Waits up to 5 s in the task; a longer one ends the try with the rows left throttled.
    ("care360_tb_batch", {"max_sleep": 5, "deferrable": False}, 2),
    # A long wait (a quota) defers the task to the triggerer (dag.test() runs it in-process).
    ("care360_tb_defer", {"max_sleep": 1, "deferrable": True}, 0),
    # The same wait without deferral: the try ends, and the retry books the rest.
    ("care360_tb_no_defer", {"max_sleep": 1, "deferrable": False}, 2),
    # Paced to a known limit of 3 bookings a second: no 429 is spent.
    ("care360_tb_paced", {"max_sleep": 5, "deferrable": False, "max_rate": (3, 1.0)}, 0),
):
    with DAG(
        dag_id,
        schedule=None,
        start_date=START,
        catchup=False,
        default_args={
            "retries": retries,
            "retry_delay": timedelta(seconds=1),
            "email_on_failure": False,
            "email_on_retry": False,
        },
    ):
        BatchScheduleAppointmentOperator(task_id="book", rows=conf_rows(), **COMMON, **extra)

# Rows straight from the run's conf, rendered natively: no upstream task holds them in its XCom.
with DAG(
    "care360_tb_native",
    schedule=None,
    start_date=START,
    catchup=False,
    render_template_as_native_obj=True,
    default_args={"retries": 0, "email_on_failure": False, "email_on_retry": False},
):
    BatchScheduleAppointmentOperator(
        task_id="book", rows="{{ dag_run.conf['rows'] }}", **COMMON, max_sleep=5, deferrable=False
    )
