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
5. BatchScheduleAppointmentOperator under a rate limit: 1,000 rows in one task against
   ceil(N/R)*W (its wall time), beside the same rows (scaled) as mapped ScheduleAppointmentOperator
   and HttpOperator tasks; and under a limit below what the batch reaches.
6. Unthrottled, 50 ms a request: the batch's bookings per second at concurrency 1, 4 and 8 against
   mapped ScheduleAppointmentOperator tasks.
7. Lookups per booking: a fresh batch (from 6), one under 429s (from 5), and a retry after a quota
   ended try 1 (the lookups of try 2 against the rows try 1 left).
8. Peak RSS of the `airflow dags test` process running a batch of 1,000 and 10,000 rows, and its
   growth over the same DAG with 10 rows.

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
        for name in self.template_fields:  # the rest (first_name, row_key, ...): unset, as in the rows
            if not hasattr(self, name):
                setattr(self, name, None)
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


@dataclass
class DagRun:
    duration: float
    state: str
    failed: int
    peak_rss_mb: float
    log: str


def _unix(value: Any) -> float | None:
    if value is None:
        return None
    when = datetime.fromisoformat(str(value))
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


_FINISHED = re.compile(r"DagRun Finished: dag_id=(\S+),.*?run_duration=([0-9.]+), state=(\w+)")


class AirflowHome:
    def __init__(self, n: int, extra_dags: dict[str, str] | None = None) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="care360-bench-home-"))
        dags = self.home / "dags"
        dags.mkdir()
        (dags / "bench_dags.py").write_text(textwrap.dedent(_DAGS).format(n=n, event=EVENT))
        for name, text in (extra_dags or {}).items():
            (dags / name).write_text(text)
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
        run = self.run(dag_id, sim)
        return run.duration, run.state, run.failed

    def run(self, dag_id: str, sim: Simulator, conf: dict[str, Any] | None = None) -> DagRun:
        """
        Run one DAG through `airflow dags test` (with ``conf``); also measure the process's peak RSS.

        `airflow dags test` runs every task inside its own process (no supervisor, no fork), so the
        peak RSS of that process is the tasks' peak plus Airflow's own baseline.
        """
        env = {**self.env, **sim.conn_env(), "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO"}
        args = [AIRFLOW, "dags", "test", dag_id] + (["--conf", json.dumps(conf)] if conf else [])
        with tempfile.TemporaryFile("w+") as log:
            proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
            _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage, not all children's
            proc.returncode = os.waitstatus_to_exitcode(status)
            log.seek(0)
            out = log.read()
        found = [m for m in _FINISHED.finditer(out) if m.group(1) == dag_id]
        if not found:
            raise RuntimeError(f"{dag_id} did not finish:\n{out[-3000:]}")
        return DagRun(
            duration=float(found[-1].group(2)),
            state=found[-1].group(3),
            failed=self._failed_count(dag_id),
            peak_rss_mb=usage.ru_maxrss / 1024,  # kilobytes on Linux
            log=out,
        )

    def _db(self) -> Any:
        import sqlite3

        return sqlite3.connect(self.home / "airflow.db")

    def task(self, dag_id: str, task_id: str = "book") -> dict[str, Any]:
        """The last run's task instance: state, try_number, start and end (Unix times)."""
        with self._db() as db:
            row = db.execute(
                "SELECT ti.state, ti.try_number, ti.start_date, ti.end_date FROM task_instance ti "
                "JOIN dag_run dr ON dr.dag_id = ti.dag_id AND dr.run_id = ti.run_id "
                "WHERE ti.dag_id = ? AND ti.task_id = ? AND ti.map_index = -1 ORDER BY dr.id DESC LIMIT 1",
                (dag_id, task_id),
            ).fetchone()
        state, try_number, start, end = row
        return {"state": state, "try_number": try_number, "start": _unix(start), "end": _unix(end)}

    def wall_time(self, dag_id: str, task_id: str = "book") -> float:
        """Seconds from the first start to the last end of the task's instances (all map indexes)."""
        with self._db() as db:
            start, end = db.execute(
                "SELECT min(ti.start_date), max(ti.end_date) FROM task_instance ti WHERE ti.dag_id = ? "
                "AND ti.task_id = ? AND ti.run_id = (SELECT run_id FROM dag_run WHERE dag_id = ? "
                "ORDER BY id DESC LIMIT 1)",
                (dag_id, task_id, dag_id),
            ).fetchone()
        return float(_unix(end) or 0.0) - float(_unix(start) or 0.0)

    def xcom(self, dag_id: str, key: str, task_id: str = "book") -> Any:
        """A task's XCom value in the last run (JSON, as Airflow 3 stores it)."""
        with self._db() as db:
            row = db.execute(
                "SELECT x.value FROM xcom x JOIN dag_run dr ON dr.id = x.dag_run_id "
                "WHERE x.dag_id = ? AND x.task_id = ? AND x.key = ? AND x.map_index = -1 "
                "ORDER BY dr.id DESC LIMIT 1",
                (dag_id, task_id, key),
            ).fetchone()
        if row is None:
            return None
        value = json.loads(row[0]) if isinstance(row[0], (str, bytes)) else row[0]
        return json.loads(value) if isinstance(value, str) else value

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


