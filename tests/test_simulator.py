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
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_care360.simulator import Care360Simulator, Fault
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


def test_command_line_runs_until_sigterm(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_provider_care360.simulator",
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


def test_the_simulator_does_not_import_airflow() -> None:
    code = "import sys, airflow_provider_care360.simulator; print('airflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
