"""
A real Airflow 3.3 deployment on loopback: scheduler, DAG processor and API server with the
LocalExecutor (SQLite, throwaway home), DAG runs triggered through the REST API.

The three ways Airflow runs a booking task twice, each ending with one booking and a successful
task (the simulator accepts a second booking of a slot here, so a double booking would show):

* the task process is killed (SIGKILL, as an OOM kill or an eviction does) while it waits for
  Care360's answer, and Airflow retries the task;
* its supervisor is killed, the heartbeat times out, and a new try starts while the old task process
  still waits for its answer;
* a successful run is cleared and runs again.

With ``check_existing=False``, a try killed mid-request is followed by a try that fails as ambiguous
without sending. And example DAG 3 books its batch with each mapped task in the ``care360`` pool.

The scenarios share one deployment and run one after another (the simulator's fault queue is
shared). Everything is shut down afterwards, and the test checks that no process is left behind.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_care360.testing import Care360Simulator, Fault
from support import EXAMPLE_DAGS, ROOT, airflow_cli, iso, next_slot

try:
    from airflow_provider_care360.version_compat import AIRFLOW_V_3_3_PLUS
except ImportError:  # pragma: no cover
    AIRFLOW_V_3_3_PLUS = False

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not AIRFLOW_V_3_3_PLUS, reason="the deployment test targets Airflow 3.3"),
]

DAG_ID = "example_care360_batch"
HEARTBEAT_TIMEOUT = 8  # seconds without a heartbeat before the scheduler fails the try


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _call(url: str, method: str = "GET", body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as response:
        return json.loads(response.read())


def _wait(what: str, probe: Any, timeout: float, procs: list[subprocess.Popen[bytes]]) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        for proc in procs:
            if proc.poll() is not None:
                name = proc.args[1]  # type: ignore[index]
                raise AssertionError(f"{name} exited early ({proc.returncode}) while waiting for {what}")
        try:
            result = probe()
            if result:
                return result
        except (urllib.error.URLError, ConnectionError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _pid_of_client(port: int) -> int:
    """The process that holds the client end of a loopback connection (found by PID, never by name)."""
    import psutil

    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.pid and conn.pid != os.getpid():
            return int(conn.pid)
    raise AssertionError(f"no process holds the client port {port}")


@dataclass
class Deployment:
    api: str
    sim: Care360Simulator
    procs: list[subprocess.Popen[bytes]]
    logs: Path

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        body: dict[str, Any] = {"logical_date": None}
        if conf:
            body["conf"] = conf
        run = _call(f"{self.api}/api/v2/dags/{dag_id}/dagRuns", "POST", body)
        return str(run["dag_run_id"])

    def finished(self, dag_id: str, run_id: str, timeout: float = 240) -> str:
        url = f"{self.api}/api/v2/dags/{dag_id}/dagRuns/{run_id}"
        return str(
            _wait(
                f"{dag_id} {run_id} to finish",
                lambda: (s := _call(url)["state"]) in ("success", "failed") and s,
                timeout,
                self.procs,
            )
        )

    def task(self, dag_id: str, run_id: str, task_id: str = "book") -> dict[str, Any]:
        return dict(_call(f"{self.api}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"))

    def xcom(self, dag_id: str, run_id: str, key: str, task_id: str = "book") -> Any:
        url = f"{self.api}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        return _call(url)["value"]

    def outcome(self, dag_id: str, run_id: str, task_id: str = "book") -> Any:
        """The task's outcome record: its return value if it succeeded, else ``care360_outcome``."""
        try:
            return self.xcom(dag_id, run_id, "return_value", task_id)
        except urllib.error.HTTPError:
            return self.xcom(dag_id, run_id, "care360_outcome", task_id)

    def booking_in_flight(self, email: str, timeout: float = 120) -> dict[str, Any]:
        """The booking POST for ``email`` that the simulator has received (and is holding)."""

        def probe() -> dict[str, Any] | None:
            for request in self.sim.booking_requests:
                if isinstance(request["body"], dict) and request["body"].get("email") == email:
                    return request
            return None

        return dict(_wait(f"the booking request for {email}", probe, timeout, self.procs))

    def tail(self) -> str:
        return "\n".join((self.logs / f).read_text(errors="replace")[-2000:] for f in ("scheduler.log",))


