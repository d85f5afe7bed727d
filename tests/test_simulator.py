"""The simulator speaks the documented contract over real HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_care360.testing import Care360Simulator, Fault
from support import iso, next_slot

PATH = "/api/v1/calendar/appointments"


def post(url: str, body: Any, key: str | None, raw: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["cv-api-key"] = key
    request = urllib.request.Request(url + PATH, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def valid_body(**overrides: Any) -> dict[str, Any]:
    body = {
        "eventTypeId": "evt",
        "startTime": iso(next_slot()),
        "email": "invitee@example.com",
        "timezone": "Asia/Kolkata",
        "location": "google_conference",
    }
    body.update(overrides)
    return body


@pytest.fixture
def sim() -> Any:
    with Care360Simulator(api_key="k-123") as running:
        yield running


def test_booking_answers_the_documented_200_and_fills_the_ledger(sim: Care360Simulator) -> None:
    status, _, body = post(sim.url, valid_body(), "k-123")
    assert (status, body) == (
        200,
        {"status": 200, "success": True, "message": "Meeting scheduled successfully"},
    )
    [booking] = sim.bookings
    assert booking["email"] == "invitee@example.com"


@pytest.mark.parametrize("key", [None, "", "wrong"])
def test_missing_or_wrong_key_is_401(sim: Care360Simulator, key: str | None) -> None:
    status, _, body = post(sim.url, valid_body(), key)
    assert (status, body) == (401, {"status": 401, "success": False, "message": "Unauthorized"})
    assert sim.bookings == []


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"eventTypeId": ""}, "eventTypeId is required"),
        ({"email": "nobody"}, "email must be a valid email"),
        ({"location": "skype"}, "location must be one of"),
        ({"timezone": "Nowhere/City"}, "timezone must be a valid IANA time zone"),
        ({"startTime": "not-a-date"}, "startTime must be a valid ISO 8601 date-time"),
        ({"startTime": "2020-01-01T10:00:00Z"}, "startTime is not a correct slot: it is in the past"),
        ({"startTime": iso(next_slot()).replace(":00:00Z", ":10:00Z")}, "slots start every 30 minutes"),
        ({"tracking": {"utmFoo": "x"}}, "tracking.utmFoo is not allowed"),
        ({"tracking": {"utmSource": 3}}, "tracking.utmSource must be a string or null"),
    ],
)
def test_invalid_bodies_get_the_documented_400(sim: Care360Simulator, overrides: Any, error: str) -> None:
    status, _, body = post(sim.url, valid_body(**overrides), "k-123")
    assert status == 400
    assert body["status"] == 400 and body["success"] is False and body["message"] == "Invalid request"
    assert error in body["error"]
    assert sim.bookings == []


def test_malformed_json_is_400(sim: Care360Simulator) -> None:
    status, _, body = post(sim.url, None, "k-123", raw=b'{"eventTypeId": ')
    assert status == 400 and body["error"] == "body must be valid JSON"


def test_a_one_on_one_slot_is_taken_once(sim: Care360Simulator) -> None:
    start = iso(next_slot(days=2))
    assert post(sim.url, valid_body(startTime=start), "k-123")[0] == 200
    status, _, body = post(sim.url, valid_body(startTime=start, email="b@example.com"), "k-123")
    assert status == 400 and "already booked" in body["error"]
    assert post(sim.url, valid_body(startTime=start, eventTypeId="other"), "k-123")[0] == 200
    assert len(sim.bookings) == 2


def test_rate_limit_answers_429_with_retry_after_and_headers() -> None:
    with Care360Simulator(api_key="k", rate_limit=2, rate_window=2.0, rate_limit_headers=True) as sim:
        codes = [post(sim.url, valid_body(startTime=iso(next_slot(offset_slots=i))), "k") for i in range(3)]
        assert [c[0] for c in codes] == [200, 200, 429]
        status, headers, body = codes[2]
        assert body == {"status": 429, "success": False, "message": "Rate limit exceeded"}
        assert 1 <= int(headers["Retry-After"]) <= 2
        assert headers["X-RateLimit-Limit"] == "2" and headers["X-RateLimit-Remaining"] == "0"
        time.sleep(int(headers["Retry-After"]))
        assert post(sim.url, valid_body(startTime=iso(next_slot(offset_slots=5))), "k")[0] == 200
        assert len(sim.bookings) == 3


def test_rate_limit_without_retry_after() -> None:
    with Care360Simulator(api_key="k", rate_limit=0, send_retry_after=False) as sim:
        status, headers, _ = post(sim.url, valid_body(), "k")
        assert status == 429 and "Retry-After" not in headers


def test_faults_answer_as_told_and_can_apply_the_booking(sim: Care360Simulator) -> None:
    sim.inject(Fault(status=502, body="<html>Bad gateway</html>", content_type="text/html", apply=True))
    request = urllib.request.Request(
        sim.url + PATH,
        data=json.dumps(valid_body()).encode(),
        headers={"Content-Type": "application/json", "cv-api-key": "k-123"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    assert info.value.code == 502 and info.value.read() == b"<html>Bad gateway</html>"
    assert len(sim.bookings) == 1  # applied, though the answer was an error


def test_availability_probe_checks_the_key_first(sim: Care360Simulator) -> None:
    def get(key: str) -> int:
        req = urllib.request.Request(
            sim.url + "/api/v1/calendar/provider-availability", headers={"cv-api-key": key}
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code

    assert get("wrong") == 401
    assert get("k-123") == 400  # provider_states is required


def test_admin_endpoints_expose_the_ledger_and_reset(sim: Care360Simulator) -> None:
    post(sim.url, valid_body(), "k-123")
    with urllib.request.urlopen(sim.url + "/_simulator/bookings", timeout=5) as response:
        assert [b["email"] for b in json.loads(response.read())] == ["invitee@example.com"]
    faults = json.dumps([{"status": 503}]).encode()
    urllib.request.urlopen(urllib.request.Request(sim.url + "/_simulator/faults", data=faults), timeout=5)
    assert post(sim.url, valid_body(startTime=iso(next_slot(offset_slots=1))), "k-123")[0] == 503
    urllib.request.urlopen(urllib.request.Request(sim.url + "/_simulator/reset", data=b""), timeout=5)
    assert sim.bookings == [] and sim.requests == []


def test_start_on_a_free_port_and_stop_cleanly() -> None:
    sim = Care360Simulator(api_key="k").start()
    port = sim.port
    assert port > 0
    sim.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/_simulator/health", timeout=2)
    sim.stop()  # a second stop is harmless


@pytest.mark.integration  # a subprocess
def test_command_line_runs_until_sigterm(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_provider_care360.testing",
            "--port",
            "0",
            "--port-file",
            str(port_file),
        ],
        env={**os.environ, "CARE360_SIMULATOR_API_KEY": "cli-key"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port_file.read_text()}"
        assert post(url, valid_body(), "cli-key")[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert f"listening on {url}" in out
    assert "1 booking(s) accepted" in out
    assert "cli-key" not in out + err


@pytest.mark.integration  # a subprocess
def test_the_simulator_does_not_import_airflow() -> None:
    code = "import sys, airflow_provider_care360.testing; print('airflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- Fetch Appointments (section 2a) ------------------------------------------------------------


def lookup(url: str, query: str, key: str | None = "k-123") -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(f"{url}{PATH}?{query}", headers={"cv-api-key": key} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def test_lookup_shows_what_was_booked_with_milliseconds(sim: Care360Simulator) -> None:
    start = next_slot(days=2)
    assert post(sim.url, valid_body(startTime=iso(start), email="Jane@Example.com"), "k-123")[0] == 200

    status, _, body = lookup(sim.url, "user_email=jane@example.COM")  # matched case-insensitively
    assert (status, body["success"], body["message"]) == (200, True, "Appointments fetched successfully")
    [appointment] = body["data"]
    assert appointment["start"] == start.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert appointment["end"] == (start + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert appointment["status"] == "CONFIRMED" and appointment["isDeleted"] is False
    assert {"eventTypeId", "email", "tracking"}.isdisjoint(appointment)  # as the API: no such fields


def test_lookup_of_an_unknown_email_is_the_documented_not_found(sim: Care360Simulator) -> None:
    status, _, body = lookup(sim.url, "user_email=nobody@example.com")
    assert status == 404 and body["success"] is False and "NotFoundError" in body["error"]


def test_lookup_checks_the_key_and_the_query(sim: Care360Simulator) -> None:
    assert lookup(sim.url, "user_email=a@example.com", key="wrong")[0] == 401
    assert lookup(sim.url, "")[0] == 400
    assert lookup(sim.url, "start_date=2026-01-01")[0] == 400
    assert lookup(sim.url, "start_date=2026-01-02&end_date=2026-01-01")[0] == 400
    assert lookup(sim.url, "start_date=2026-1-1&end_date=2026-01-02")[0] == 400


def test_lookup_by_days_matches_overlaps_sorted_by_end(sim: Care360Simulator) -> None:
    late, early = next_slot(days=3, offset_slots=3), next_slot(days=3)
    sim.add_appointment(email="b@example.com", start=late.isoformat(), duration_minutes=60)
    sim.add_appointment(email="a@example.com", start=early.isoformat())
    sim.add_appointment(email="c@example.com", start=next_slot(days=9).isoformat())
    day = early.date().isoformat()
    status, _, body = lookup(sim.url, f"start_date={day}&end_date={day}")
    starts = [a["start"] for a in body["data"]]
    expected = [early, late] if late.date() == early.date() else [early]
    assert status == 200 and starts == [s.strftime("%Y-%m-%dT%H:%M:%S.000Z") for s in expected]


def test_cancelled_appointments_leave_lookups_and_free_their_slot(sim: Care360Simulator) -> None:
    start = next_slot(days=2)
    assert post(sim.url, valid_body(startTime=iso(start)), "k-123")[0] == 200
    [booked] = sim.bookings
    assert sim.cancel_appointment(booked["id"]) is True
    assert lookup(sim.url, "user_email=invitee@example.com")[2]["data"] == []
    assert post(sim.url, valid_body(startTime=iso(start)), "k-123")[0] == 200  # the slot is free again


def test_preloaded_appointments_show_in_lookups_and_take_their_slot(sim: Care360Simulator) -> None:
    start = next_slot(days=2)
    sim.add_appointment(email="invitee@example.com", start=start.isoformat(), event_type_id="evt")
    assert len(lookup(sim.url, "user_email=invitee@example.com")[2]["data"]) == 1
    assert post(sim.url, valid_body(startTime=iso(start)), "k-123")[0] == 400
    assert sim.bookings == [] and len(sim.appointments) == 1


def test_lookup_faults_and_rate_limit_are_separate_from_bookings() -> None:
    with Care360Simulator(api_key="k-123", lookup_rate_limit=1, lookup_rate_window=60) as sim:
        sim.inject(Fault(503, target="lookup"))
        sim.inject(Fault(passthrough=True, target="lookup"))
        assert post(sim.url, valid_body(), "k-123")[0] == 200  # booking faults untouched
        assert lookup(sim.url, "user_email=invitee@example.com")[0] == 503
        assert lookup(sim.url, "user_email=invitee@example.com")[0] == 200  # passthrough, 1st of limit
        status, headers, _ = lookup(sim.url, "user_email=invitee@example.com")
        assert status == 429 and "Retry-After" in headers
        assert [r["status"] for r in sim.lookup_requests] == [503, 200, 429]
        assert [r["status"] for r in sim.booking_requests] == [200]
    with pytest.raises(ValueError, match="target"):
        Fault(500, target="nowhere")


def test_the_old_import_path_still_works() -> None:
    from airflow_provider_care360 import simulator, testing

    assert simulator.Care360Simulator is testing.Care360Simulator and simulator.Fault is testing.Fault


def test_the_contract_rules_are_pure_functions_of_their_inputs() -> None:
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from airflow_provider_care360.testing.rules import booking_problem, lookup_answer

    body = {
        "eventTypeId": "e",
        "startTime": "2031-03-01T10:00:00+05:45",
        "email": "a@example.com",
        "timezone": "UTC",
        "location": "zoom_conference",
    }
    then = datetime(2031, 1, 1, tzinfo=UTC)
    assert booking_problem(body, slot_minutes=30, zone=ZoneInfo("Asia/Kathmandu"), now=then) is None
    assert "from midnight in UTC" in str(
        booking_problem(body, slot_minutes=30, zone=ZoneInfo("UTC"), now=then)
    )
    later = datetime(2032, 1, 1, tzinfo=UTC)
    assert "in the past" in str(booking_problem(body, slot_minutes=30, zone=ZoneInfo("UTC"), now=later))

    ledger = [
        {
            "id": "1",
            "email": "A@example.com",
            "startTime": "2031-03-01T04:15:00Z",
            "slot": "2031-03-01T04:15:00Z",
            "end": "2031-03-01T04:45:00Z",
            "bookedAt": "2031-01-01T00:00:00+00:00",
            "cancelled": False,
        }
    ]
    status, answer = lookup_answer(ledger, {"user_email": ["a@EXAMPLE.com"]}, now=then)
    assert (status, [a["start"] for a in answer["data"]]) == (200, ["2031-03-01T04:15:00.000Z"])
    assert lookup_answer(ledger, {"user_email": ["a@example.com"]}, now=later)[1]["data"] == []
    assert lookup_answer(ledger, {"user_email": ["b@example.com"]}, now=then)[0] == 404


# -- late answers, lookup lag, statuses, races, quotas and latency (over HTTP, with requests) -----

JSON_HEADERS = {"Content-Type": "application/json", "cv-api-key": "k-123"}


def book(sim: Care360Simulator, timeout: float = 10, **overrides: Any) -> requests.Response:
    return requests.post(sim.url + PATH, json=valid_body(**overrides), headers=JSON_HEADERS, timeout=timeout)


def fetch(sim: Care360Simulator, email: str = "invitee@example.com") -> requests.Response:
    return requests.get(sim.url + PATH, params={"user_email": email}, headers=JSON_HEADERS, timeout=10)


def in_background(call: Any) -> tuple[threading.Thread, list[Any]]:
    """Run ``call`` on a thread; its result (or exception) lands in the list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(call())
        except Exception as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def until(condition: Any, timeout: float = 10) -> bool:
    """Poll ``condition`` until it holds; a bound on a hung simulator, not a speed requirement."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_apply_after_books_late_after_an_immediate_504(sim: Care360Simulator) -> None:
    sim.inject(Fault(504, b"", apply_after=1.0))
    answered = book(sim)
    assert answered.status_code == 504
    # The gateway answered; the backend has not booked yet, and the lookup cannot tell.
    assert sim.bookings == [] and fetch(sim).status_code == 404
    [entry] = sim.booking_requests
    assert entry["applied"] is None and entry["fault"]["apply_after"] == 1.0
    assert sim.wait_pending(timeout=10)
    [booking] = sim.bookings
    assert booking["email"] == "invitee@example.com"
    assert len(fetch(sim).json()["data"]) == 1
    assert sim.booking_requests[0]["applied"] is True


def test_apply_after_books_while_the_answer_is_still_held(sim: Care360Simulator) -> None:
    # The timer is its own thread: the booking lands while the delayed answer has not gone out.
    sim.inject(Fault(504, b"", delay=1.5, apply_after=0.2))
    thread, out = in_background(lambda: book(sim))
    assert until(lambda: sim.bookings != [])
    assert thread.is_alive() and out == []  # booked before the 504 went out
    thread.join(timeout=10)
    assert out[0].status_code == 504


def test_apply_after_books_even_when_the_connection_is_reset(sim: Care360Simulator) -> None:
    sim.inject(Fault(reset=True, apply_after=0.3))
    with pytest.raises(requests.ConnectionError):
        book(sim)
    assert sim.wait_pending(timeout=10)
    assert len(sim.bookings) == 1


def test_apply_after_0_books_before_answering_and_a_bad_body_never_books(sim: Care360Simulator) -> None:
    sim.inject(Fault(502, b"", apply_after=0))
    assert book(sim).status_code == 502
    assert len(sim.bookings) == 1  # no wait: applied before the answer
    sim.inject(Fault(502, b"", apply_after=0.1))
    assert book(sim, startTime="2020-01-01T10:00:00Z").status_code == 502  # in the past: invalid
    assert sim.wait_pending(timeout=10)
    assert len(sim.bookings) == 1 and sim.booking_requests[-1]["applied"] is False


def test_a_late_application_loses_a_one_on_one_race_and_doubles_otherwise() -> None:
    start = iso(next_slot(days=2))
    with Care360Simulator(api_key="k-123") as sim:
        sim.inject(Fault(504, b"", apply_after=0.5))
        assert book(sim, startTime=start).status_code == 504
        assert book(sim, startTime=start).status_code == 200  # the retry takes the slot first
        assert sim.wait_pending(timeout=10)
        assert len(sim.bookings) == 1 and sim.booking_requests[0]["applied"] is False
    with Care360Simulator(api_key="k-123", one_on_one=False) as sim:
        sim.inject(Fault(504, b"", apply_after=0.5))
        assert book(sim, startTime=start).status_code == 504
        assert book(sim, startTime=start).status_code == 200
        assert sim.wait_pending(timeout=10)
        assert len(sim.bookings) == 2  # the double booking a blind retry makes
        assert len(fetch(sim).json()["data"]) == 2


def test_reset_drops_a_pending_late_application(sim: Care360Simulator) -> None:
    sim.inject(Fault(504, b"", apply_after=0.3))
    assert book(sim).status_code == 504
    sim.reset()
    assert sim.wait_pending(timeout=1)
    time.sleep(0.6)  # past the time it was due
    assert sim.bookings == []


def test_apply_after_is_validated_and_reaches_the_admin_endpoint(sim: Care360Simulator) -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        Fault(504, apply_after=-1)
    with pytest.raises(ValueError, match="exclusive"):
        Fault(504, apply=True, apply_after=1)
    with pytest.raises(ValueError, match="target must be 'booking'"):
        Fault(504, apply_after=1, target="lookup")
    with pytest.raises(ValueError, match="number of seconds"):
        Fault(504, apply_after=float("nan"))
    faults = sim.url + "/_simulator/faults"
    bad = requests.post(faults, json={"status": 504, "apply_after": -0.5}, timeout=10)
    assert bad.status_code == 400 and "negative" in bad.json()["error"]
    assert requests.post(faults, json={"status": 504, "apply_after": 0.2}, timeout=10).status_code == 200
    assert book(sim).status_code == 504
    assert sim.wait_pending(timeout=10) and len(sim.bookings) == 1


def test_lookup_lag_hides_a_booking_for_a_while_but_its_slot_is_taken_at_once() -> None:
    with Care360Simulator(api_key="k-123", lookup_lag=0.8) as sim:
        start = iso(next_slot(days=2))
        booked_at = time.monotonic()
        assert book(sim, startTime=start).status_code == 200
        assert fetch(sim).status_code == 404  # not visible yet: an invitee with nothing
        assert book(sim, startTime=start).status_code == 400  # but the slot is taken
        sim.add_appointment(email="other@example.com", start=iso(next_slot(days=3)))
        assert len(fetch(sim, "other@example.com").json()["data"]) == 1  # pre-loaded: at once
        assert until(lambda: fetch(sim).status_code == 200)
        assert time.monotonic() - booked_at >= 0.8
        assert len(fetch(sim).json()["data"]) == 1
        sim.lookup_lag = 0
        assert book(sim, startTime=iso(next_slot(days=4))).status_code == 200
        assert len(fetch(sim).json()["data"]) == 2  # an attribute, changed while running
    with pytest.raises(ValueError, match="lookup_lag"):
        Care360Simulator(api_key="k", lookup_lag=-1)


def test_preloaded_statuses_show_in_lookups_as_given(sim: Care360Simulator) -> None:
    sim.add_appointment(email="a@example.com", start=iso(next_slot(days=2)), status="CANCELLED")
    sim.add_appointment(email="a@example.com", start=iso(next_slot(days=3)), is_deleted=True)
    admin = sim.url + "/_simulator/appointments"
    preload = {
        "email": "a@example.com",
        "start": iso(next_slot(days=4)),
        "status": "PENDING",
        "isDeleted": False,
    }
    stored = requests.post(admin, json=preload, timeout=10)
    assert stored.status_code == 200 and stored.json()["appointment"]["status"] == "PENDING"
    data = fetch(sim, "a@example.com").json()["data"]
    assert [(a["status"], a["isDeleted"]) for a in data] == [
        ("CANCELLED", False),
        ("CONFIRMED", True),
        ("PENDING", False),
    ]
    for bad in ({"status": ""}, {"status": 3}, {"isDeleted": "yes"}):
        answer = requests.post(
            admin, json={"email": "b@example.com", "start": iso(next_slot()), **bad}, timeout=10
        )
        assert answer.status_code == 400, bad
    with pytest.raises(ValueError, match="status must be a non-empty string"):
        sim.add_appointment(email="b@example.com", start=iso(next_slot()), status="")


def test_created_at_orders_two_duplicates_and_cancel_removes_the_later() -> None:
    with Care360Simulator(api_key="k-123", one_on_one=False) as sim:
        start = iso(next_slot(days=2))
        assert book(sim, startTime=start).status_code == 200
        assert book(sim, startTime=start).status_code == 200  # a few ms later, the same slot
        first, second = (b["id"] for b in sim.bookings)
        data = {a["id"]: a for a in fetch(sim).json()["data"]}
        created = {key: data[key]["createdAt"] for key in (first, second)}
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", c) for c in created.values())
        assert datetime.fromisoformat(created[first]) < datetime.fromisoformat(created[second])

        later = max(data.values(), key=lambda a: datetime.fromisoformat(a["createdAt"]))
        cancel = {"email": "invitee@example.com", "appointmentId": later["id"], "reason": "duplicate"}
        answer = requests.post(sim.url + PATH + "/cancel", json=cancel, headers=JSON_HEADERS, timeout=10)
        assert answer.status_code == 200 and answer.json()["success"] is True
        assert [a["id"] for a in fetch(sim).json()["data"]] == [first]
        # Made in the same millisecond, they are still told apart and ordered.
        for i in range(30):
            sim.add_appointment(email="many@example.com", start=next_slot(days=5, offset_slots=i))
        stamps = [
            datetime.fromisoformat(a["createdAt"]) for a in fetch(sim, "many@example.com").json()["data"]
        ]
        assert len(stamps) == 30 and all(a < b for a, b in zip(stamps, stamps[1:], strict=False))
    with Care360Simulator(api_key="k-123") as sim:  # one-on-one: the cancel frees the slot
        assert book(sim, startTime=start).status_code == 200
        [appointment] = fetch(sim).json()["data"]
        cancel = {"email": "invitee@example.com", "appointmentId": appointment["id"]}
        assert requests.post(sim.url + PATH + "/cancel", json=cancel, headers=JSON_HEADERS, timeout=10).ok
        assert fetch(sim).json()["data"] == []
        assert book(sim, startTime=start).status_code == 200


def test_latency_delays_every_api_answer_but_not_other_connections() -> None:
    with Care360Simulator(api_key="k-123", latency=1.5, booking_latency=0.3) as sim:
        started = time.monotonic()
        threads = [in_background(lambda: fetch(sim))[0] for _ in range(4)]
        # All four are being handled at once: each waits on its own thread.
        assert until(lambda: len(sim.lookup_requests) == 4)
        assert all(thread.is_alive() for thread in threads)
        health = requests.get(sim.url + "/_simulator/health", timeout=10)  # admin: no latency
        assert health.status_code == 200 and all(thread.is_alive() for thread in threads)
        # A request that waits less is answered first: the waits overlap, they are not queued.
        booked = book(sim)
        assert booked.status_code == 200 and all(thread.is_alive() for thread in threads)
        for thread in threads:
            thread.join(timeout=10)
        assert time.monotonic() - started >= 1.5
        started = time.monotonic()
        requests.get(sim.url + "/api/v1/calendar/provider-availability", headers=JSON_HEADERS, timeout=10)
        assert time.monotonic() - started >= 1.5  # every API endpoint, even a 400
        sim.inject(Fault(503, target="cancel"))
        started = time.monotonic()
        cancel = {"email": "invitee@example.com", "appointmentId": "x"}
        answer = requests.post(sim.url + PATH + "/cancel", json=cancel, headers=JSON_HEADERS, timeout=10)
        assert answer.status_code == 503 and time.monotonic() - started >= 1.5  # a fault's answer too
    with pytest.raises(ValueError, match="latency"):
        Care360Simulator(api_key="k", latency=-0.1)


def test_booking_and_lookup_latency_override_latency() -> None:
    with Care360Simulator(api_key="k-123", latency=1.5, booking_latency=0) as sim:
        slow, _ = in_background(lambda: fetch(sim))
        assert until(lambda: len(sim.lookup_requests) == 1)
        assert book(sim).status_code == 200  # the booking does not wait
        assert slow.is_alive()
        # The record tells which request is still waiting for its answer.
        assert sim.lookup_requests[0]["answered"] is None
        assert sim.booking_requests[0]["answered"] >= sim.booking_requests[0]["at"]
        slow.join(timeout=10)
        assert sim.lookup_requests[0]["answered"] - sim.lookup_requests[0]["at"] >= 1.5
    with Care360Simulator(api_key="k-123", booking_latency=1.5) as sim:
        slow, out = in_background(lambda: book(sim))
        # The booking took effect when it arrived; only its answer is late.
        assert until(lambda: len(sim.bookings) == 1)
        assert fetch(sim).status_code == 200  # the lookup does not wait (latency is 0)
        assert slow.is_alive() and out == []
        slow.join(timeout=10)
        assert out[0].status_code == 200
        sim.lookup_latency = 1.5
        sim.booking_latency = 0
        slow, _ = in_background(lambda: fetch(sim))
        assert until(lambda: len(sim.lookup_requests) == 2)
        assert book(sim, startTime=iso(next_slot(days=2))).status_code == 200
        assert slow.is_alive()


def test_a_quota_refuses_with_only_x_ratelimit_headers() -> None:
    with Care360Simulator(api_key="k-123", quota=2, quota_window=3600) as sim:
        answers = [book(sim, startTime=iso(next_slot(days=2, offset_slots=i))) for i in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        refused = answers[2]
        assert refused.json() == {"status": 429, "success": False, "message": "Rate limit exceeded"}
        assert "Retry-After" not in refused.headers
        assert refused.headers["X-RateLimit-Limit"] == "2" and refused.headers["X-RateLimit-Remaining"] == "0"
        assert 3500 < int(refused.headers["X-RateLimit-Reset"]) <= 3600
        # Only bookings spend it: the lookup and cancel still answer.
        [appointment, _] = fetch(sim).json()["data"]
        cancel = {"email": "invitee@example.com", "appointmentId": appointment["id"]}
        assert requests.post(sim.url + PATH + "/cancel", json=cancel, headers=JSON_HEADERS, timeout=10).ok
        sim.quota = 5  # an attribute, changed while running
        assert book(sim, startTime=iso(next_slot(days=3))).status_code == 200
    with pytest.raises(ValueError, match="quota"):
        Care360Simulator(api_key="k", quota=-1)
    with pytest.raises(ValueError, match="quota_window"):
        Care360Simulator(api_key="k", quota=1, quota_window=0)


def test_a_request_refused_by_the_window_does_not_spend_the_quota() -> None:
    with Care360Simulator(api_key="k-123", rate_limit=1, rate_window=1.0, quota=2, quota_window=3600) as sim:
        assert book(sim, startTime=iso(next_slot(days=2))).status_code == 200
        refused = book(sim, startTime=iso(next_slot(days=2, offset_slots=1)))
        assert refused.status_code == 429 and "Retry-After" in refused.headers  # the window's 429
        time.sleep(int(refused.headers["Retry-After"]))
        assert book(sim, startTime=iso(next_slot(days=2, offset_slots=2))).status_code == 200  # quota 2/2
        last = book(sim, startTime=iso(next_slot(days=2, offset_slots=3)))  # both tiers refuse it
        assert last.status_code == 429 and "Retry-After" not in last.headers  # the quota answers
        assert int(last.headers["X-RateLimit-Reset"]) > 3000


def test_a_request_refused_by_the_quota_does_not_spend_the_window() -> None:
    with Care360Simulator(api_key="k-123", rate_limit=2, rate_window=3600, quota=1, quota_window=1.0) as sim:
        assert book(sim, startTime=iso(next_slot(days=2))).status_code == 200
        refused = book(sim, startTime=iso(next_slot(days=2, offset_slots=1)))
        assert refused.status_code == 429 and "Retry-After" not in refused.headers  # the quota's 429
        time.sleep(int(refused.headers["X-RateLimit-Reset"]))
        assert book(sim, startTime=iso(next_slot(days=2, offset_slots=2))).status_code == 200  # window 2/2
        sim.quota = None  # now only the window counts: it holds two, not three
        assert "Retry-After" in book(sim, startTime=iso(next_slot(days=2, offset_slots=3))).headers


def test_the_command_line_passes_the_new_options_to_a_working_simulator(
    monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from airflow_provider_care360.testing import cli

    given: dict[str, Any] = {}

    class Captured(Exception):
        pass

    def capture(api_key: str, **kwargs: Any) -> Any:
        given.update(kwargs)
        raise Captured

    monkeypatch.setattr(cli, "Care360Simulator", capture)
    argv = ["--api-key", "k-123", "--port", "0", "--quota", "1", "--quota-window", "600", "--latency", "0.2"]
    argv += ["--lookup-lag", "0.5", "--booking-latency", "0", "--lookup-latency", "0.3"]
    with pytest.raises(Captured):
        cli.main(argv)
    options = ("quota", "quota_window", "latency", "lookup_lag", "booking_latency", "lookup_latency")
    assert {name: given[name] for name in options} == {
        "quota": 1,
        "quota_window": 600.0,
        "latency": 0.2,
        "lookup_lag": 0.5,
        "booking_latency": 0.0,
        "lookup_latency": 0.3,
    }
    with Care360Simulator(api_key="k-123", **given) as sim:
        assert book(sim).status_code == 200
        assert fetch(sim).status_code == 404  # lagging
        refused = book(sim, startTime=iso(next_slot(days=2)))
        assert refused.status_code == 429 and refused.headers["X-RateLimit-Limit"] == "1"
    for flag in ("--latency", "--lookup-lag", "--booking-latency"):
        with pytest.raises(SystemExit) as exited:
            cli.main(["--api-key", "k", flag, "-1"])
        assert exited.value.code == 2
        assert "not a number of seconds of at least 0" in capsys.readouterr().err