# -- 5 to 8: the batch operator, through `airflow dags test` --------------------------------------

# Rows come from the run's conf ({"n": ...}), so one DAG file serves every size.
_BATCH_DAGS = """
from __future__ import annotations
import json
from datetime import datetime, timedelta, timezone
from airflow.providers.common.compat.sdk import DAG, task
from airflow_provider_care360.operators.care360 import (
    BatchScheduleAppointmentOperator,
    ScheduleAppointmentOperator,
)

EVENT = "%(event)s"
FIELDS = {"event_type_id": EVENT, "timezone": "UTC", "location": "zoom_conference"}


def _rows(conf):
    base = (datetime.now(timezone.utc) + timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)
    when = lambda i: (base + timedelta(minutes=30 * i)).strftime("%%Y-%%m-%%dT%%H:%%M:%%SZ")
    return [(f"p{i}@example.com", when(i)) for i in range(int(conf["n"]))]


@task
def batch_rows(**context):
    return [{"email": email, "start_time": start} for email, start in _rows(context["dag_run"].conf)]


@task
def mapped_rows(**context):
    return [{**FIELDS, "invitee_email": email, "start_time": start}
            for email, start in _rows(context["dag_run"].conf)]


@task
def http_bodies(**context):
    return [{"data": json.dumps({"eventTypeId": EVENT, "startTime": start, "email": email,
                                 "timezone": "UTC", "location": "zoom_conference"})}
            for email, start in _rows(context["dag_run"].conf)]


common = dict(schedule=None, start_date=datetime(2025, 1, 1), catchup=False)


def paced_dag_id(limit, window):
    return f"bench_batch_paced_{limit}_per_{window:g}s".replace(".", "_")

for c in (1, 4, 8):
    with DAG(f"bench_batch_c{c}", **common):
        BatchScheduleAppointmentOperator(task_id="book", rows=batch_rows(), concurrency=c, **FIELDS)

# Paced to the simulator's limit, as a user who knows the limit sets it.
for limit, window in %(limits)s:
    with DAG(paced_dag_id(limit, window), **common):
        BatchScheduleAppointmentOperator(
            task_id="book", rows=batch_rows(), concurrency=4, max_rate=(limit, window), **FIELDS
        )

# A quota past max_sleep ends try 1 with rows throttled (no deferral); try 2 books the rest.
with DAG("bench_batch_retry", default_args={"retries": 1, "retry_delay": timedelta(seconds=1)}, **common):
    BatchScheduleAppointmentOperator(
        task_id="book", rows=batch_rows(), max_sleep=1, deferrable=False, **FIELDS
    )

with DAG("bench_batch_mapped", **common):
    ScheduleAppointmentOperator.partial(task_id="book", retries=20).expand_kwargs(mapped_rows())

try:
    from airflow.providers.http.operators.http import HttpOperator
except ImportError:  # the bench extra is not installed
    HttpOperator = None

if HttpOperator is not None:
    with DAG("bench_batch_http", **common):
        HttpOperator.partial(
            task_id="book",
            http_conn_id="care360_http",
            endpoint="/api/v1/calendar/appointments",
            method="POST",
            headers={"Content-Type": "application/json"},
        ).expand_kwargs(http_bodies())
"""

APPOINTMENTS = "/api/v1/calendar/appointments"


def _paced_dag_id(limit: int, window: float) -> str:
    return f"bench_batch_paced_{limit}_per_{window:g}s".replace(".", "_")  # as the DAG file names it


def _batch_home(quick: bool, limits: list[tuple[int, float]]) -> AirflowHome:
    dags = _BATCH_DAGS % {"event": EVENT, "limits": repr(limits)}
    return AirflowHome(5 if quick else 10, {"bench_batch_dags.py": dags})


