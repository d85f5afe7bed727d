"""
`make airflow`: the provider in a real, local Airflow, to click through.

Starts, on loopback only: the Care360 simulator, and an Airflow (the venv's release) with an API
server, a scheduler and a DAG processor, the example DAGs, a ``care360_default`` connection that
points at the simulator (stored in the metadata DB, so it shows under Admin > Connections) and the
``care360`` pool. Prints the URL and the login, then waits. Ctrl-C (or SIGTERM) stops every process
it started, by process group, and says so.

The home is ``.airflow-local/`` (or ``$CARE360_LOCAL_HOME``); it is kept between runs, so runs and
connections you make survive a restart. ``--port`` picks the API server's port (default 8080; 0 for
a free one).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from airflow_provider_care360.testing import Care360Simulator

ROOT = Path(__file__).resolve().parent.parent
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
USER = "admin"
ON_DEMAND = ("example_care360_single_booking", "example_care360_batch")  # unpaused: trigger them


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _airflow(args: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"airflow {' '.join(args[:2])} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")


def _api(url: str, token: str | None = None, method: str = "GET", body: Any = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read() or b"null")


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process group we started, then SIGKILL what is left after 30 s."""
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    while time.monotonic() < deadline and any(_alive(p.pid) for p in procs):
        time.sleep(0.2)  # workers and API server children share their parent's group
    for proc in procs:
        if _alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make airflow", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8080, help="the API server's port (0: a free one)")
    args = parser.parse_args(argv)
    port = args.port or _free_port()
    home = Path(os.environ.get("CARE360_LOCAL_HOME") or ROOT / ".airflow-local").resolve()
    logs = home / "process-logs"
    logs.mkdir(parents=True, exist_ok=True)
    passwords = home / "passwords.json"
    if not passwords.exists():
        passwords.write_text(json.dumps({USER: secrets.token_urlsafe(12)}))
    password = json.loads(passwords.read_text())[USER]
    url = f"http://127.0.0.1:{port}"

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    sim = Care360Simulator(api_key="local-" + secrets.token_hex(8), rate_limit=30, rate_window=60).start()
    # The simulator's throwaway key, for a person (or the browser test) adding a connection by hand.
    key_file = home / "simulator-api-key"
    key_file.write_text(sim.api_key)
    key_file.chmod(0o600)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))},
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "example_dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
            "AIRFLOW__API_AUTH__JWT_SECRET": _secret(home),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        }
        print(f"Airflow home: {home}", flush=True)
        print("- migrating the metadata DB ...", flush=True)
        _airflow(["db", "migrate"], env)
        _airflow(["pools", "set", "care360", "4", "Care360 booking API: at most 4 bookings at once"], env)
        subprocess.run([AIRFLOW, "connections", "delete", "care360_default"], env=env, capture_output=True)
        _airflow(["connections", "add", "care360_default", "--conn-json", sim.connection_uri_json()], env)

        for command in (
            ["api-server", "--host", "127.0.0.1", "--port", str(port)],
            ["scheduler"],
            ["dag-processor"],
        ):
            out = (logs / f"{command[0]}.log").open("wb")
            procs.append(
                subprocess.Popen(
                    [AIRFLOW, *command], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
        print("- starting the API server, scheduler and DAG processor ...", flush=True)
        token = _wait_ready(url, password, procs, stop)
        if token is None:
            return 1 if not stop.is_set() else 0
        for dag_id in ON_DEMAND:
            _api(f"{url}/api/v2/dags/{dag_id}", token, "PATCH", {"is_paused": False})
        # Port 0, which the hook ignores: Airflow 3.3.2's UI tests a connection without a port as
        # port 0 and refuses it as "another destination" (fixed upstream, apache/airflow#73298); the
        # CLI cannot store a 0, the REST API can.
        _api(
            f"{url}/api/v2/connections/care360_default?update_mask=port",
            token,
            "PATCH",
            {"connection_id": "care360_default", "conn_type": "care360", "port": 0},
        )
        print(f"\nAirflow is up: {url}", flush=True)
        print(f"  login: {USER} / {password}")
        print(f"  Care360 simulator: {sim.url} (connection care360_default)")
        print(f"  its ledger: {sim.url}/_simulator/bookings; its API key is in {key_file}")
        print(f"  example DAGs {', '.join(ON_DEMAND)} are unpaused: trigger them from the UI")
        print(f"  process logs: {logs}")
        print("Ctrl-C stops everything.", flush=True)
        while not stop.is_set():
            for proc in procs:
                if proc.poll() is not None:
                    print(f"airflow {proc.args[1]} exited ({proc.returncode}); stopping", flush=True)  # type: ignore[index]
                    stop.set()
            stop.wait(1)
        return 0
    finally:
        print("\nStopping ...", flush=True)
        _stop(procs)
        sim.stop()
        left = [str(p.args[1]) for p in procs if _alive(p.pid)]  # type: ignore[index]
        print("Stopped: no process left." if not left else f"Still running: {left}", flush=True)


def _secret(home: Path) -> str:
    """One JWT secret per home, so tokens and task runs survive a restart."""
    path = home / "jwt-secret"
    if not path.exists():
        path.write_text(secrets.token_hex(32))
    return path.read_text().strip()


def _wait_ready(
    url: str, password: str, procs: list[subprocess.Popen[bytes]], stop: threading.Event
) -> str | None:
    """Wait for the API server and the example DAGs; return an API token, or None if we gave up."""
    deadline = time.monotonic() + 300
    token = None
    while not stop.is_set() and time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            print("an Airflow process exited during start-up; see the process logs", flush=True)
            return None
        try:
            if token is None:
                answer = _api(f"{url}/auth/token", None, "POST", {"username": USER, "password": password})
                token = str(answer["access_token"])
            if all(_api(f"{url}/api/v2/dags/{d}", token)["dag_id"] for d in ON_DEMAND):
                return token
        except (urllib.error.URLError, ConnectionError, KeyError, TimeoutError):
            pass
        stop.wait(1)
    if not stop.is_set():
        print("timed out waiting for Airflow to start; see the process logs", flush=True)
    return None


if __name__ == "__main__":
    sys.exit(main())
