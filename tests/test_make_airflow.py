"""
`make airflow` for a newcomer: a real local Airflow with the provider, reachable, bookable, and gone
after Ctrl-C (SIGINT) with no process left behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

try:
    from airflow_provider_care360.version_compat import AIRFLOW_V_3_3_PLUS
except ImportError:  # pragma: no cover
    AIRFLOW_V_3_3_PLUS = False

ROOT = Path(__file__).resolve().parent.parent


def _call(url: str, token: str | None = None, method: str = "GET", body: Any = None) -> Any:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(
        urllib.request.Request(url, data, headers, method=method), timeout=30
    ) as answer:
        return json.loads(answer.read())


@pytest.mark.skipif(not AIRFLOW_V_3_3_PLUS, reason="make airflow runs the latest supported release")
def test_make_airflow_serves_the_provider_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    import psutil

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_", "PYTEST_"))}
    env["CARE360_LOCAL_HOME"] = str(tmp_path / "home")
    out = (tmp_path / "out.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "airflow_local.py"), "--port", "0"],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=ROOT,
    )
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 300
        while "Ctrl-C stops everything." not in (text := (tmp_path / "out.log").read_text()):
            assert proc.poll() is None, text
            assert time.monotonic() < deadline, text
            time.sleep(0.5)
        url = re.search(r"Airflow is up: (http://127\.0\.0\.1:\d+)", text)
        login = re.search(r"login: (\S+) / (\S+)", text)
        ledger = re.search(r"its ledger: (http://127\.0\.0\.1:\d+/_simulator/bookings)", text)
        assert url and login and ledger, text
        api = url.group(1)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 3  # API server, scheduler, DAG processor (and their workers)

        token = _call(f"{api}/auth/token", None, "POST", {"username": login[1], "password": login[2]})[
            "access_token"
        ]
        connection = _call(f"{api}/api/v2/connections/care360_default", token)
        assert connection["conn_type"] == "care360" and connection["host"].startswith("http://127.0.0.1:")
        assert _call(f"{api}/api/v2/pools/care360", token)["slots"] == 4
        # What the UI's Test button sends for the stored connection: its fields, the key masked.
        ui_test = {"connection_id": "care360_default", "conn_type": "care360", "host": connection["host"]}
        tested = _call(
            f"{api}/api/v2/connections/test", token, "POST", {**ui_test, "port": 0, "password": "***"}
        )
        assert tested == {
            "status": True,
            "message": f"Connected to Care360 at {connection['host']}; the API key was accepted.",
        }

        start = (datetime.now(UTC) + timedelta(days=3)).replace(hour=15, minute=0, second=0, microsecond=0)
        conf = {"start_time": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "email": "newcomer@example.com"}
        dag = "example_care360_single_booking"
        run = _call(f"{api}/api/v2/dags/{dag}/dagRuns", token, "POST", {"logical_date": None, "conf": conf})
        run_url = f"{api}/api/v2/dags/{dag}/dagRuns/{run['dag_run_id']}"
        deadline = time.monotonic() + 240
        while (state := _call(run_url, token)["state"]) not in ("success", "failed"):
            assert time.monotonic() < deadline, state
            time.sleep(1)
        assert state == "success"
        with urllib.request.urlopen(ledger.group(1), timeout=10) as answer:
            assert [b["email"] for b in json.loads(answer.read())] == ["newcomer@example.com"]
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends
        try:
            proc.wait(timeout=90)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    text = (tmp_path / "out.log").read_text()
    assert proc.returncode == 0, text
    assert "Stopped: no process left." in text
    psutil.wait_procs(children, timeout=10)
    assert [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE] == []