@dataclass
class Traffic:
    """What the simulator saw: booking POSTs and lookup GETs, with their arrival times."""

    posts: list[dict[str, Any]]
    gets: list[dict[str, Any]]

    @classmethod
    def of(cls, sim: Simulator) -> Traffic:
        requests = sim.admin("/requests")
        return cls(
            posts=[r for r in requests if r["method"] == "POST" and r["path"] == APPOINTMENTS],
            gets=[r for r in requests if r["method"] == "GET" and r["path"] == APPOINTMENTS],
        )

    @property
    def booked(self) -> list[dict[str, Any]]:
        return [r for r in self.posts if r["status"] == 200]

    @property
    def throttled(self) -> int:
        return sum(1 for r in self.posts if r["status"] == 429)

    def span(self) -> float:
        """Seconds from the first booking request to the last successful one (arrival times)."""
        booked = self.booked
        if len(booked) < 2:
            return float("nan")
        return max(r["at"] for r in booked) - min(r["at"] for r in self.posts)


def _run_batch_dag(
    home: AirflowHome, sim: Simulator, dag_id: str, n: int, *, mapped: bool = False
) -> tuple[DagRun, Traffic, int]:
    """Run one batch (or mapped) DAG of ``n`` rows; return the run, the traffic, and failed rows."""
    sim.reset()
    run = home.run(dag_id, sim, {"n": n})
    traffic = Traffic.of(sim)
    if mapped:
        failed_rows = run.failed
    else:
        summary = home.xcom(dag_id, "return_value") or {}
        counts = summary.get("counts", {})
        failed_rows = n - counts.get("booked", 0) - counts.get("already_booked", 0)
    return run, traffic, failed_rows


def bench_batch_rate(home: AirflowHome, n: int, mapped_n: int, limits: list[tuple[int, float]]) -> list[Row]:
    """
    5: N rows through one batch task under R per W s (with Retry-After), against the floor
    ceil(N/R)*W: paced to the limit (``max_rate=(R, W)``, as a user who knows it sets it) under each
    limit; under the first also unpaced (429s set the pace) and the same rows (or fewer) as mapped
    tasks. The figure is the booking tasks' wall time (start of the first to end of the last, from
    the metadata DB).
    """
    rows = []
    (limit, window), more = limits[0], limits[1:]
    runs = [
        (
            "5",
            _paced_dag_id(limit, window),
            n,
            f"one batch task, max_rate=({limit}, {window:g})",
            limit,
            window,
        )
    ]
    runs.append(("5a", "bench_batch_mapped", mapped_n, "mapped ScheduleAppointmentOperator", limit, window))
    runs.append(("5b", "bench_batch_http", mapped_n, "mapped HttpOperator", limit, window))
    runs.append(("5c", "bench_batch_c4", n, "one batch task, no max_rate (429s pace it)", limit, window))
    runs.extend(
        ("5" + "def"[i], _paced_dag_id(r, w), n, f"one batch task, max_rate=({r}, {w:g})", r, w)
        for i, (r, w) in enumerate(more)
    )
    unpaced: Traffic | None = None
    for number, dag_id, size, label, limit, window in runs:
        batch = dag_id.startswith("bench_batch_paced") or dag_id == "bench_batch_c4"
        judged = dag_id.startswith("bench_batch_paced")
        sim = Simulator("--rate-limit", str(limit), "--rate-window", str(window))
        try:
            _, traffic, failed = _run_batch_dag(home, sim, dag_id, size, mapped=not batch)
        finally:
            sim.close()
        floor = math.ceil(size / limit) * window
        wall = home.wall_time(dag_id)
        booked = len(traffic.booked)
        scaled = "" if size == n else " (scaled)"
        ok = failed == 0 and booked == size and wall <= 1.10 * floor
        rows.append(
            Row(
                number,
                f"{'' if judged else '  '}{size} rows{scaled} at {limit}/{window:g} s: {label}",
                f"{wall:.1f} s{'' if batch else ' (tasks)'}, {traffic.span():.1f} s first-to-last "
                f"booking; {booked} booked, {failed} failed, {traffic.throttled} x 429",
                f"{floor:.1f} s (ceil(N/R)*W)",
                f"{wall / floor:.3f}",
                "<= 1.10, 0 failed" if judged else "(comparison)",
                ("yes" if ok else "NO") if judged else "-",
            )
        )
        if dag_id == "bench_batch_c4":
            unpaced = traffic
    if unpaced is not None:
        rows.append(
            _lookups_row(
                "7a",
                f"  the same, a batch of {n} met by 429s (row 5c)",
                len(unpaced.gets),
                len(unpaced.booked),
                unpaced.throttled,
            )
        )
    return rows