def _stop(procs: list[subprocess.Popen[bytes]]) -> list[str]:
    """Stop every process group we started; return the names of any still alive afterwards."""
    for proc in procs:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    for proc in procs:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # Workers and uvicorn children share their parent's group: give them a moment.
    stop_by = time.monotonic() + 30
    while any(_group_alive(p.pid) for p in procs) and time.monotonic() < stop_by:
        time.sleep(0.5)
    leftovers = [str(p.args[1]) for p in procs if _group_alive(p.pid)]  # type: ignore[index]
    for proc in procs:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    return leftovers


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("deployment")
    port = _free_port()
    api = f"http://127.0.0.1:{port}"
    home, logs, dags = tmp / "home", tmp / "logs", tmp / "dags"
    logs.mkdir()
    dags.mkdir()
    shutil.copy(EXAMPLE_DAGS / "example_care360_batch.py", dags)
    shutil.copy(ROOT / "tests" / "deployment_dags" / "care360_deploy_dags.py", dags)
    with Care360Simulator(api_key="deploy-" + secrets.token_hex(6)) as sim:
        sim.one_on_one = False  # a second booking of a slot would show as a second appointment
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))},
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            # A read timeout longer than the simulator holds a request, so the try really waits.
            **sim.airflow_connection_env(timeout=[2, 10]),
            **sim.airflow_connection_env("care360_slow", timeout=[2, 25]),
        }
        subprocess.run([airflow_cli(), "db", "migrate"], env=env, check=True, capture_output=True)
        subprocess.run(
            [airflow_cli(), "pools", "set", "care360", "8", "Care360 booking API"],
            env=env,
            check=True,
            capture_output=True,
        )
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for command in (
                ["api-server", "--host", "127.0.0.1", "--port", str(port)],
                ["scheduler"],
                ["dag-processor"],
                ["triggerer"],
            ):
                out = (logs / f"{command[0]}.log").open("wb")
                procs.append(
                    subprocess.Popen(
                        [airflow_cli(), *command],
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            _wait("the API server", lambda: _call(f"{api}/api/v2/monitor/health"), 120, procs)
            for dag_id in (
                DAG_ID,
                "care360_d_book",
                "care360_d_no_check",
                "care360_d_verify",
                "care360_d_batch",
            ):
                _wait(
                    f"{dag_id} to be parsed",
                    lambda d=dag_id: _call(f"{api}/api/v2/dags/{d}")["dag_id"],
                    180,
                    procs,
                )
                _call(f"{api}/api/v2/dags/{dag_id}", "PATCH", {"is_paused": False})
            yield Deployment(api, sim, procs, logs)
        finally:
            leftovers = _stop(procs)
        assert leftovers == [], f"processes left behind: {leftovers}"


def _row(email: str, days: int, conn_id: str = "care360_default") -> dict[str, Any]:
    return {"email": email, "start_time": iso(next_slot(days=days)), "conn_id": conn_id}


def test_killed_task_process_mid_request_is_retried_and_books_once(deployment: Deployment) -> None:
    email = "killed@example.com"
    # The service books 6 s after the request, and the answer is held 8 s: the retry (2 s after the
    # kill) finds nothing yet, and books twice unless it waits out the earlier try's apply window.
    deployment.sim.inject(Fault(200, delay=8, apply_after=6))
    run_id = deployment.trigger("care360_d_book", _row(email, days=5))
    request = deployment.booking_in_flight(email)
    os.kill(_pid_of_client(request["client"][1]), signal.SIGKILL)

    assert deployment.finished("care360_d_book", run_id) == "success", deployment.tail()
    ti = deployment.task("care360_d_book", run_id)
    assert (ti["state"], ti["try_number"]) == ("success", 2)
    assert [a["email"] for a in deployment.sim.appointments].count(email) == 1
    assert deployment.outcome("care360_d_book", run_id)["outcome"] == "already_booked"


def test_heartbeat_timeout_while_the_old_try_waits_books_once(deployment: Deployment) -> None:
    import psutil

    email = "heartbeat@example.com"
    # The old try waits 20 s for its answer; the service books 15 s after the request, after the
    # new try (started once the 8 s heartbeat timeout is noticed) has first looked.
    deployment.sim.inject(Fault(200, delay=20, apply_after=15))
    run_id = deployment.trigger("care360_d_book", _row(email, days=6, conn_id="care360_slow"))
    request = deployment.booking_in_flight(email)
    task_process = psutil.Process(_pid_of_client(request["client"][1]))
    supervisor = task_process.parent()
    assert supervisor is not None
    supervisor.send_signal(signal.SIGKILL)  # no more heartbeats; the task process waits on

    assert deployment.finished("care360_d_book", run_id) == "success", deployment.tail()
    ti = deployment.task("care360_d_book", run_id)
    assert ti["state"] == "success" and ti["try_number"] >= 2
    assert [a["email"] for a in deployment.sim.appointments].count(email) == 1
    if task_process.is_running():
        task_process.kill()  # the orphaned old try: it has nobody left to report to


def test_clearing_a_successful_run_books_nobody_twice(deployment: Deployment) -> None:
    email = "cleared@example.com"
    run_id = deployment.trigger("care360_d_book", _row(email, days=7))
    assert deployment.finished("care360_d_book", run_id) == "success", deployment.tail()
    assert deployment.outcome("care360_d_book", run_id)["outcome"] == "booked"

    _call(f"{deployment.api}/api/v2/dags/care360_d_book/dagRuns/{run_id}/clear", "POST", {"dry_run": False})
    _wait(
        "the cleared task to run again",
        lambda: deployment.task("care360_d_book", run_id)["try_number"] >= 2,
        120,
        deployment.procs,
    )
    assert deployment.finished("care360_d_book", run_id) == "success", deployment.tail()
    ti = deployment.task("care360_d_book", run_id)
    assert (ti["state"], ti["try_number"]) == ("success", 2)
    assert [a["email"] for a in deployment.sim.appointments].count(email) == 1
    assert [r["body"]["email"] for r in deployment.sim.booking_requests].count(email) == 1
    assert deployment.outcome("care360_d_book", run_id)["outcome"] == "already_booked"


def test_without_the_lookup_a_try_after_a_killed_one_fails_as_ambiguous_without_sending(
    deployment: Deployment,
) -> None:
    email = "nocheck@example.com"
    deployment.sim.inject(Fault(200, delay=8, apply_after=1))
    run_id = deployment.trigger("care360_d_no_check", _row(email, days=8))
    request = deployment.booking_in_flight(email)
    os.kill(_pid_of_client(request["client"][1]), signal.SIGKILL)

    assert deployment.finished("care360_d_no_check", run_id) == "failed"
    ti = deployment.task("care360_d_no_check", run_id)
    assert (ti["state"], ti["try_number"]) == ("failed", 2)  # failed at once: retries were left
    assert [r["body"]["email"] for r in deployment.sim.booking_requests].count(email) == 1
    record = deployment.outcome("care360_d_no_check", run_id)
    assert record["outcome"] == "ambiguous"
    assert "ended without recording Care360's answer" in record["message"]
    assert "clearing the task sends the booking again" in record["message"]


def test_without_the_lookup_a_killed_then_cleared_task_sends_once_more_and_succeeds(
    deployment: Deployment,
) -> None:
    """task_state_store survives a clear; the cleared try is a new attempt and must not stay blocked."""
    email = "nocheck-cleared@example.com"
    deployment.sim.inject(Fault(200, delay=8))  # held, never applied: the kill loses it
    run_id = deployment.trigger("care360_d_no_check", _row(email, days=9))
    request = deployment.booking_in_flight(email)
    os.kill(_pid_of_client(request["client"][1]), signal.SIGKILL)
    assert deployment.finished("care360_d_no_check", run_id) == "failed"
    assert deployment.task("care360_d_no_check", run_id)["try_number"] == 2

    _call(
        f"{deployment.api}/api/v2/dags/care360_d_no_check/dagRuns/{run_id}/clear", "POST", {"dry_run": False}
    )
    _wait(
        "the cleared task to run again",
        lambda: deployment.task("care360_d_no_check", run_id)["try_number"] >= 3,
        120,
        deployment.procs,
    )
    assert deployment.finished("care360_d_no_check", run_id) == "success", deployment.tail()
    assert [r["body"]["email"] for r in deployment.sim.booking_requests].count(email) == 2
    assert [a["email"] for a in deployment.sim.appointments].count(email) == 1
    assert deployment.outcome("care360_d_no_check", run_id)["outcome"] == "booked"


def test_two_runs_of_one_row_at_once_with_verify_booking_end_with_one_active_appointment(
    deployment: Deployment,
) -> None:
    email = "twice@example.com"
    row = _row(email, days=10)
    runs = [deployment.trigger("care360_d_verify", row), deployment.trigger("care360_d_verify", row)]
    for run_id in runs:
        assert deployment.finished("care360_d_verify", run_id) == "success", deployment.tail()
    mine = [a for a in deployment.sim.appointments if a["email"] == email]
    assert len([a for a in mine if not a["cancelled"]]) == 1, mine
    records = [deployment.outcome("care360_d_verify", r) for r in runs]
    cancelled = [i for record in records for i in record["cancelled"]]
    assert len(mine) == 1 or set(cancelled) == {a["id"] for a in mine if a["cancelled"]}


def test_a_mapped_batch_with_every_row_three_times_eight_at_once_books_each_invitee_once(
    deployment: Deployment,
) -> None:
    start = next_slot(days=11)
    invitees = [
        {
            "start_time": iso(start + timedelta(minutes=30 * i)),
            "email": f"triple{i:02d}@example.com" if copy != 1 else f"TRIPLE{i:02d}@Example.com",
            "timezone": "UTC",
        }
        for i in range(12)
        for copy in range(3)
    ]
    run_id = deployment.trigger(DAG_ID, {"invitees": invitees})
    assert deployment.finished(DAG_ID, run_id, timeout=300) == "success", deployment.tail()
    booked = [b["email"].lower() for b in deployment.sim.bookings if b["email"].lower().startswith("triple")]
    assert sorted(booked) == [f"triple{i:02d}@example.com" for i in range(12)]
    summary = deployment.xcom(DAG_ID, run_id, "return_value", task_id="write_back")
    assert summary["counts"] == {"booked": 12, "duplicate": 24}


def test_example_batch_through_a_scheduler_and_local_executor(deployment: Deployment) -> None:
    run_id = deployment.trigger(DAG_ID)
    assert deployment.finished(DAG_ID, run_id, timeout=300) == "success", deployment.tail()
    tis = _call(f"{deployment.api}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")["task_instances"]
    mapped = [t for t in tis if t["task_id"] == "book_appointment"]
    assert len(mapped) == 10 and all(t["state"] == "success" for t in mapped)
    assert all(t["pool"] == "care360" for t in mapped)
    emails = [b["email"] for b in deployment.sim.bookings if b["email"].startswith("patient")]
    assert sorted(emails) == [f"patient{i:02d}@example.com" for i in range(10)]
    summary = deployment.xcom(DAG_ID, run_id, "return_value", task_id="write_back")
    assert summary["counts"] == {"booked": 10}


# -- the batch operator ---------------------------------------------------------------------------------


def _batch(prefix: str, n: int, days: int) -> list[dict[str, Any]]:
    first = next_slot(days=days)
    return [
        {"email": f"{prefix}{i:02d}@example.com", "start_time": iso(first + timedelta(minutes=30 * i))}
        for i in range(n)
    ]


def _booked_once(deployment: Deployment, rows: list[dict[str, Any]]) -> None:
    deployment.sim.wait_pending()
    emails = [a["email"] for a in deployment.sim.appointments if not a["cancelled"]]
    assert sorted(e for e in emails if e in {r["email"] for r in rows}) == sorted(r["email"] for r in rows)


def _settled(summary: dict[str, Any], n: int) -> None:
    assert summary["rows"] == n and summary["problems"] == []
    assert sum(summary["counts"].get(k, 0) for k in ("booked", "already_booked")) == n


def _batch_client_pid(deployment: Deployment, prefix: str, timeout: float = 120) -> int:
    request = _wait(
        f"a booking of the {prefix} batch",
        lambda: next(
            (
                r
                for r in reversed(deployment.sim.booking_requests)
                if str(r["body"].get("email", "")).startswith(prefix)
            ),
            None,
        ),
        timeout,
        deployment.procs,
    )
    return _pid_of_client(request["client"][1])


def test_a_batch_whose_task_process_is_killed_mid_batch_books_every_row_once(deployment: Deployment) -> None:
    rows = _batch("bkill", 16, days=12)
    deployment.sim.booking_latency = 0.6  # bookings in flight when the kill lands
    try:
        run_id = deployment.trigger("care360_d_batch", {"rows": rows})
        _wait(
            "a few bookings of the batch",
            lambda: (
                len([r for r in deployment.sim.booking_requests if r["body"]["email"].startswith("bkill")])
                >= 5
            ),
            120,
            deployment.procs,
        )
        os.kill(_batch_client_pid(deployment, "bkill"), signal.SIGKILL)
        assert deployment.finished("care360_d_batch", run_id) == "success", deployment.tail()
    finally:
        deployment.sim.booking_latency = None
    assert deployment.task("care360_d_batch", run_id)["try_number"] == 2
    _booked_once(deployment, rows)
    _settled(deployment.xcom("care360_d_batch", run_id, "return_value"), len(rows))


def test_a_batch_whose_supervisor_is_killed_books_nothing_more_from_the_old_process(
    deployment: Deployment,
) -> None:
    import psutil

    rows = _batch("bsup", 16, days=13)
    deployment.sim.booking_latency = 0.6
    try:
        run_id = deployment.trigger("care360_d_batch", {"rows": rows})
        task_process = psutil.Process(_batch_client_pid(deployment, "bsup"))
        supervisor = task_process.parent()
        assert supervisor is not None
        supervisor.send_signal(signal.SIGKILL)  # no more heartbeats, no more journal writes
        killed_at = time.time()
        assert deployment.finished("care360_d_batch", run_id) == "success", deployment.tail()
    finally:
        deployment.sim.booking_latency = None
    assert deployment.task("care360_d_batch", run_id)["try_number"] >= 2
    _booked_once(deployment, rows)
    # The old process could not write its journal once its supervisor was gone: it started no booking
    # after that (a request already on the wire may still finish, within the booking latency).
    old_ports = {
        r["client"][1]
        for r in deployment.sim.booking_requests
        if r["body"]["email"].startswith("bsup") and r["at"] < killed_at
    }
    late = [
        r
        for r in deployment.sim.booking_requests
        if r["body"]["email"].startswith("bsup") and r["client"][1] in old_ports and r["at"] > killed_at + 1.0
    ]
    assert late == []
    _settled(deployment.xcom("care360_d_batch", run_id, "return_value"), len(rows))
    if task_process.is_running():
        task_process.kill()


def test_clearing_a_finished_batch_books_nothing_again(deployment: Deployment) -> None:
    rows = _batch("bclear", 8, days=14)
    run_id = deployment.trigger("care360_d_batch", {"rows": rows})
    assert deployment.finished("care360_d_batch", run_id) == "success", deployment.tail()
    posts = len(deployment.sim.booking_requests)
    _call(f"{deployment.api}/api/v2/dags/care360_d_batch/dagRuns/{run_id}/clear", "POST", {"dry_run": False})
    _wait(
        "the cleared batch to run again",
        lambda: deployment.task("care360_d_batch", run_id)["try_number"] >= 2,
        120,
        deployment.procs,
    )
    assert deployment.finished("care360_d_batch", run_id) == "success", deployment.tail()
    assert len(deployment.sim.booking_requests) == posts  # a fresh start that looked every row up
    summary = deployment.xcom("care360_d_batch", run_id, "return_value")
    assert summary["counts"] == {"already_booked": len(rows)}
    _booked_once(deployment, rows)


def test_a_quota_makes_the_batch_defer_to_the_triggerer_and_resume(deployment: Deployment) -> None:
    rows = _batch("bquota", 8, days=15)
    deployment.sim.quota, deployment.sim.quota_window = 3, 12.0
    try:
        started = time.monotonic()
        run_id = deployment.trigger("care360_d_batch", {"rows": rows})
        _wait(
            "the batch to defer",
            lambda: deployment.task("care360_d_batch", run_id)["state"] == "deferred",
            120,
            deployment.procs,
        )
        assert deployment.finished("care360_d_batch", run_id) == "success", deployment.tail()
    finally:
        deployment.sim.quota = None
    assert time.monotonic() - started >= 12.0 * 2  # three quota windows for eight rows
    assert deployment.task("care360_d_batch", run_id)["try_number"] == 1  # resumed, not retried
    _booked_once(deployment, rows)
    _settled(deployment.xcom("care360_d_batch", run_id, "return_value"), len(rows))
