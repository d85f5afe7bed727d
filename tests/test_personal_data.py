"""
Where a booking run leaves the invitee's email and names: nowhere the provider writes.

Each test runs a real DAG (``dag.test()``) with a distinctive invitee, then scans what the run left
behind as ``shared/tools/phi-scan`` does: every log file under ``AIRFLOW_HOME/logs`` and every text
column of every table of the SQLite metadata DB (rendered fields, XCom, the task state store, ...),
plus what the test process printed. Only what the user wrote themselves may hold them: the run's
conf.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_care360.testing import Fault
from support import iso, next_slot, outcome_of, run_dag, state_of

pytestmark = pytest.mark.integration

#: Where the user's own input lives: the run's conf, and Airflow's audit log of the command the user
#: typed (``airflow dags test ... -c '<conf>'``, in ``log.extra``).
USERS_OWN = {("dag_run", "conf"), ("log", "extra")}
#: Airflow's own DEBUG line that prints the run's conf (``Updating task params (...) with DagRun.conf``).
AIRFLOWS_CONF_LINE = "with DagRun.conf"


def _invitee() -> dict[str, str]:
    tag = secrets.token_hex(4)
    return {
        "email": f"xanthe.phi{tag}@smallclinic-phi{tag}.org",
        "first_name": f"Xanthippe{tag}",
        "last_name": f"Okonkwo{tag}",
    }


def places(needles: list[str], printed: str = "", users_tasks: tuple[str, ...] = ()) -> list[str]:
    """
    Every place outside the user's own input that holds one of ``needles`` (case-insensitive).

    :param users_tasks: the user's own tasks whose XCom holds the rows (the upstream ``load`` task).
    """
    home = Path(os.environ["AIRFLOW_HOME"])
    lowered = [n.lower() for n in needles]
    ours = "\n".join(line for line in printed.lower().splitlines() if AIRFLOWS_CONF_LINE.lower() not in line)
    found = [
        f"printed: {n!r} in {next(line for line in ours.splitlines() if n in line)[:300]!r}"
        for n in lowered
        if n in ours
    ]
    for path in sorted((home / "logs").rglob("*")) if (home / "logs").is_dir() else []:
        if path.is_file():
            text = path.read_text(errors="replace").lower()
            found += [f"log {path.relative_to(home)}: {n!r}" for n in lowered if n in text]
    con = sqlite3.connect(f"file:{home / 'airflow.db'}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for column in [r[1] for r in con.execute(f'PRAGMA table_info("{table}")')]:
                if (table, column) in USERS_OWN:
                    continue
                for needle in lowered:
                    query = f'SELECT COUNT(*) FROM "{table}" WHERE lower(CAST("{column}" AS TEXT)) LIKE ?'
                    args: list[Any] = [f"%{needle}%"]
                    if table == "xcom" and users_tasks:
                        query += f" AND task_id NOT IN ({', '.join('?' * len(users_tasks))})"
                        args += users_tasks
                    try:
                        hits = con.execute(query, args).fetchone()[0]
                    except sqlite3.Error:
                        continue
                    if hits:
                        found.append(f"db {table}.{column}: {needle!r} in {hits} row(s)")
    finally:
        con.close()
    return found


def _conf(invitee: dict[str, str], days: int) -> dict[str, Any]:
    return {"start_time": iso(next_slot(days=days)), **invitee}


def test_a_booking_leaves_no_invitee_data_in_rendered_fields_xcom_logs_or_the_store(
    simulator: Any, capfd: Any
) -> None:
    invitee = _invitee()
    simulator.inject(Fault(502, b"", apply=True))  # an unclear answer: the journal is written too
    result = run_dag("care360_t_params", _conf(invitee, days=2))
    assert result.state == "success"
    assert [b["email"] for b in simulator.bookings] == [invitee["email"]]  # the request carried it
    assert simulator.bookings[0]["firstName"] == invitee["first_name"]
    out = capfd.readouterr()
    assert places(list(invitee.values()), out.out + out.err) == []
    record = outcome_of(result)
    assert record["email"] == "x***@s***.org" and record["appointment"].keys() == {
        "id",
        "start",
        "end",
        "status",
    }


def test_a_lookup_error_that_echoes_the_email_leaves_no_trace_of_it(simulator: Any, capfd: Any) -> None:
    invitee = _invitee()
    echo = {"status": 500, "success": False, "error": f"user_email {invitee['email']} is archived"}
    simulator.inject(Fault(500, echo, target="lookup"))
    result = run_dag("care360_t_no_retries", _conf(invitee, days=3))
    assert state_of(result.ti("book")) == "failed"
    record = outcome_of(result)
    assert record["outcome"] == "not_sent" and "is archived" in record["message"]
    out = capfd.readouterr()
    assert places(list(invitee.values()), out.out + out.err) == []


def test_debug_logging_of_a_run_leaves_no_raw_email(simulator: Any) -> None:
    """``airflow dags test`` with every logger at DEBUG, urllib3's request lines included."""
    import json
    import subprocess

    from support import airflow_cli

    invitee = _invitee()
    env = {**os.environ, "AIRFLOW__LOGGING__LOGGING_LEVEL": "DEBUG"}
    run = subprocess.run(
        [airflow_cli(), "dags", "test", "care360_t_params", "-c", json.dumps(_conf(invitee, days=4))],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    printed = run.stdout + run.stderr
    assert run.returncode == 0, printed[-3000:]
    assert [b["email"] for b in simulator.bookings] == [invitee["email"]]
    assert "/api/v1/calendar/appointments?***" in printed  # urllib3 logged the request line, redacted
    assert places([invitee["email"], invitee["email"].replace("@", "%40")], printed) == []


def test_a_batch_leaves_no_invitee_data_outside_the_users_own_rows(simulator: Any, capfd: Any) -> None:
    from datetime import timedelta

    invitees = [_invitee() for _ in range(3)]
    first = next_slot(days=9)
    rows = [
        {
            "email": who["email"],
            "first_name": who["first_name"],
            "last_name": who["last_name"],
            "start_time": iso(first + timedelta(minutes=30 * i)),
            "tracking": {"utm_campaign": who["last_name"]},
        }
        for i, who in enumerate(invitees)
    ]
    rows.append({**rows[0], "start_time": "yesterday"})  # rejected: its record quotes no personal data
    from support import TEST_DAGS

    result = run_dag("care360_tb_native", {"rows": rows}, folder=TEST_DAGS)
    assert state_of(result.ti("book")) == "success"
    assert sorted(b["email"] for b in simulator.bookings) == sorted(w["email"] for w in invitees)
    out = capfd.readouterr()
    needles = [value for who in invitees for value in who.values()]
    assert places(needles, out.out + out.err) == []