def _lookups_row(number: str, what: str, lookups: int, booked: int, throttled: int | None = None) -> Row:
    ratio = lookups / booked if booked else float("nan")
    extra = "" if throttled is None else f", {throttled} x 429"
    return Row(
        number,
        what,
        f"{lookups} lookups for {booked} bookings{extra}",
        f"{booked} (one per booking)",
        f"{ratio:.3f}",
        "1.00",
        "yes" if lookups == booked else "NO",
    )


def bench_batch_concurrency(home: AirflowHome, n: int, mapped_n: int, latency: float) -> list[Row]:
    """6: unthrottled, each request ``latency`` s: bookings per second at concurrency 1, 4, 8."""
    sim = Simulator("--latency", str(latency))
    rows = []
    try:
        _, mapped, failed = _run_batch_dag(home, sim, "bench_batch_mapped", mapped_n, mapped=True)
        if failed or len(mapped.booked) != mapped_n:
            raise RuntimeError(f"bench_batch_mapped: {failed} failed, {len(mapped.booked)} booked")
        mapped_rate = (len(mapped.booked) - 1) / mapped.span()
        fresh: Traffic | None = None
        rates = {}
        for number, c in (("6", 1), ("6a", 4), ("6b", 8)):
            _, traffic, failed = _run_batch_dag(home, sim, f"bench_batch_c{c}", n)
            if failed or len(traffic.booked) != n:
                raise RuntimeError(f"bench_batch_c{c}: {failed} failed rows, {len(traffic.booked)} booked")
            rates[c] = (len(traffic.booked) - 1) / traffic.span()
            fresh = traffic if c == 4 else fresh
            target = {1: 1.0, 4: 3.0, 8: 5.0}[c]
            ratio = rates[c] / mapped_rate
            scaling = "" if c == 1 else f", {rates[c] / rates[1]:.1f}x concurrency 1"
            rows.append(
                Row(
                    number,
                    f"{n} rows, {latency * 1000:.0f} ms latency: batch, concurrency {c}",
                    f"{rates[c]:.1f} bookings/s{scaling}",
                    f"{mapped_rate:.1f} bookings/s ({mapped_n} mapped ScheduleAppointmentOperator)",
                    f"{ratio:.3f}",
                    f">= {target:.2f}",
                    "yes" if ratio >= target else "NO",
                )
            )
        assert fresh is not None
        rows.append(
            _lookups_row(
                "7",
                f"lookups per booking, a fresh batch of {n} (concurrency 4)",
                len(fresh.gets),
                len(fresh.booked),
            )
        )
    finally:
        sim.close()
    return rows


def bench_batch_retry(home: AirflowHome, n: int, quota: int, window: float) -> Row:
    """
    7b: a quota past ``max_sleep`` ends try 1 with rows throttled (``deferrable=False``); try 2 books
    the rest. Counted: the lookups that arrive after try 2 started, against the rows try 1 left.
    """
    sim = Simulator("--quota", str(quota), "--quota-window", str(window))
    try:
        run, traffic, failed = _run_batch_dag(home, sim, "bench_batch_retry", n)
        task = home.task("bench_batch_retry")
    finally:
        sim.close()
    if task["try_number"] != 2 or failed or run.state != "success":
        raise RuntimeError(f"bench_batch_retry: try {task['try_number']}, {run.state}, {failed} failed rows")
    second = task["start"]  # the task instance's start is its last try's: try 2
    booked_first = sum(1 for r in traffic.booked if r["at"] < second)
    left = n - booked_first
    lookups = sum(1 for r in traffic.gets if r["at"] >= second)
    return Row(
        "7b",
        f"  a retry: try 1 stopped by a quota ({quota}/{window:g} s) with {left} of {n} rows left",
        f"try 2: {lookups} lookups, {len(traffic.booked) - booked_first} bookings "
        f"(try 1: {len(traffic.gets) - lookups} lookups, {booked_first} bookings)",
        f"{left} rows left + 0 in flight",
        f"{lookups / left:.3f}" if left else "nan",
        "<= 1.00",
        "yes" if 0 < left and lookups <= left else "NO",
    )


