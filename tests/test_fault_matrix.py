"""
Every fault the simulator can inject, through a real DAG run with ``retries=2`` (and a few with
Airflow's default ``retries=0``).

For each: the final task state, the number of tries, the wait between tries where the API named
one, the error text, the outcome record, and the ledger: exactly one appointment, or none with the
task failed saying why. The simulator accepts a second booking of a slot here (``one_on_one`` off,
except where a case says otherwise), so a double booking would show as two. Across the matrix no
case books twice, none loses a booking without a failed task, and while the lookup answers no case
asks a person to check a calendar. The README's fault table is this matrix.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest

from airflow_provider_care360.retry import RETRY_POLICIES_SUPPORTED
from airflow_provider_care360.testing import Care360Simulator, Fault
from airflow_provider_care360.version_compat import AIRFLOW_V_3_3_PLUS
from support import iso, next_slot, outcome_of, run_dag, state_of, tries

pytestmark = pytest.mark.integration

MAY_EXIST = "may or may not exist"
NOT_SENT = "the request was not sent"
EXISTS = "The lookup shows the appointment exists: booked once"
NOT_YET = "does not show the appointment yet"
SAFE_AFTER = "Running the task again is safe after that time"
UNUSABLE = "check the connection's base URL"
UNKNOWN_USER_400 = {"status": 400, "success": False, "message": "Bad request", "error": "NotFoundError"}
MISSING_ROUTE = {
    "status": 404,
    "success": False,
    "message": "Cannot GET /api/v1/calendar/appointments?user_email=jane.doe%40example.com",
}
INVALID_400 = {
    "status": 400,
    "success": False,
    "message": "Invalid request",
    "error": "startTime is not valid",
}
HTML = "text/html"


@dataclass
class Case:
    faults: list[Fault] | Callable[[], list[Fault]] = field(default_factory=list)
    state: str = "failed"
    tries: int = 1
    booked: int = 0
    outcome: str = "rejected"
    text: str = ""
    conn: str = "sim"  # sim | fast (1 s read timeout) | wrong_key | refused | blackhole | tls
    dag: str = "care360_t_params"
    waits_at_least: float | None = None  # seconds between try 1 and try 2 (Airflow >= 3.3)
    posts: int | None = None  # booking requests sent, where the case is about that number
    preload: bool = False  # the appointment exists already, booked elsewhere
    one_on_one: bool = False
    person: str = "no"  # what a person must do afterwards (the README's table)
    preload_status: str = "CONFIRMED"
    # Without task_state_store (Airflow < 3.3) the try holds the apply window itself, so a late booking
    # settles in the first try: (state, tries, outcome) there.
    before_33: tuple[str, int, str] | None = None
    only_33: str = ""  # why the case runs on Airflow >= 3.3 only
    preload_start: str | None = None  # "null" for an element whose start cannot be read


def _http_date_in(seconds: float) -> list[Fault]:
    when = datetime.fromtimestamp(time.time() + seconds, tz=UTC)
    return [Fault(status=429, headers={"Retry-After": format_datetime(when, usegmt=True)})]


def lookup(status: int = 500, **kwargs: Any) -> Fault:
    return Fault(status, target="lookup", **kwargs)


PASS = Fault(passthrough=True, target="lookup")
NO_RETRIES = "care360_t_no_retries"
NO_CHECK = "care360_t_no_check"
NO_POLICY = "care360_t_no_policy"

CASES: dict[str, Case] = {
    # rejected: fail at once, nothing booked
    "400": Case(
        [Fault(400, INVALID_400)], text="Invalid request; startTime is not valid", person="fix the row"
    ),
    "401": Case(
        conn="wrong_key", text="rejected the API key of connection 'care360_matrix'", person="fix the key"
    ),
    "403": Case(
        [Fault(403, {"status": 403, "success": False, "message": "Forbidden"})],
        text="(403; Forbidden)",
        person="fix the key's rights",
    ),
    "404": Case([Fault(404, b"Not Found", content_type="text/plain")], text="(404;", person="fix the URL"),
    "422": Case(
        [Fault(422, {"message": "Unprocessable"})], text="(422; Unprocessable)", person="fix the row"
    ),
    "200 success false": Case(
        [Fault(200, {"status": 200, "success": False, "message": "Slot unavailable"})],
        text="success=false",
        person="fix the row",
    ),
    # throttled: retried by Airflow, after the wait the API named
    "429 Retry-After seconds": Case(
        [Fault(429, headers={"Retry-After": "3"})], "success", 2, 1, "booked", waits_at_least=3.0
    ),
    "429 Retry-After HTTP-date": Case(
        lambda: _http_date_in(6), "success", 2, 1, "booked", waits_at_least=1.0
    ),
    "429 X-RateLimit-Reset": Case(
        [
            Fault(
                429,
                headers={"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "3"},
            )
        ],
        "success",
        2,
        1,
        "booked",
        waits_at_least=3.0,
    ),
    "429 no headers": Case([Fault(429)], "success", 2, 1, "booked", waits_at_least=0.9),
    "429 until retries run out": Case(
        [Fault(429, headers={"Retry-After": "1"})] * 3,
        "failed",
        3,
        0,
        "throttled",
        text="rate limit exceeded (429)",
        person="raise retries",
    ),
    # 503: a proxy may have forwarded the request, so it is ambiguous and settled by the lookup
    "503, applied by the upstream": Case(
        [Fault(503, b"<html>Service Unavailable</html>", content_type=HTML, apply=True)],
        "success",
        1,
        1,
        "booked",
        EXISTS,
    ),
    "no lookup: 503": Case(
        [Fault(503, b"")], outcome="ambiguous", text=MAY_EXIST, dag=NO_CHECK, person="check the calendar"
    ),
    "408 then booked": Case(
        [Fault(408, b"")], "success", 2, 1, "booked", "did not receive the whole request"
    ),
    # not sent: retried with the task's own settings
    "503 then booked": Case(
        [Fault(503, b"<html>Maintenance</html>", content_type=HTML)], "success", 2, 1, "booked"
    ),
    "connection refused": Case(
        conn="refused", tries=3, outcome="not_sent", text=NOT_SENT, person="fix the URL"
    ),
    "connect timeout": Case(
        conn="blackhole", tries=3, outcome="not_sent", text=NOT_SENT, person="fix the network"
    ),
    "TLS failure": Case(conn="tls", tries=3, outcome="not_sent", text=NOT_SENT, person="fix the URL"),
    # ambiguous: settled by the lookup. Applied: booked once, in the same try. Not applied: the
    # lookup shows nothing, and the retry books it.
    "read timeout, applied": Case(
        [Fault(200, delay=3, apply=True)], "success", 1, 1, "booked", EXISTS, "fast"
    ),
    "read timeout, not applied": Case([Fault(200, delay=3)], "success", 2, 1, "booked", NOT_YET, "fast"),
    "reset before applying": Case([Fault(reset=True)], "success", 2, 1, "booked", NOT_YET),
    "reset after applying": Case([Fault(reset=True, apply=True)], "success", 1, 1, "booked", EXISTS),
    "500 HTML page": Case(
        [Fault(500, b"<html><h1>Error</h1></html>", content_type=HTML)], "success", 2, 1, "booked", NOT_YET
    ),
    "500, applied": Case([Fault(500, apply=True)], "success", 1, 1, "booked", EXISTS),
    "502, applied": Case(
        [Fault(502, b"<html>Bad Gateway</html>", content_type=HTML, apply=True)],
        "success",
        1,
        1,
        "booked",
        EXISTS,
    ),
    "502, not applied": Case([Fault(502, b"", content_type=HTML)], "success", 2, 1, "booked", NOT_YET),
    "504": Case([Fault(504, b"")], "success", 2, 1, "booked", NOT_YET),
    # A gateway answers at once while the service books later than the settling lookup: not found
    # yet, and the retry waits out the apply window (3 s here) before it looks again.
    "504 at once, booked 1.5 s later": Case(
        [Fault(504, b"", apply_after=1.5)],
        "success",
        2,
        1,
        "already_booked",
        NOT_YET,
        posts=1,
        before_33=("success", 1, "booked"),
    ),
    # The same, with no retry policy: the retry comes after the 1 s retry_delay, inside the apply
    # window, and it is the journal's wait in the task (Airflow >= 3.3), or the try holding the
    # window itself (older Airflow), that keeps it from booking twice.
    "504 at once, booked 1.5 s later, retry_policy=None": Case(
        [Fault(504, b"", apply_after=1.5)],
        "success",
        2,
        1,
        "already_booked",
        NOT_YET,
        posts=1,
        dag=NO_POLICY,
        before_33=("success", 1, "booked"),
    ),
    "read timeout, booked 2 s after the request": Case(
        [Fault(200, delay=1.5, apply_after=2.0)],
        "success",
        2,
        1,
        "already_booked",
        NOT_YET,
        "fast",
        posts=1,
        before_33=("success", 1, "booked"),
    ),
    "execution_timeout while settling, applied": Case(
        [Fault(502, b"", apply=True)],
        "success",
        2,
        1,
        "already_booked",
        posts=1,
        dag="care360_t_timeout",
        only_33="dag.test() on older Airflow lets AirflowTaskTimeout escape into the test process",
    ),
    "400, and the invitee holds the slot": Case(
        [lookup(404, body={"success": False, "error": "NotFoundError"}), Fault(400, INVALID_400)],
        "success",
        1,
        0,
        "already_booked",
        posts=1,
        preload=True,
    ),
    "504, applied": Case([Fault(504, b"", apply=True)], "success", 1, 1, "booked", EXISTS),
    "200 malformed JSON, applied": Case(
        [Fault(200, '{"status": 200, "succ', apply=True)], "success", 1, 1, "booked", EXISTS
    ),
    "200 very large body, applied": Case(
        [Fault(200, b"x" * (3 << 20), content_type="text/plain", apply=True)],
        "success",
        1,
        1,
        "booked",
        EXISTS,
    ),
    # ... and the settling lookup fails too: the next try looks again before it books
    "502 applied, settling lookup 500": Case(
        [Fault(502, b"", apply=True), PASS, lookup(500)],
        "success",
        2,
        1,
        "already_booked",
        posts=1,
        before_33=("success", 1, "booked"),
    ),
    # Airflow's default retries=0: both halves of the settle rule in one try
    "retries=0: read timeout, applied": Case(
        [Fault(200, delay=3, apply=True)], "success", 1, 1, "booked", EXISTS, "fast", NO_RETRIES
    ),
    "retries=0: 502, booked 1.5 s later": Case(
        [Fault(502, b"", apply_after=1.5)],
        "failed",
        1,
        1,
        "ambiguous",
        dag=NO_RETRIES,
        person="run it again after the window (safe)",
        before_33=("success", 1, "booked"),
    ),
    "retries=0: 502 applied, settling lookup 500": Case(
        [Fault(502, b"", apply=True), PASS, lookup(500)],
        "failed",
        1,
        1,
        "ambiguous",
        "failed too",
        dag=NO_RETRIES,
        person="run it again after the window (safe)",
        before_33=("success", 1, "booked"),
    ),
    # a booking made elsewhere: found, nothing sent
    "already booked elsewhere": Case([], "success", 1, 0, "already_booked", posts=0, preload=True),
    "an appointment there CANCELED_BY_INVITEE": Case(
        [], "success", 1, 1, "booked", posts=1, preload=True, preload_status="CANCELED_BY_INVITEE"
    ),
    "an appointment there RESCHEDULED": Case(
        [],
        "failed",
        1,
        0,
        "ambiguous",
        "RESCHEDULED",
        posts=0,
        preload=True,
        preload_status="RESCHEDULED",
        person="check the appointment",
    ),
    "a lookup element with a null start, nothing else": Case(
        [lookup(200, body={"status": 200, "success": True, "data": [{"id": "x", "start": None}]})],
        "failed",
        1,
        0,
        "ambiguous",
        "cannot be read",
        posts=0,
        person="check the appointment",
    ),
    "a lookup element with a null start beside the booking": Case(
        [], "success", 1, 0, "already_booked", posts=0, preload=True, preload_start="null"
    ),
    "lookup answer that looks paged": Case(
        [lookup(200, body={"status": 200, "success": True, "data": [], "next": "?page=2"})],
        "failed",
        1,
        0,
        "ambiguous",
        "one page of several",
        posts=0,
        person="check the appointment",
    ),
    "lookup 404 naming the user, a missing route": Case(
        [lookup(404, body=MISSING_ROUTE)], text=UNUSABLE, posts=0, person="fix the URL"
    ),
    "lookup 400 NotFoundError: an unknown user": Case(
        [lookup(400, body=UNKNOWN_USER_400)], "success", 1, 1, "booked", posts=1
    ),
    "lookup 422 NotFoundError: an unknown user": Case(
        [lookup(422, body=UNKNOWN_USER_400)], "success", 1, 1, "booked", posts=1
    ),
    "lookup 408 then booked": Case([lookup(408)], "success", 2, 1, "booked", posts=1),
    "lookup 425 then booked": Case([lookup(425)], "success", 2, 1, "booked", posts=1),
    "lookup 409": Case([lookup(409)], text="refused the query (409", posts=0, person="fix the query"),
    # the lookup itself fails
    "lookup 403": Case(
        [lookup(403, body={"status": 403, "success": False, "message": "Forbidden"})],
        outcome="rejected",
        text=UNUSABLE,
        posts=0,
        person="grant the lookup",
    ),
    "lookup 404, no such endpoint": Case(
        [lookup(404, body=b"<html>Cannot GET</html>", content_type=HTML)],
        text=UNUSABLE,
        posts=0,
        person="fix the URL",
    ),
    "lookup 200 of another shape": Case(
        [lookup(200, body={"status": 200, "success": True, "data": {"start": "x"}})],
        text=UNUSABLE,
        posts=0,
        person="check the URL",
    ),
    "lookup 401": Case(
        [lookup(401)],
        text="rejected the API key of connection 'care360_matrix'",
        posts=0,
        person="fix the key",
    ),
    "lookup 429 then booked": Case(
        [lookup(429, headers={"Retry-After": "2"})], "success", 2, 1, "booked", posts=1, waits_at_least=2.0
    ),
    "lookup 500 then booked": Case([lookup(500)], "success", 2, 1, "booked", posts=1),
    "lookup read timeout then booked": Case(
        [lookup(200, delay=3)], "success", 2, 1, "booked", conn="fast", posts=1
    ),
    "lookup reset then booked": Case([lookup(reset=True)], "success", 2, 1, "booked", posts=1),
    # check_existing=False: the old rule, one request per try; ambiguous fails at once
    "no lookup: read timeout, applied": Case(
        [Fault(200, delay=3, apply=True)],
        booked=1,
        outcome="ambiguous",
        text=MAY_EXIST,
        conn="fast",
        dag=NO_CHECK,
        person="check the calendar",
    ),
    "no lookup: 502, not applied": Case(
        [Fault(502, b"")], outcome="ambiguous", text=MAY_EXIST, dag=NO_CHECK, person="check the calendar"
    ),
    "no lookup, retry_on_ambiguous: read timeout, not applied": Case(
        [Fault(200, delay=3)], "success", 2, 1, "booked", conn="fast", dag="care360_t_ambiguous_retry"
    ),
    "no lookup, retry_on_ambiguous: 502 applied, retry meets the taken slot": Case(
        [Fault(502, b"", apply=True)],
        "failed",
        2,
        1,
        "rejected",
        "already booked",
        dag="care360_t_ambiguous_retry",
        one_on_one=True,
        person="none (booked once)",
    ),
}


@contextmanager
def _blackhole_port() -> Iterator[int]:
    """A port whose accept queue is full, so new connections time out instead of being refused."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(server.getsockname())
        fillers.append(filler)
    try:
        yield server.getsockname()[1]
    finally:
        for sock in [*fillers, server]:
            sock.close()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def _connection(kind: str, sim: Care360Simulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    conn: dict[str, Any] = {
        "conn_type": "care360",
        "password": sim.api_key,
        "host": sim.url,
        "extra": {"timeout": [1, 10]},
    }
    with _blackhole_port() as blackhole:
        if kind == "fast":
            conn["extra"] = {"timeout": [1, 1]}
        elif kind == "wrong_key":
            conn["password"] = "wrong-key-0000"
        elif kind == "refused":
            conn["host"] = f"http://127.0.0.1:{_closed_port()}"
        elif kind == "blackhole":
            conn["host"] = f"http://127.0.0.1:{blackhole}"
            conn["extra"] = {"timeout": [0.5, 5]}
        elif kind == "tls":
            conn["host"] = sim.url.replace("http://", "https://")
        monkeypatch.setenv("AIRFLOW_CONN_CARE360_MATRIX", json.dumps(conn))
        yield


@pytest.mark.parametrize("name", list(CASES))
def test_fault(name: str, simulator: Care360Simulator, monkeypatch: pytest.MonkeyPatch, capfd: Any) -> None:
    case = CASES[name]
    if case.only_33 and not AIRFLOW_V_3_3_PLUS:
        pytest.skip(case.only_33)
    if case.before_33 is not None and not AIRFLOW_V_3_3_PLUS:
        state, tries_made, outcome = case.before_33
        case = replace(case, state=state, tries=tries_made, outcome=outcome, text="")
    simulator.one_on_one = case.one_on_one
    faults = case.faults() if callable(case.faults) else case.faults
    for fault in faults:
        simulator.inject(fault)
    start = next_slot(days=2)
    if case.preload:
        simulator.add_appointment(
            email="jane.doe@example.com", start=start.isoformat(), status=case.preload_status
        )
    if case.preload_start == "null":
        real = simulator._lookup

        def with_a_null_start(query: dict[str, list[str]]) -> tuple[int, Any]:
            status, answer = real(query)
            if status == 200:
                answer["data"].insert(0, {"id": "broken", "start": None, "status": "CONFIRMED"})
            return status, answer

        monkeypatch.setattr(simulator, "_lookup", with_a_null_start)
    with _connection(case.conn, simulator, monkeypatch):
        result = run_dag(case.dag, {"start_time": iso(start), "conn_id": "care360_matrix"})
    output = capfd.readouterr()
    text = output.out + output.err
    ti = result.ti("book")
    record = outcome_of(result)

    assert (state_of(ti), ti.try_number) == (case.state, case.tries), text[-3000:]
    simulator.wait_pending()  # late bookings land before the ledger is counted
    assert simulator.booked_count() == case.booked
    assert record["outcome"] == case.outcome, record
    if case.posts is not None:
        assert len(simulator.booking_requests) == case.posts
    # The invariants the matrix exists for.
    appointments = len(
        [
            a
            for a in simulator.appointments
            if not a["cancelled"] and a.get("status", "CONFIRMED") == "CONFIRMED"
        ]
    )
    assert appointments <= 1, "booked twice"
    assert appointments == 1 or state_of(ti) == "failed", "lost without a failed task"
    if state_of(ti) == "success":
        assert record["outcome"] in ("booked", "already_booked")
    if case.text:
        assert case.text in text
    if case.state == "failed":
        assert record["message"] and record["message"].splitlines()[0] in text
    if case.person == "no":
        assert "check the calendar" not in text
    requests = simulator.lookup_requests if name.startswith("lookup 429") else simulator.booking_requests
    if case.waits_at_least is not None and not RETRY_POLICIES_SUPPORTED:
        # The documented fallback on Airflow < 3.3: the task's own retry_delay (1 s here).
        first, second = requests[:2]
        assert second["at"] - first["at"] >= 1.0 - 0.05
    elif case.waits_at_least is not None:
        first_try, second_try = tries(result)[:2]
        assert first_try.retry_delay_override is not None
        assert first_try.retry_delay_override >= case.waits_at_least
        assert first_try.retry_delay_override <= max(case.waits_at_least, 6) * 1.1 + 1
        waited = (second_try.start - first_try.end).total_seconds()
        assert waited >= first_try.retry_delay_override - 0.05
        assert requests[1]["at"] - requests[0]["at"] >= first_try.retry_delay_override - 0.05


def test_a_retry_policy_of_the_users_own_wins(simulator: Care360Simulator) -> None:
    simulator.inject(Fault(429, headers={"Retry-After": "1"}))
    if not RETRY_POLICIES_SUPPORTED:
        # No retry policies before Airflow 3.3: a 429 is retried through its exception type alone.
        result = run_dag("care360_t_params", {"start_time": iso(next_slot(days=2))})
        assert (state_of(result.ti("book")), result.ti("book").try_number) == ("success", 2)
        assert len(simulator.bookings) == 1
        return
    result = run_dag("care360_t_user_policy", {"start_time": iso(next_slot(days=2))})
    ti = result.ti("book")
    assert (state_of(ti), ti.try_number) == ("failed", 1)
    assert simulator.bookings == []


def _one_invitee(days: int) -> list[dict[str, Any]]:
    return [
        {
            "event_type_id": "evt-policy",
            "start_time": iso(next_slot(days=days)),
            "invitee_email": "mapped@example.com",
            "timezone": "UTC",
            "location": "zoom_conference",
        }
    ]


@pytest.mark.skipif(not RETRY_POLICIES_SUPPORTED, reason="retry_policy arrived in Airflow 3.3")
def test_a_policy_in_default_args_wins_for_plain_and_mapped_tasks(simulator: Care360Simulator) -> None:
    simulator.inject(Fault(429, headers={"Retry-After": "1"}), times=2)
    conf = {"start_time": iso(next_slot(days=2)), "invitees": _one_invitee(days=3)}
    result = run_dag("care360_t_default_args_policy", conf)
    for key in (("book", -1), ("book_mapped", 0)):
        ti = result.tis[key]
        assert (state_of(ti), ti.try_number) == ("failed", 1), key  # the team's rule: fail on 429
    assert simulator.bookings == []


@pytest.mark.skipif(not RETRY_POLICIES_SUPPORTED, reason="retry_policy arrived in Airflow 3.3")
def test_retry_policy_none_switches_the_provider_policy_off(simulator: Care360Simulator) -> None:
    # Retry-After asks for 600 s; with no policy the task's own retry_delay (1 s) applies.
    simulator.inject(Fault(429, headers={"Retry-After": "600"}), times=2)
    conf = {"start_time": iso(next_slot(days=2)), "invitees": _one_invitee(days=3)}
    result = run_dag("care360_t_policy_off", conf)
    for task_id, index in (("book", -1), ("book_mapped", 0)):
        ti = result.tis[(task_id, index)]
        assert (state_of(ti), ti.try_number) == ("success", 2), task_id
        first = tries(result, task_id, index)[0]
        assert first.retry_delay_override is None  # Airflow's own retry_delay, no policy's delay
    assert len(simulator.bookings) == 2


def test_the_operator_gets_the_provider_policy_by_default() -> None:
    from support import get_test_dag

    task = get_test_dag("care360_t_params").get_task("book")
    if RETRY_POLICIES_SUPPORTED:
        from airflow_provider_care360.retry import Care360RetryPolicy

        assert isinstance(task.retry_policy, Care360RetryPolicy)
    else:  # the documented fallback: exception types alone, no policy attribute to set
        assert getattr(task, "retry_policy", None) is None


def test_mapped_batch_of_30_under_a_rate_limit_books_each_exactly_once(
    simulator: Care360Simulator, capsys: Any
) -> None:
    simulator.rate_limit, simulator.rate_window = 4, 3.0
    # Three throttled answers up front as well: a slow Airflow (3.2 takes ~3 s to start each task
    # under dag.test()) may never reach the limiter's rate.
    simulator.inject(Fault(429, headers={"Retry-After": "1"}), times=3)
    invitees = [
        {
            "event_type_id": "evt-big",
            "start_time": iso(next_slot(days=3, offset_slots=i)),
            "invitee_email": f"batch{i:02d}@example.com",
            "timezone": "UTC",
            "location": "zoom_conference",
        }
        for i in range(30)
    ]
    started = time.monotonic()
    result = run_dag("care360_t_big_batch", {"invitees": invitees})
    wall = time.monotonic() - started

    statuses = [r["status"] for r in simulator.booking_requests]
    assert result.state == "success"
    assert sorted(b["email"] for b in simulator.bookings) == sorted(i["invitee_email"] for i in invitees)
    assert statuses.count(200) == 30
    assert statuses.count(429) >= 3  # the limit really forced retries
    failed = [k for k, ti in result.tis.items() if k[0] == "book" and state_of(ti) != "success"]
    assert failed == []
    with capsys.disabled():
        print(
            f"\n[batch] 30 bookings under 4 per 3 s: {statuses.count(429)} answers of 429, "
            f"wall time {wall:.1f} s (floor {(30 / 4 - 1) * 3:.1f} s)"
        )
