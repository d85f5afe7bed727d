"""
`make demo`: book appointments from the example DAGs against the local Care360 simulator.

Starts the simulator on a free loopback port, migrates a throwaway Airflow home, creates the
``care360`` pool, runs example DAG 1 (with params) and example DAG 3 (a mapped batch) with
``airflow dags test``, then example DAG 3 again with the same rows (every booking task looks first
and finds its appointment), then example DAG 4 (a daily batch in chunks) against a quota that makes
its chunks defer and resume, prints each batch's write-back summary and what the simulator booked,
stops it and cleans up.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow_provider_care360.testing import Care360Simulator

ROOT = Path(__file__).resolve().parent.parent
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def run(step: str, args: list[str], env: dict[str, str], logs: Path) -> Path:
    log = logs / f"{len(list(logs.iterdir())):02d}-{'-'.join(args[:2])}.log"
    started = time.monotonic()
    print(f"- {step} ...", end=" ", flush=True)
    with log.open("w") as fh:
        proc = subprocess.run([AIRFLOW, *args], env=env, stdout=fh, stderr=subprocess.STDOUT)
    print(f"{'ok' if proc.returncode == 0 else 'FAILED'} ({time.monotonic() - started:.1f} s)")
    if proc.returncode != 0:
        print(log.read_text()[-4000:])
        raise SystemExit(f"demo failed at: {step} (log: {log})")
    return log


def write_back_summaries(env: dict[str, str], dag_id: str = "example_care360_batch") -> list[dict[str, Any]]:
    """The ``write_back`` results of an example's runs, oldest first, read from the metadata DB."""
    code = (
        "import json\n"
        "from airflow.utils.session import create_session\n"
        "try:\n"
        "    from airflow.models.xcom import XComModel as X\n"
        "except ImportError:\n"
        "    from airflow.models.xcom import XCom as X\n"
        "with create_session() as s:\n"
        f"    rows = s.query(X).filter_by(dag_id={dag_id!r}, task_id='write_back',"
        " key='return_value').order_by(X.timestamp).all()\n"
        "    print(json.dumps([r.value if isinstance(r.value, dict) else X.deserialize_value(r)"
        " for r in rows]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return list(json.loads(proc.stdout.strip().splitlines()[-1]))


def print_summary(title: str, summary: dict[str, Any]) -> None:
    counts = ", ".join(f"{n} {outcome}" for outcome, n in summary["counts"].items())
    print(f"\n{title}: {summary['rows']} rows: {counts}")
    for problem in summary["problems"]:
        print(f"  row {problem['map_index']}: {problem['outcome']}: {problem['reason']}")


def main() -> int:
    home = Path(tempfile.mkdtemp(prefix="care360-demo-"))
    logs = home / "demo-logs"
    logs.mkdir()
    api_key = "demo-" + secrets.token_hex(8)
    with Care360Simulator(api_key=api_key) as sim:
        print(f"Care360 simulator listening on {sim.url}")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))},
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "example_dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            **sim.airflow_connection_env(),
        }
        start = (datetime.now(UTC) + timedelta(days=1)).replace(hour=10, minute=0, second=0, microsecond=0)
        conf = (
            '{"email": "jane.doe@example.com", "first_name": "Jane", "last_name": "Doe", '
            f'"start_time": "{start:%Y-%m-%dT%H:%M:%SZ}", "timezone": "America/New_York"}}'
        )
        try:
            run("migrate a throwaway Airflow metadata DB", ["db", "migrate"], env, logs)
            run(
                "create the care360 pool (4 slots)",
                ["pools", "set", "care360", "4", "Care360 booking API"],
                env,
                logs,
            )
            run(
                "example 1: one booking from params",
                ["dags", "test", "example_care360_single_booking", "-c", conf],
                env,
                logs,
            )
            run(
                "example 3: a batch of 10 with expand_kwargs",
                ["dags", "test", "example_care360_batch"],
                env,
                logs,
            )
            run(
                "example 3 again, same rows: each task looks first",
                ["dags", "test", "example_care360_batch"],
                env,
                logs,
            )
            summaries = write_back_summaries(env)
            # Example 4: a daily batch in chunks of one task each, under a quota of 5 bookings per 8 s
            # answered with X-RateLimit-* only, as a daily cap is: each wait is longer than the
            # example's max_sleep (2 s here), so the chunks defer and resume where they stopped.
            sim.quota, sim.quota_window = 5, 8.0
            first = (start + timedelta(days=1)).replace(hour=8)
            referrals = [
                {
                    "row_key": f"ref-{i:03d}",
                    "email": f"referral{i:03d}@example.com",
                    "start_time": f"{first + timedelta(minutes=30 * i):%Y-%m-%dT%H:%M:%SZ}",
                }
                for i in range(12)
            ]
            daily = json.dumps({"referrals": referrals, "chunk_size": 6})
            daily_log = run(
                "example 4: 12 referrals in 2 chunks, deferring through a quota",
                ["dags", "test", "example_care360_daily_batch", "-c", daily],
                {**env, "CARE360_EXAMPLE_MAX_SLEEP": "2"},
                logs,
            )
            deferred = daily_log.read_text().count("Care360 asked to wait")
            daily_summary = write_back_summaries(env, "example_care360_daily_batch")[-1]
        finally:
            bookings = sim.bookings
        for title, summary in zip(
            ("Write-back, first batch", "Write-back, same rows again"), summaries, strict=False
        ):
            print_summary(title, summary)
        print_summary("Write-back, daily batch", daily_summary)
        print(f"  the chunks deferred {deferred} time(s) through the quota")
        print(f"\nThe simulator booked {len(bookings)} appointment(s):")
        print(f"  {'start (UTC)':<22}{'event type':<40}{'invitee':<26}{'location'}")
        for b in sorted(bookings, key=lambda b: b["startTime"]):
            print(f"  {b['startTime']:<22}{b['eventTypeId']:<40}{b['email']:<26}{b['location']}")
    shutil.rmtree(home, ignore_errors=True)
    if len(bookings) != 23 or len({b["email"] for b in bookings}) != 23:
        print("expected 23 distinct bookings", file=sys.stderr)
        return 1
    if daily_summary["counts"] != {"booked": 12} or not deferred:
        print("expected the daily batch to defer and book all 12", file=sys.stderr)
        return 1
    if [s["counts"] for s in summaries] != [{"booked": 10}, {"already_booked": 10}]:
        print("expected the second batch to find all 10 bookings", file=sys.stderr)
        return 1
    print(
        "\nDemo finished: 23 bookings, each exactly once; the second batch sent no booking; the daily "
        "batch deferred through the quota and resumed."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