def bench_batch_memory(home: AirflowHome, sizes: list[int]) -> list[Row]:
    """
    8: peak RSS of the `airflow dags test` process (the batch task runs in it) at each size, and its
    growth over the same DAG with 10 rows (Airflow's own baseline). Unthrottled, no latency.
    """
    sim = Simulator()
    peaks: dict[int, float] = {}
    try:
        for size in [10, *sizes]:
            run, _, failed = _run_batch_dag(home, sim, "bench_batch_c8", size)
            booked = sim.admin("/health")["bookings"]
            if failed or booked != size:
                raise RuntimeError(f"bench_batch_c8 at {size} rows: {failed} failed, {booked} booked")
            peaks[size] = run.peak_rss_mb
    finally:
        sim.close()
    base = peaks[10]
    rows = []
    for i, size in enumerate(sizes):
        growth = peaks[size] - base
        what = f"peak RSS, one batch task of {size} rows (concurrency 8)"
        ours = f"{peaks[size]:.0f} MB, +{growth:.1f} MB over 10 rows"
        if i == 0:
            rows.append(
                Row(
                    "8",
                    what,
                    ours,
                    f"{base:.0f} MB (10 rows: Airflow's baseline)",
                    f"{peaks[size] / base:.3f}",
                    "(the slope)",
                    "-",
                )
            )
            continue
        smaller = sizes[i - 1]
        linear = (peaks[smaller] - base) * size / smaller
        ratio = growth / linear if linear > 0 else float("inf")
        rows.append(
            Row(
                f"8{'abcdefg'[i - 1]}",
                what,
                ours,
                f"+{linear:.1f} MB (+{peaks[smaller] - base:.1f} MB at {smaller}, scaled linearly)",
                f"{ratio:.3f}",
                "growth < 200 MB, <= 1.10",
                "yes" if growth < 200 and ratio <= 1.10 else "NO",
            )
        )
    return rows


def _row_order(row: Row) -> tuple[int, str]:
    digits = re.match(r"\d+", row.number)
    return (int(digits.group()) if digits else 0, row.number)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI")
    parser.add_argument(
        "--rows",
        default="1,2,3,4,5,6,7,8",
        help="which benchmarks to run, e.g. 3 or 1,2 (7 and 7a come with 6 and 5)",
    )
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
        batch_n=30 if q else 1000,
        batch_mapped_n=10 if q else 100,
        # The first limit is the one suggested in issue 20 (above what the batch reaches on 2 cores);
        # the second is below it, so the limit, not the batch, sets the pace.
        batch_limits=[(10, 1.0)] if q else [(100, 2.0), (50, 2.0)],
        conc_n=20 if q else 100,
        conc_mapped_n=10 if q else 50,
        retry_n=20 if q else 200,
        retry_quota=10 if q else 100,
        retry_window=3.0 if q else 6.0,
        memory=[200] if q else [1000, 10000],
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
    if only & {2, 3}:
        sim = Simulator()
        home = AirflowHome(sizes["dag_n"]) if 3 in only else None
        try:
            if 2 in only:
                rows.append(bench_client(sizes["client_n"], sizes["client_rep"], sim))
            print(f"  client overhead measured ({time.monotonic() - started:.0f} s)", flush=True)
            if home is not None:
                rows.extend(bench_airflow(home, sizes["dag_n"], sizes["dag_rep"], sim))
                print(f"  Airflow overhead measured ({time.monotonic() - started:.0f} s)", flush=True)
        finally:
            sim.close()
            if home is not None:
                home.close()
    if 4 in only:
        rate_home = AirflowHome(sizes["rate_n"])
        try:
            rows.extend(
                bench_throughput(rate_home, sizes["rate_n"], sizes["rate_limit"], sizes["rate_window"])
            )
        finally:
            rate_home.close()
        print(f"  throughput under a rate limit measured ({time.monotonic() - started:.0f} s)", flush=True)
    if only & {5, 6, 7, 8}:
        batch_home = _batch_home(q, sizes["batch_limits"])
        try:
            if 5 in only:
                rows.extend(
                    bench_batch_rate(
                        batch_home, sizes["batch_n"], sizes["batch_mapped_n"], sizes["batch_limits"]
                    )
                )
                print(f"  batch under a rate limit measured ({time.monotonic() - started:.0f} s)", flush=True)
            if 6 in only:
                rows.extend(
                    bench_batch_concurrency(batch_home, sizes["conc_n"], sizes["conc_mapped_n"], 0.05)
                )
                print(f"  batch concurrency measured ({time.monotonic() - started:.0f} s)", flush=True)
            if 7 in only:
                rows.append(
                    bench_batch_retry(
                        batch_home, sizes["retry_n"], sizes["retry_quota"], sizes["retry_window"]
                    )
                )
                print(f"  batch retry lookups measured ({time.monotonic() - started:.0f} s)", flush=True)
            if 8 in only:
                rows.extend(bench_batch_memory(batch_home, sizes["memory"]))
                print(f"  batch memory measured ({time.monotonic() - started:.0f} s)", flush=True)
        finally:
            batch_home.close()
    rows.sort(key=_row_order)

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
