"""The example DAGs parse offline and book against the simulator through ``airflow dags test``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from support import EXAMPLE_DAGS, airflow_cli, iso, next_slot, run_dag, state_of, xcom_value

pytestmark = pytest.mark.integration

EXAMPLES = {
    "example_care360_single_booking",
    "example_care360_hourly_referrals",
    "example_care360_batch",
    "example_care360_daily_batch",
}


def test_examples_parse_without_a_connection_or_network(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 2
        from airflow.models.dagbag import DagBag

    for name in [n for n in os.environ if n.startswith("AIRFLOW_CONN_")]:
        monkeypatch.delenv(name)
    attempts: list[Any] = []

    def no_network(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise OSError("network access at parse time")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    bag = DagBag(dag_folder=str(EXAMPLE_DAGS))

    assert bag.import_errors == {}
    assert set(bag.dag_ids) == EXAMPLES
    assert attempts == []
    for dag_id in EXAMPLES:
        dag = bag.get_dag(dag_id)
        assert "care360" in dag.tags, dag_id
        assert dag.description, dag_id
        assert dag.catchup is False, dag_id


def test_batch_example_caps_concurrency_with_a_pool() -> None:
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 2
        from airflow.models.dagbag import DagBag

    task = DagBag(dag_folder=str(EXAMPLE_DAGS)).get_dag("example_care360_batch").get_task("book_appointment")
    assert task.partial_kwargs["pool"] == "care360"
    assert task.partial_kwargs["retries"] >= 3


def _dags_test(dag_id: str, env: dict[str, str], conf: dict[str, Any] | None = None) -> str:
    cmd = [airflow_cli(), "dags", "test", dag_id]
    if conf:
        cmd += ["-c", json.dumps(conf)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert f"DagRun Finished: dag_id={dag_id}" in output and "state=success" in output, output[-3000:]
    return output


def test_examples_book_through_airflow_dags_test(simulator: Any, api_key: str) -> None:
    env = {**os.environ, "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLE_DAGS)}
    start = (datetime.now(UTC) + timedelta(days=1)).replace(hour=10, minute=0, second=0, microsecond=0)

    out = _dags_test(
        "example_care360_single_booking", env, {"start_time": iso(start), "email": "jane@example.com"}
    )
    assert [b["email"] for b in simulator.bookings] == ["jane@example.com"]
    assert api_key not in out

    _dags_test("example_care360_batch", env)
    assert simulator.booked_count() == 1 + 10

    _dags_test("example_care360_hourly_referrals", env)
    emails = [b["email"] for b in simulator.bookings]
    assert sorted(e for e in emails if e.startswith("referral")) == [
        "referral0@example.com",
        "referral1@example.com",
    ]
    assert len(emails) == len(set(emails)) == 13


def test_batch_example_writes_back_every_row_of_a_mixed_batch(simulator: Any) -> None:
    def row(i: int, **overrides: Any) -> dict[str, Any]:
        return {
            "start_time": iso(next_slot(days=3, offset_slots=i)),
            "invitee_email": f"row{i}@example.com",
            "timezone": "UTC",
            "row_key": f"crm-{i}",
            **overrides,
        }

    taken = next_slot(days=3, offset_slots=1)
    simulator.add_appointment(email="row1@example.com", start=taken.isoformat())
    off_slot = next_slot(days=3, offset_slots=2).replace(minute=15)
    rows = [
        row(0),  # booked
        row(1),  # already booked elsewhere: found by the lookup, nothing sent
        row(2, start_time=iso(off_slot)),  # Care360 answers 400: not a slot
        row(3, invitee_email="not-an-email"),  # invalid input: set aside before mapping
        row(4),  # booked
        row(5, email="also@example.com"),  # email and invitee_email: set aside
        row(6, phone="555-0100"),  # an unknown key: set aside
    ]
    result = run_dag("example_care360_batch", {"invitees": rows}, folder=EXAMPLE_DAGS)

    # Only the four good rows became booking tasks.
    states = {k[1]: state_of(ti) for k, ti in result.tis.items() if k[0] == "book_appointment"}
    assert states == {0: "success", 1: "success", 2: "failed", 3: "success"}
    assert state_of(result.ti("write_back")) == "success"
    assert sorted(b["email"] for b in simulator.bookings) == ["row0@example.com", "row4@example.com"]
    summary = xcom_value(result, "write_back")
    assert summary["rows"] == 7
    assert summary["counts"] == {"booked": 2, "already_booked": 1, "rejected": 4}
    by_key = {p["row_key"]: p for p in summary["problems"]}  # joined by the row's own key
    assert sorted(by_key) == ["crm-2", "crm-3", "crm-5", "crm-6"]
    assert (by_key["crm-2"]["map_index"], by_key["crm-2"]["http_status"]) == (2, 400)
    assert "not a correct slot" in by_key["crm-2"]["reason"]
    assert by_key["crm-2"]["start_time"] == iso(off_slot)
    set_aside = {k: p for k, p in by_key.items() if p["map_index"] is None}
    assert {k: p["row"] for k, p in set_aside.items()} == {"crm-3": 3, "crm-5": 5, "crm-6": 6}
    assert "email:" in set_aside["crm-3"]["reason"]
    assert "both email and invitee_email" in set_aside["crm-5"]["reason"]
    assert "unknown key(s) phone" in set_aside["crm-6"]["reason"]
    # No invitee address in clear anywhere in the summary or the records.
    for address in ("row0@example.com", "row2@example.com", "row5@example.com", "also@example.com"):
        assert address not in str(summary)
    assert all("also@example.com" not in str(r["body"]) for r in simulator.booking_requests)


def test_batch_example_run_again_with_the_same_rows_books_nobody_twice(simulator: Any) -> None:
    rows = [
        {
            "start_time": iso(next_slot(days=4, offset_slots=i)),
            "invitee_email": f"again{i}@example.com",
            "timezone": "UTC",
        }
        for i in range(3)
    ]
    simulator.one_on_one = False  # a second booking would show as a second appointment
    first = run_dag("example_care360_batch", {"invitees": rows}, folder=EXAMPLE_DAGS)
    posts_after_first = len(simulator.booking_requests)
    second = run_dag("example_care360_batch", {"invitees": rows}, folder=EXAMPLE_DAGS)

    assert xcom_value(first, "write_back")["counts"] == {"booked": 3}
    assert xcom_value(second, "write_back")["counts"] == {"already_booked": 3}
    assert posts_after_first == 3 and len(simulator.booking_requests) == 3
    assert len(simulator.appointments) == 3


def test_daily_batch_example_books_in_chunks_defers_through_a_quota_and_writes_back_by_row(
    simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CARE360_EXAMPLE_MAX_SLEEP", "1")  # read when the DAG file is parsed
    # X-RateLimit-Reset only: a wait past 1 s. Two a window, so the first chunk of three meets it
    # whatever the time between chunk tasks (Airflow 3.2 starts each task 1.5 to 2 s late).
    simulator.quota, simulator.quota_window = 2, 3.0
    first = next_slot(days=8)
    referrals = [
        {
            "row_key": f"ref-{i}",
            "email": f"daily{i}@example.com",
            "start_time": iso(first + timedelta(minutes=30 * i)),
        }
        for i in range(7)
    ]
    referrals.append({"row_key": "ref-bad", "email": "nobody", "start_time": iso(first)})
    result = run_dag(
        "example_care360_daily_batch", {"referrals": referrals, "chunk_size": 3}, folder=EXAMPLE_DAGS
    )

    chunks = sorted(k[1] for k in result.tis if k[0] == "book_chunk")
    assert chunks == [0, 1, 2]
    assert all(state_of(result.ti("book_chunk", i)) == "success" for i in chunks)
    assert sorted(b["email"] for b in simulator.bookings) == sorted(r["email"] for r in referrals[:7])
    summary = xcom_value(result, "write_back")
    assert summary["rows"] == 8 and summary["counts"] == {"booked": 7, "rejected": 1}
    [problem] = summary["problems"]
    assert (problem["map_index"], problem["row"], problem["row_key"]) == (2, 1, "ref-bad")
    assert any(r["status"] == 429 for r in simulator.booking_requests)  # the quota was met, and waited out
