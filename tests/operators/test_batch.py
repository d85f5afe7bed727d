"""BatchScheduleAppointmentOperator in real DAG runs (``dag.test()``) against the simulator."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from airflow_provider_care360.retry import RETRY_POLICIES_SUPPORTED
from airflow_provider_care360.testing import Fault
from airflow_provider_care360.version_compat import AIRFLOW_V_3_3_PLUS
from support import iso, next_slot, run_dag, state_of, xcom_value

pytestmark = pytest.mark.integration


def rows(n: int, days: int = 2, **extra: Any) -> list[dict[str, Any]]:
    first = next_slot(days=days)
    return [
        {"email": f"batch{i:03d}@example.com", "start_time": iso(first + timedelta(minutes=30 * i)), **extra}
        for i in range(n)
    ]


def records(result: Any) -> list[dict[str, Any]]:
    return list(xcom_value(result, "book", key="care360_outcomes"))


def test_a_mixed_batch_books_each_good_row_once_and_accounts_for_every_row(simulator: Any) -> None:
    simulator.inject(Fault(502, b"", apply=True))  # one unclear answer, settled by the lookup
    batch = rows(6)
    batch.append(dict(batch[1], email=batch[1]["email"].upper()))  # 6: repeats row 1
    batch.append({**rows(1, days=3)[0], "start_time": iso(next_slot(days=3).replace(minute=15))})  # 7: a 400
    batch.append({**rows(1, days=4)[0], "email": "not-an-email"})  # 8: invalid
    result = run_dag("care360_tb_batch", {"rows": batch}, folder=_folder())

    ti = result.ti("book")
    assert (state_of(ti), ti.try_number) == ("success", 1)
    summary = xcom_value(result, "book")
    assert summary["rows"] == 9
    assert summary["counts"] == {"booked": 6, "duplicate": 1, "rejected": 2}
    assert sorted(b["email"] for b in simulator.bookings) == sorted(r["email"] for r in batch[:6])
    by_row = {r["row"]: r for r in records(result)}
    assert sorted(by_row) == list(range(9))
    assert by_row[6]["outcome"] == "duplicate" and by_row[6]["duplicate_of"] == 1
    assert by_row[7]["outcome"] == "rejected" and by_row[7]["http_status"] == 400
    assert by_row[8]["outcome"] == "rejected" and "email:" in by_row[8]["message"]
    leaks = [r for r in by_row.values() if "batch0" in str(r).lower() or "not-an-email" in str(r)]
    assert leaks == [], leaks  # emails masked


def test_a_burst_of_429s_pauses_the_whole_batch_and_books_everything_in_one_try(simulator: Any) -> None:
    simulator.rate_limit, simulator.rate_window = 3, 2.0  # 429 with Retry-After past 3 a window
    batch = rows(9, days=5)
    result = run_dag("care360_tb_batch", {"rows": batch}, folder=_folder())

    ti = result.ti("book")
    assert (state_of(ti), ti.try_number) == ("success", 1)
    assert xcom_value(result, "book")["counts"] == {"booked": 9}
    assert sorted(b["email"] for b in simulator.bookings) == [r["email"] for r in batch]
    throttled = [r for r in simulator.booking_requests if r["status"] == 429]
    # One shared pause: after a 429 no worker sends until the window ends, so at most the requests in
    # flight at once (concurrency 4) meet each of the three windows' 429s, not a retry loop's hundreds.
    assert 1 <= len(throttled) <= 4 * 3


def test_max_rate_at_the_limit_spends_no_429_and_spaces_the_arrivals_a_window_apart(simulator: Any) -> None:
    """The limit counts arrivals: any three bookings (the limit) arrive at least a window apart."""
    simulator.rate_limit, simulator.rate_window = 3, 1.0
    batch = rows(10, days=9)
    result = run_dag("care360_tb_paced", {"rows": batch}, folder=_folder())

    ti = result.ti("book")
    assert (state_of(ti), ti.try_number) == ("success", 1)
    assert xcom_value(result, "book")["counts"] == {"booked": 10}
    assert sorted(b["email"] for b in simulator.bookings) == [r["email"] for r in batch]
    assert [r["status"] for r in simulator.booking_requests] == [200] * 10  # not one 429
    arrivals = sorted(r["at"] for r in simulator.booking_requests)
    assert min(arrivals[k + 3] - arrivals[k] for k in range(len(arrivals) - 3)) >= 1.0


def test_a_quota_makes_the_batch_defer_and_resume_where_it_stopped(simulator: Any, capfd: Any) -> None:
    simulator.quota, simulator.quota_window = 3, 4.0  # X-RateLimit-* only, a wait past max_sleep
    batch = rows(5, days=6)
    result = run_dag("care360_tb_defer", {"rows": batch}, folder=_folder())

    ti = result.ti("book")
    assert state_of(ti) == "success", capfd.readouterr().out[-3000:]
    assert ti.try_number == 1  # no retry: the task waited in the triggerer and resumed
    assert xcom_value(result, "book")["counts"] == {"booked": 5}
    assert sorted(b["email"] for b in simulator.bookings) == [r["email"] for r in batch]
    out = capfd.readouterr()
    assert "deferring" in (out.out + out.err)
    # Resumed where it stopped: the rows booked before the wait were not looked up again.
    lookups = [r for r in simulator.lookup_requests]
    assert len(lookups) <= len(batch) + 2


def test_without_deferral_a_quota_ends_the_try_and_the_retry_books_the_rest(simulator: Any) -> None:
    simulator.quota, simulator.quota_window = 3, 3.0
    batch = rows(5, days=7)
    result = run_dag("care360_tb_no_defer", {"rows": batch}, folder=_folder())

    ti = result.ti("book")
    assert state_of(ti) == "success"
    if RETRY_POLICIES_SUPPORTED:
        assert ti.try_number == 2  # the retry policy waited the time Care360 named
    else:
        assert ti.try_number in (2, 3)  # retry_delay (1 s) may end inside the quota's 3 s: one more try
    counts = xcom_value(result, "book")["counts"]
    if AIRFLOW_V_3_3_PLUS:
        assert counts == {"booked": 5}  # the journal knows which rows try 1 booked
    else:  # no store: the retry looks every row up, and finds try 1's bookings
        assert counts.get("booked", 0) + counts.get("already_booked", 0) == 5 and len(counts) <= 2
    assert sorted(b["email"] for b in simulator.bookings) == [r["email"] for r in batch]
    if RETRY_POLICIES_SUPPORTED:
        # The journal tells the retry which rows are settled: it looks up only the rows left.
        assert len(simulator.lookup_requests) <= len(batch) + 2


def _folder() -> Any:
    from support import TEST_DAGS

    return TEST_DAGS
