"""The simulator speaks the documented contract over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

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
