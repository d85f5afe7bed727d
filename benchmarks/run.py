"""
`make bench`: what the provider costs, each figure measured beside its floor or anchor in one run.

1. Parse-time import cost of the operator module, against the HTTP provider's operator module.
2. Client overhead: 1,000 bookings through Care360Hook against 1,000 POSTs from a bare
   requests.Session, to the same simulator.
3. Airflow overhead: N=100 mapped ScheduleAppointmentOperator tasks against the same DAG with an
   operator that does nothing, both through `airflow dags test`. 3c: the cost of looking before
   booking: the same DAG with check_existing=True (the default) against check_existing=False.
4. Throughput under a rate limit: N=60 bookings against a simulator allowing R per window (with
   Retry-After), against the floor of ceil(N/R) windows; with the provider's retry policy, and
   with Airflow's default retry settings.

`--quick` runs each small, to keep the code from rotting (CI). Figures are medians of repeats,
alternating the two sides so machine noise falls on both.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

PYTHON = sys.executable
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
API_KEY = "bench-key"
EVENT = "85f13305-0647-4473-9e63-0a56af405f6f"


@dataclass
class Row:
    number: str
    what: str
    ours: str
    floor: str
    ratio: str
    target: str
    met: str


def slot(i: int, day: int = 2) -> str:
    base = (datetime.now(UTC) + timedelta(days=day)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (base + timedelta(minutes=30 * i)).strftime("%Y-%m-%dT%H:%M:%SZ")


class Simulator:
    """The simulator in its own process, so its work never shares the measured interpreter."""

    def __init__(self, *args: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="care360-bench-sim-"))
        port_file = self.dir / "port"
        self.proc = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "airflow_provider_care360.testing",
                "--port",
                "0",
                "--api-key",
                API_KEY,
                "--port-file",
                str(port_file),
                *args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the simulator did not start")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{port_file.read_text()}"

    def admin(self, path: str, post: bool = False) -> Any:
        req = urllib.request.Request(self.url + "/_simulator" + path, data=b"" if post else None)
        with urllib.request.urlopen(req, timeout=10) as response:
            return json.loads(response.read())

    def reset(self) -> None:
        self.admin("/reset", post=True)

    def bookings(self) -> list[dict[str, Any]]:
        return list(self.admin("/bookings"))

    def statuses(self) -> list[Any]:
        return [r["status"] for r in self.admin("/requests")]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def conn_env(self) -> dict[str, str]:
        return {
            "AIRFLOW_CONN_CARE360_DEFAULT": json.dumps(
                {"conn_type": "care360", "password": API_KEY, "host": self.url}
            ),
            # HttpHook sends a connection's extra as request headers.
            "AIRFLOW_CONN_CARE360_HTTP": json.dumps(
                {"conn_type": "http", "host": self.url, "extra": {"cv-api-key": API_KEY}}
            ),
        }


# -- 1. import cost --------------------------------------------------------------------------------

_PRELUDE = (
    "import time, airflow.sdk\n"
    "from airflow.providers.common.compat import sdk as c\n"
    "c.BaseOperator; c.BaseHook; c.AirflowFailException\n"
)


def _import_ms(module: str | None) -> float:
    stmt = f"import {module}" if module else "pass"
    code = _PRELUDE + f"t = time.perf_counter()\n{stmt}\nprint((time.perf_counter() - t) * 1000)\n"
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench_import(repeats: int) -> Row:
    ours, anchor, base = [], [], []
    for _ in range(repeats):
        base.append(_import_ms(None))
        ours.append(_import_ms("airflow_provider_care360.operators.care360"))
        anchor.append(_import_ms("airflow.providers.http.operators.http"))
    b = statistics.median(base)
    o, a = statistics.median(ours) - b, statistics.median(anchor) - b
    return Row(
        "1",
        "import the operator module (adds, ms)",
        f"{o:.1f} ms",
        f"{a:.1f} ms (http provider)",
        f"{o / a:.3f}",
        "<= 5 ms",
        "yes" if o <= 5 else "NO",
    )


# -- 2. client overhead ---------------------------------------------------------------------------


def bench_client(n: int, repeats: int, sim: Simulator) -> Row:
    import requests

    os.environ.update(sim.conn_env())
    from airflow_provider_care360.hooks.care360 import Care360Hook

    def ours() -> float:
        sim.reset()
        hook = Care360Hook()
        t = time.perf_counter()
        for i in range(n):
            hook.schedule_appointment(
                event_type_id=EVENT,
                start_time=slot(i),
                email=f"p{i}@example.com",
                timezone="UTC",
                location="zoom_conference",
            )
        elapsed = time.perf_counter() - t
        hook.close()
        return elapsed

    def bare() -> float:
        sim.reset()
        session = requests.Session()
        headers = {"cv-api-key": API_KEY}
        t = time.perf_counter()
        for i in range(n):
            body = {
                "eventTypeId": EVENT,
                "startTime": slot(i),
                "email": f"p{i}@example.com",
                "timezone": "UTC",
                "location": "zoom_conference",
            }
            response = session.post(
                sim.url + "/api/v1/calendar/appointments", json=body, headers=headers, timeout=(10, 30)
            )
            if response.status_code != 200 or response.json().get("success") is not True:
                raise RuntimeError(f"bare POST failed: {response.status_code}")
        elapsed = time.perf_counter() - t
        session.close()
        return elapsed

    ours(), bare()  # warm both paths (imports, first connection)
    a, b = [], []
    for k in range(repeats):
        if k % 2:
            b.append(bare()), a.append(ours())
        else:
            a.append(ours()), b.append(bare())
    if len(sim.bookings()) != n:
        raise RuntimeError("the last run did not book every invitee")
    o, f = statistics.median(a), statistics.median(b)
    return Row(
        "2",
        f"{n} bookings through Care360Hook",
        f"{o * 1000 / n:.3f} ms/booking",
        f"{f * 1000 / n:.3f} ms (bare requests.Session)",
        f"{o / f:.3f}",
        "<= 1.10",
        "yes" if o / f <= 1.10 else "NO",
    )


# -- 3 and 4: DAG runs through `airflow dags test` ------------------------------------------------

_DAGS = '''
from __future__ import annotations
from datetime import datetime, timedelta, timezone
from airflow.providers.common.compat.sdk import DAG, BaseOperator, task
from airflow_provider_care360.operators.care360 import ScheduleAppointmentOperator

N = {n}

class DoNothingOperator(BaseOperator):
    """The floor: the same mapped task, minus the booking."""
    def __init__(self, *, event_type_id, start_time, invitee_email, timezone, location, **kwargs):
        super().__init__(**kwargs)
    def execute(self, context):
        return {{"status": 200, "success": True, "message": "Meeting scheduled successfully"}}

class DoNothingTemplatedOperator(DoNothingOperator):
    """The same no-op, with our template fields: Airflow renders and stores them for each task."""
    template_fields = ScheduleAppointmentOperator.template_fields
    def __init__(self, *, event_type_id, start_time, invitee_email, timezone, location, **kwargs):
        super().__init__(event_type_id=event_type_id, start_time=start_time, invitee_email=invitee_email,
                         timezone=timezone, location=location, **kwargs)
        self.event_type_id, self.start_time, self.invitee_email = event_type_id, start_time, invitee_email
        self.timezone, self.location = timezone, location
        self.first_name = self.last_name = self.tracking = None
        self.care360_conn_id = "care360_default"

@task
def invitees():
    base = (datetime.now(timezone.utc) + timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)
    return [{{"event_type_id": "{event}",
             "start_time": (base + timedelta(minutes=30 * i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
             "invitee_email": f"p{{i}}@example.com", "timezone": "UTC", "location": "zoom_conference"}}
            for i in range(N)]

common = dict(schedule=None, start_date=datetime(2025, 1, 1), catchup=False)

with DAG("bench_ours", **common):
    ScheduleAppointmentOperator.partial(task_id="book").expand_kwargs(invitees())

with DAG("bench_ours_no_check", **common):
    ScheduleAppointmentOperator.partial(task_id="book", check_existing=False).expand_kwargs(invitees())

# The user's real alternative: the HTTP provider's operator, the same rows as the same JSON body,
# the key sent as the header the HTTP connection's extra names (as the HTTP provider documents).
try:
    from airflow.providers.http.operators.http import HttpOperator
except ImportError:  # the bench extra is not installed
    HttpOperator = None

@task
def bodies():
    import json
    return [{{"data": json.dumps({{"eventTypeId": r["event_type_id"], "startTime": r["start_time"],
                                   "email": r["invitee_email"], "timezone": r["timezone"],
                                   "location": r["location"]}})}}
            for r in invitees.function()]

if HttpOperator is not None:
    with DAG("bench_http_operator", **common):
        HttpOperator.partial(
            task_id="book",
            http_conn_id="care360_http",
            endpoint="/api/v1/calendar/appointments",
            method="POST",
            headers={{"Content-Type": "application/json"}},
        ).expand_kwargs(bodies())

with DAG("bench_empty", **common):
    DoNothingOperator.partial(task_id="book").expand_kwargs(invitees())

with DAG("bench_empty_templated", **common):
    DoNothingTemplatedOperator.partial(task_id="book").expand_kwargs(invitees())

# Throughput: Airflow's default retry_delay (300 s); the provider's policy waits what Retry-After says.
with DAG("bench_rate_policy", **common):
    ScheduleAppointmentOperator.partial(task_id="book", retries=20).expand_kwargs(invitees())

try:
    from airflow.providers.common.compat.sdk import ExceptionRetryPolicy
except ImportError:
    DEFAULTS = {{}}
else:  # a policy with no rules defers to Airflow's own retry settings
    DEFAULTS = {{"retry_policy": ExceptionRetryPolicy(rules=[])}}

with DAG("bench_rate_defaults", **common):
    ScheduleAppointmentOperator.partial(task_id="book", **DEFAULTS).expand_kwargs(invitees())
'''

_FINISHED = re.compile(r"DagRun Finished: dag_id=(\S+),.*?run_duration=([0-9.]+), state=(\w+)")


class AirflowHome:
    def __init__(self, n: int) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="care360-bench-home-"))
        dags = self.home / "dags"
        dags.mkdir()
        (dags / "bench_dags.py").write_text(textwrap.dedent(_DAGS).format(n=n, event=EVENT))
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))},
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        }
        subprocess.run([AIRFLOW, "db", "migrate"], env=self.env, check=True, capture_output=True)

    def dags_test(self, dag_id: str, sim: Simulator) -> tuple[float, str, int]:
        """Run one DAG; return its run_duration (s), state and the count of failed task instances."""
        env = {**self.env, **sim.conn_env(), "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO"}
        proc = subprocess.run([AIRFLOW, "dags", "test", dag_id], env=env, capture_output=True, text=True)
        out = proc.stdout + proc.stderr
        found = [m for m in _FINISHED.finditer(out) if m.group(1) == dag_id]
        if not found:
            raise RuntimeError(f"{dag_id} did not finish:\n{out[-3000:]}")
        failed = self._failed_count(dag_id)
        return float(found[-1].group(2)), found[-1].group(3), failed

    def _failed_count(self, dag_id: str) -> int:
        import sqlite3

        with sqlite3.connect(self.home / "airflow.db") as db:
            run_id = db.execute(
                "SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)
            ).fetchone()[0]
            return int(
                db.execute(
                    "SELECT count(*) FROM task_instance WHERE dag_id = ? AND run_id = ? AND state = 'failed'",
                    (dag_id, run_id),
                ).fetchone()[0]
            )

    def close(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)


def bench_airflow(home: AirflowHome, n: int, repeats: int, sim: Simulator) -> list[Row]:
    runs: dict[str, list[float]] = {
        "bench_ours": [],
        "bench_empty": [],
        "bench_empty_templated": [],
        "bench_ours_no_check": [],
        "bench_http_operator": [],
    }
    for k in range(repeats):
        order = list(runs) if k % 2 == 0 else list(reversed(runs))
        for dag_id in order:
            sim.reset()
            duration, state, failed = home.dags_test(dag_id, sim)
            if state != "success" or failed:
                raise RuntimeError(f"{dag_id}: {state}, {failed} failed")
            if not dag_id.startswith("bench_empty") and len(sim.bookings()) != n:
                raise RuntimeError(f"{dag_id} did not book every invitee")
            runs[dag_id].append(duration)
    o, f, t, u, h = (statistics.median(runs[d]) for d in runs)
    return [
        Row(
            "3",
            f"DAG run, {n} mapped bookings (dags test)",
            f"{o:.2f} s",
            f"{h:.2f} s (HttpOperator, same rows)",
            f"{o / h:.3f}",
            "<= 1.00",
            "yes" if o / h <= 1.00 else "NO",
        ),
        Row(
            "3a",
            "  the same, against a no-op mapped operator",
            f"{o:.2f} s",
            f"{f:.2f} s (no-op mapped operator)",
            f"{o / f:.3f}",
            "(what Airflow costs)",
            "-",
        ),
        Row(
            "3b",
            "  the same, against a no-op with our template fields",
            f"{o:.2f} s",
            f"{t:.2f} s (templated no-op)",
            f"{o / t:.3f}",
            "<= 1.10",
            "yes" if o / t <= 1.10 else "NO",
        ),
        Row(
            "3c",
            f"  {n} mapped bookings, check_existing=True (lookup first)",
            f"{o:.2f} s ({n / o:.2f} bookings/s)",
            f"{u:.2f} s ({n / u:.2f} bookings/s, check_existing=False)",
            f"{o / u:.3f}",
            "<= 1.05",
            "yes" if o / u <= 1.05 else "NO",
        ),
    ]


def bench_throughput(home: AirflowHome, n: int, limit: int, window: float) -> list[Row]:
    from airflow_provider_care360.retry import RETRY_POLICIES_SUPPORTED

    floor = math.ceil(n / limit) * window
    rows = []
    sim = Simulator("--rate-limit", str(limit), "--rate-window", str(window))
    try:
        variants = [("bench_rate_policy", "provider retry policy")] if RETRY_POLICIES_SUPPORTED else []
        variants.append(("bench_rate_defaults", "Airflow default retry settings"))
        for dag_id, label in variants:
            sim.reset()
            duration, state, failed = home.dags_test(dag_id, sim)
            booked = len(sim.bookings())
            throttled = sim.statuses().count(429)
            ok = failed == 0 and booked == n and duration <= 1.5 * floor
            rows.append(
                Row(
                    "4" + ("a" if dag_id == "bench_rate_policy" else "b"),
                    f"{n} bookings at {limit}/{window:g} s: {label}",
                    f"{duration:.1f} s; {booked} booked, {failed} failed, {throttled} x 429",
                    f"{floor:.1f} s (ceil(N/R) windows)",
                    f"{duration / floor:.3f}",
                    "<= 1.5, 0 failed" if dag_id == "bench_rate_policy" else "(comparison)",
                    ("yes" if ok else "NO") if dag_id == "bench_rate_policy" else "-",
                )
            )
    finally:
        sim.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI")
    parser.add_argument("--rows", default="1,2,3,4", help="which benchmarks to run, e.g. 3 or 1,2")
    args = parser.parse_args()
    q = args.quick
    only = {int(r) for r in args.rows.split(",")}
    sizes = dict(
        imports=3 if q else 15,
        client_n=100 if q else 1000,
        client_rep=1 if q else 7,
        dag_n=5 if q else 100,
        dag_rep=1 if q else 3,
        rate_n=6 if q else 60,
        rate_limit=3 if q else 12,
        rate_window=2.0 if q else 5.0,
    )

    from importlib.metadata import version

    print(
        f"Care360 provider benchmarks{' (quick)' if q else ''}: Python {platform.python_version()}, "
        f"apache-airflow {version('apache-airflow')}, {platform.machine()} with {os.cpu_count()} cores, "
        f"{platform.platform()}",
        flush=True,
    )
    started = time.monotonic()
    rows = [bench_import(sizes["imports"])] if 1 in only else []
    print(f"  import cost measured ({time.monotonic() - started:.0f} s)", flush=True)
    sim = Simulator()
    home = AirflowHome(sizes["dag_n"])
    try:
        if 2 in only:
            rows.append(bench_client(sizes["client_n"], sizes["client_rep"], sim))
        print(f"  client overhead measured ({time.monotonic() - started:.0f} s)", flush=True)
        if 3 in only:
            rows.extend(bench_airflow(home, sizes["dag_n"], sizes["dag_rep"], sim))
        print(f"  Airflow overhead measured ({time.monotonic() - started:.0f} s)", flush=True)
    finally:
        sim.close()
    rate_home = AirflowHome(sizes["rate_n"])
    try:
        if 4 in only:
            rows.extend(
                bench_throughput(rate_home, sizes["rate_n"], sizes["rate_limit"], sizes["rate_window"])
            )
    finally:
        home.close()
        rate_home.close()

    if q:  # too small for the targets to mean anything: quick mode only keeps the code running
        for row in rows:
            row.met = "- (quick)"
    headers = ["#", "measured", "ours", "floor / anchor (same run)", "ratio", "target", "met"]
    table = [headers] + [[r.number, r.what, r.ours, r.floor, r.ratio, r.target, r.met] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    print()
    for i, row in enumerate(table):
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print(f"\n{len(rows)} rows in {time.monotonic() - started:.0f} s; medians of repeats, sides alternated.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
