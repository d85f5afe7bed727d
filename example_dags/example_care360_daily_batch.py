"""
Book a day's referrals, a few thousand rows, in chunks of one task each, at Care360's own pace.

``load_referrals`` reads the day's rows (a warehouse query in real life); ``chunk_rows`` cuts them
into chunks of ``CHUNK_SIZE`` and ``BatchScheduleAppointmentOperator`` is mapped over the chunks:
a few tasks instead of thousands, each booking its rows ``concurrency`` at a time, every row through
the same rules as a single booking (look first, send once, settle unclear answers). ``max_rate``
keeps the whole DAG under the API's known limit; a daily quota (a 429 asking to wait hours) defers
each chunk to the triggerer until the time Care360 named, holding no worker slot, and the chunk
resumes where it stopped. ``write_back`` runs when every chunk has finished, whatever its state
(``trigger_rule="all_done"``): it pulls every chunk's records and joins them to the rows by chunk
(map index) and row index, never by position, and by the row's own ``row_key``.

Chunk size: a booked row's record is about 560 bytes of JSON, so a chunk of 1,000 rows pushes about
0.56 MB of
records to XCom (``care360_outcomes``) on every try. Keep chunks at or under 1,000 rows: fewer tasks
save little once each chunk books for minutes, and a smaller chunk retries less work after a crash.
Each chunk's journal in ``task_state_store`` takes one key per
500 rows, well under the 64 KiB the REST API accepts per value.

``execution_timeout`` counts the time a task spends deferred: leave it unset, or above a day, for a
batch that may wait out a daily quota.

Connection: ``care360_default`` of type ``Care360``, the API key as its password (see the README).
Deferral needs a running triggerer (``airflow triggerer``). Create the pool first::

    airflow pools set care360 4 "Care360 booking API"
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.providers.common.compat.sdk import DAG, task

from airflow_provider_care360.operators.care360 import OUTCOMES_KEY, BatchScheduleAppointmentOperator
from airflow_provider_care360.outcomes import summarize_outcomes
from airflow_provider_care360.rows import chunk_rows

EVENT_TYPE_ID = "85f13305-0647-4473-9e63-0a56af405f6f"
CHUNK_SIZE = 1000
DAILY_ROWS = 2500
# Waits up to this long are slept in the task; longer ones (a daily quota) defer. `make demo` lowers
# it so a short simulated quota shows the deferral.
MAX_SLEEP = timedelta(seconds=float(os.environ.get("CARE360_EXAMPLE_MAX_SLEEP", "60")))


@task
def load_referrals(dag_run: Any = None) -> list[dict[str, Any]]:
    """
    Stand-in for the day's warehouse query: the run's ``referrals`` if it was triggered with some,
    else ``DAILY_ROWS`` referrals, each in its own slot from tomorrow on.
    """
    if dag_run is not None and (dag_run.conf or {}).get("referrals"):
        return list(dag_run.conf["referrals"])
    first = (datetime.now(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return [
        {
            "row_key": f"ref-{i:05d}",
            "email": f"referral{i:05d}@example.com",
            "start_time": (first + timedelta(minutes=30 * i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        for i in range(DAILY_ROWS)
    ]


@task
def chunks(rows: list[dict[str, Any]], dag_run: Any = None) -> list[list[dict[str, Any]]]:
    """The rows in chunks of ``CHUNK_SIZE`` (or the run's ``chunk_size``): one batch task each."""
    size = (dag_run.conf or {}).get("chunk_size", CHUNK_SIZE) if dag_run is not None else CHUNK_SIZE
    return chunk_rows(rows, int(size))


with DAG(
    dag_id="example_care360_daily_batch",
    description="Book a day's referrals in chunks, at the API's pace, deferring through quotas",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    # One run at a time: two runs of the same rows at once could each look, find nothing, and book
    # (no compare-and-set is open to tasks); see the README, "Errors and retries".
    max_active_runs=1,
    tags=["care360", "example"],
    default_args={
        "retries": 3,
        "retry_delay": timedelta(minutes=1),
        "email_on_failure": False,
        "email_on_retry": False,
    },
):
    referrals = load_referrals()
    booked = BatchScheduleAppointmentOperator.partial(
        task_id="book_chunk",
        event_type_id=EVENT_TYPE_ID,
        location="zoom_conference",
        timezone="America/Chicago",
        pool="care360",
        concurrency=4,
        max_rate=(125, 60),  # per task: 4 pool slots x 125 = Calendly's Enterprise 500 a minute
        max_sleep=MAX_SLEEP,
        deferrable=True,
    ).expand(rows=chunks(referrals))

    @task(trigger_rule="all_done")
    def write_back(ti: Any = None) -> dict[str, Any]:
        """Every row's outcome, joined by chunk and row (never by position)."""
        records = ti.xcom_pull(task_ids="book_chunk", key=OUTCOMES_KEY)
        summary = summarize_outcomes(records)
        print(f"{summary['rows']} rows: {summary['counts']}")
        for problem in summary["problems"]:
            where = f"chunk {problem['map_index']} row {problem['row']} ({problem['row_key']})"
            print(f"  {where}: {problem['outcome']}: {problem['reason']}")
        # Here: write the outcomes back, e.g. UPDATE referrals SET booking = ... WHERE key = row_key.
        return summary

    booked >> write_back()
