"""
A real Airflow 3.3 deployment on loopback: scheduler, DAG processor and API server with the
LocalExecutor (SQLite, throwaway home). Example DAG 3 is triggered through the REST API, runs to the
end, and the simulator's ledger shows each booking once. Everything is shut down afterwards, and the
test checks that no process is left behind.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_care360.simulator import Care360Simulator
from support import EXAMPLE_DAGS, airflow_cli

try:
    from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_3_PLUS
except ImportError:  # pragma: no cover
    AIRFLOW_V_3_3_PLUS = False

pytestmark = pytest.mark.skipif(not AIRFLOW_V_3_3_PLUS, reason="the deployment test targets Airflow 3.3")

DAG_ID = "example_care360_batch"


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
        time.sleep(1)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_example_batch_through_a_scheduler_and_local_executor(tmp_path: Path) -> None:
    port = _free_port()
    api = f"http://127.0.0.1:{port}"
    home = tmp_path / "home"
    logs = tmp_path / "logs"
    logs.mkdir()
    with Care360Simulator(api_key="deploy-" + secrets.token_hex(6)) as sim:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))},
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLE_DAGS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            **sim.airflow_connection_env(),
        }
        subprocess.run([airflow_cli(), "db", "migrate"], env=env, check=True, capture_output=True)
        subprocess.run(
            [airflow_cli(), "pools", "set", "care360", "4", "Care360 booking API"],
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
            _wait("the DAG to be parsed", lambda: _call(f"{api}/api/v2/dags/{DAG_ID}")["dag_id"], 180, procs)
            _call(f"{api}/api/v2/dags/{DAG_ID}", "PATCH", {"is_paused": False})
            run = _call(f"{api}/api/v2/dags/{DAG_ID}/dagRuns", "POST", {"logical_date": None})
            run_url = f"{api}/api/v2/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}"
            state = _wait(
                "the DAG run to finish",
                lambda: (s := _call(run_url)["state"]) in ("success", "failed") and s,
                300,
                procs,
            )
            tis = _call(f"{run_url}/taskInstances")["task_instances"]
        finally:
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
            # Workers and gunicorn/uvicorn children share their parent's group: give them a moment.
            stop_by = time.monotonic() + 30
            while any(_group_alive(p.pid) for p in procs) and time.monotonic() < stop_by:
                time.sleep(0.5)
            leftovers = [p.args[1] for p in procs if _group_alive(p.pid)]
            for proc in procs:
                if _group_alive(proc.pid):
                    os.killpg(proc.pid, signal.SIGKILL)

        booked = sim.bookings
    details = "\n".join((logs / f).read_text(errors="replace")[-1500:] for f in ("scheduler.log",))
    assert state == "success", details
    mapped = [t for t in tis if t["task_id"] == "book_appointment"]
    assert len(mapped) == 10 and all(t["state"] == "success" for t in mapped)
    assert all(t["pool"] == "care360" for t in mapped)
    emails = [b["email"] for b in booked]
    assert sorted(emails) == [f"patient{i:02d}@example.com" for i in range(10)]
    assert leftovers == [], f"processes left behind: {leftovers}"
