"""
The simulator answers every request with JSON, whatever a client sends: raw sockets on loopback.

Each test here is one row of what a user's tools sent it (curl, schemathesis, a burst of clients)
when it still dropped connections, crashed a thread or answered HTML.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from airflow_provider_care360.testing import ADMIN_TOKEN_HEADER, Care360Simulator, Fault, main, server
from support import iso, next_slot

KEY = "k-http"
PATH = "/api/v1/calendar/appointments"


def exchange(
    sim: Care360Simulator, raw: bytes, host: str = "127.0.0.1", timeout: float = 10
) -> tuple[int, dict[str, str], Any]:
    """Send raw bytes, read one whole answer; fails the test if the server drops the connection."""
    with socket.create_connection((host, sim.port), timeout=timeout) as conn:
        conn.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            assert chunk, f"connection closed without an answer after {data!r}"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers["content-length"])
        while len(rest) < length:
            chunk = conn.recv(65536)
            assert chunk, "connection closed in the middle of the answer"
            rest += chunk
    body = json.loads(rest[:length]) if length else None
    return status, headers, body


def request(
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    length: bool = True,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None and length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + (body or b"")


def booking(**overrides: Any) -> bytes:
    body = {
        "eventTypeId": "evt",
        "startTime": iso(next_slot()),
        "email": "invitee@example.com",
        "timezone": "UTC",
        "location": "zoom_conference",
        **overrides,
    }
    return json.dumps(body).encode()


JSON_KEY = {"Content-Type": "application/json", "cv-api-key": KEY}


def envelope(body: Any, status: int) -> None:
    assert isinstance(body, dict) and body["status"] == status and body["success"] is False, body
    assert isinstance(body["message"], str)


@pytest.fixture
def sim() -> Any:
    with Care360Simulator(api_key=KEY) as running:
        yield running


def test_a_body_nested_50000_deep_is_a_400_not_a_dropped_connection(sim: Care360Simulator) -> None:
    status, _, body = exchange(sim, request("POST", PATH, b"[" * 50_000, JSON_KEY))
    assert status == 400
    envelope(body, 400)
    assert body["error"] == "body must be valid JSON"
    assert sim.bookings == []


@pytest.mark.parametrize(
    "start", ["9999-12-31T23:30:00-05:00", "0001-01-01T00:30:00+01:00", "9999-12-31T23:45:00Z"]
)
def test_a_start_time_at_the_end_of_the_calendar_is_a_400(sim: Care360Simulator, start: str) -> None:
    status, _, body = exchange(sim, request("POST", PATH, booking(startTime=start), JSON_KEY))
    assert status == 400
    assert body["error"] in (
        "startTime is out of range",
        "startTime is not a correct slot: it is in the past",
    )


def test_a_content_length_that_is_not_ascii_digits_is_a_400(sim: Care360Simulator) -> None:
    raw = request("POST", PATH, None, {**JSON_KEY, "Content-Length": "²"})
    status, headers, body = exchange(sim, raw)
    assert status == 400 and "Content-Length" in body["error"]
    assert headers["connection"] == "close"


def test_slot_minutes_0_is_refused_at_the_command_line_and_in_python(capsys: Any) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--api-key", "k", "--slot-minutes", "0"])
    assert exited.value.code == 2
    assert "--slot-minutes: 0 is not between 1 and 1440" in capsys.readouterr().err
    with pytest.raises(ValueError, match="slot_minutes must be a whole number from 1 to 1440"):
        Care360Simulator(api_key="k", slot_minutes=0)
    with pytest.raises(ValueError, match="rate_window"):
        Care360Simulator(api_key="k", rate_window=0)


def test_the_readmes_curl_reset_without_a_body_resets(sim: Care360Simulator) -> None:
    assert exchange(sim, request("POST", PATH, booking(), JSON_KEY))[0] == 200
    # What `curl -s -X POST http://127.0.0.1:8360/_simulator/reset` sends: no Content-Length at all.
    status, _, body = exchange(sim, request("POST", "/_simulator/reset"))
    assert (status, body) == (200, {"ok": True})
    assert sim.bookings == []


def test_a_10_mb_body_is_413_before_it_is_read(sim: Care360Simulator) -> None:
    raw = request("POST", PATH, None, {**JSON_KEY, "Content-Length": str(10 * 1024 * 1024)})
    status, headers, body = exchange(sim, raw)  # no body sent: the server must not wait for it
    assert status == 413
    envelope(body, 413)
    assert headers["connection"] == "close"


TEN_MB = b"x" * 10_000_000


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_client_still_sending_10_mb_reads_the_413_instead_of_a_broken_pipe(
    sim: Care360Simulator, framing: str
) -> None:
    # A generator makes requests send it chunked; bytes go out with Content-Length.
    chunks = (TEN_MB[i : i + 65536] for i in range(0, len(TEN_MB), 65536))
    data: Any = TEN_MB if framing == "content-length" else chunks
    answer = requests.post(sim.url + PATH, data=data, headers=JSON_KEY, timeout=30)
    assert answer.status_code == 413 and answer.headers["Connection"] == "close"
    envelope(answer.json(), 413)
    assert "1048576 bytes" in answer.json()["error"]
    assert requests.get(sim.url + "/_simulator/health", timeout=10).status_code == 200  # still serving


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_client_that_sends_the_whole_10_mb_before_reading_gets_the_413(
    sim: Care360Simulator, framing: str
) -> None:
    # requests (urllib3 2) reads the answer after a broken pipe and often gets it anyway; a client
    # that writes everything first (http.client, urllib, most tools) gets EPIPE unless the server
    # drains what it refused before closing.
    if framing == "content-length":
        raw = request("POST", PATH, TEN_MB, JSON_KEY)
    else:
        body = b"".join(b"10000\r\n" + TEN_MB[i : i + 65536] + b"\r\n" for i in range(0, 65536 * 152, 65536))
        raw = request(
            "POST", PATH, body + b"0\r\n\r\n", {**JSON_KEY, "Transfer-Encoding": "chunked"}, length=False
        )
    status, headers, body_ = exchange(sim, raw, timeout=30)
    assert status == 413 and headers["connection"] == "close"
    envelope(body_, 413)
    if framing == "content-length":  # and the standard library's own client, the same way
        post = urllib.request.Request(sim.url + PATH, data=TEN_MB, headers=JSON_KEY, method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(post, timeout=30)
        assert refused.value.code == 413
        envelope(json.loads(refused.value.read()), 413)


def _refused_413(sim: Care360Simulator) -> socket.socket:
    """A connection that announced 10 MB and sent a little: read its 413 up to the server's FIN."""
    conn = socket.create_connection(("127.0.0.1", sim.port), timeout=30)
    conn.sendall(request("POST", PATH, None, {**JSON_KEY, "Content-Length": str(10_000_000)}) + b"x" * 1000)
    data = b""
    while chunk := conn.recv(65536):  # the answer, then the server's FIN (it still reads)
        data += chunk
    assert data.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in data
    return conn


def _closed(conn: socket.socket) -> bool:
    """Whether the server has closed its end: a write to a closed socket is answered with a reset."""
    try:
        for _ in range(3):
            conn.send(b"x")
            time.sleep(0.05)
    except OSError:
        return True
    return False


def test_draining_a_refused_body_stops_after_a_second_without_data(sim: Care360Simulator) -> None:
    with _refused_413(sim) as conn:
        assert not _closed(conn)  # still draining what the client sends
        time.sleep(2.5)  # idle: over one second
        assert _closed(conn)


def test_draining_a_refused_body_stops_after_drain_seconds(
    sim: Care360Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "DRAIN_SECONDS", 0.5)
    with _refused_413(sim) as conn:
        deadline = time.monotonic() + 10  # a client that never stops sending is cut off
        while not _closed(conn):
            assert time.monotonic() < deadline, "the server drained for too long"


def test_a_chunked_body_books_and_an_oversized_one_is_413(sim: Care360Simulator) -> None:
    payload = booking()
    chunks = b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (payload[:10], payload[10:]))
    raw = request(
        "POST", PATH, chunks + b"0\r\n\r\n", {**JSON_KEY, "Transfer-Encoding": "chunked"}, length=False
    )
    status, _, body = exchange(sim, raw)
    assert (status, body["success"]) == (200, True)
    assert len(sim.bookings) == 1

    huge = request("POST", PATH, b"ffffff\r\n", {**JSON_KEY, "Transfer-Encoding": "chunked"}, length=False)
    assert exchange(sim, huge)[0] == 413
    bad = request("POST", PATH, b"zz\r\n", {**JSON_KEY, "Transfer-Encoding": "chunked"}, length=False)
    assert exchange(sim, bad)[0] == 400


def _client(sim: Care360Simulator, barrier: threading.Barrier, results: list[Any]) -> None:
    try:
        barrier.wait(timeout=10)
        results.append(exchange(sim, request("GET", "/_simulator/health"), timeout=5)[0])
    except Exception as exc:  # a reset connection is what the test looks for
        results.append(exc)


def test_50_clients_connecting_at_once_are_all_answered(sim: Care360Simulator) -> None:
    for _ in range(5):
        barrier = threading.Barrier(50)
        results: list[Any] = []
        threads = [threading.Thread(target=_client, args=(sim, barrier, results)) for _ in range(50)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30  # a bound on a hung server, not a speed requirement
        for thread in threads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
        assert results == [200] * 50


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_on_the_booking_path_are_405_with_allow(sim: Care360Simulator, method: str) -> None:
    status, headers, body = exchange(sim, request(method, PATH, b"{}", JSON_KEY))
    assert status == 405 and headers["allow"] == "GET, POST"
    envelope(body, 405)
    assert sim.bookings == []


def test_get_on_the_booking_path_is_the_lookup_and_other_paths_and_methods_are_json(
    sim: Care360Simulator,
) -> None:
    status, _, body = exchange(sim, request("GET", PATH + "?user_email=x@example.com", None, JSON_KEY))
    assert (status, body["error"]) == (404, "NotFoundError: no user with this email")
    status, _, body = exchange(sim, request("GET", "/nowhere", None, JSON_KEY))
    assert status == 404
    envelope(body, 404)
    for method in ("BREW", "TRACE", "CONNECT"):
        status, headers, body = exchange(sim, request(method, PATH, None, JSON_KEY))
        assert status == 405 and headers["allow"] == "GET, POST", method
        envelope(body, 405)
    status, _, body = exchange(sim, request("TRACE", "/nowhere", None, JSON_KEY))
    assert status == 404
    status, _, body = exchange(sim, b"NONSENSE\r\n\r\n")
    assert status == 400
    envelope(body, 400)


def test_slots_align_on_the_instant_in_the_host_zone_whatever_offset_the_client_wrote() -> None:
    day = (datetime.now(UTC) + timedelta(days=3)).date().isoformat()
    same_instant = [f"{day}T10:00:00+05:45", f"{day}T04:15:00Z"]
    with Care360Simulator(api_key=KEY) as utc_host:
        answers = [
            exchange(utc_host, request("POST", PATH, booking(startTime=s), JSON_KEY)) for s in same_instant
        ]
        assert [a[0] for a in answers] == [400, 400]  # 04:15 UTC is not on a 30-minute boundary
        assert all("from midnight in UTC" in a[2]["error"] for a in answers)
    with Care360Simulator(api_key=KEY, host_timezone="Asia/Kathmandu", one_on_one=False) as kathmandu:
        answers = [
            exchange(kathmandu, request("POST", PATH, booking(startTime=s), JSON_KEY)) for s in same_instant
        ]
        assert [a[0] for a in answers] == [200, 200]  # 10:00 in Kathmandu is


def _non_loopback_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: routing only
            address = str(probe.getsockname()[0])
    except OSError:
        return None
    return None if address.startswith("127.") else address


def test_admin_endpoints_answer_loopback_only_unless_a_token_is_set() -> None:
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no address besides loopback")
    with Care360Simulator(api_key=KEY, host="0.0.0.0") as open_sim:
        for path in ("/_simulator/requests", "/_simulator/bookings", "/_simulator/reset"):
            method = "POST" if path.endswith("reset") else "GET"
            status, _, body = exchange(open_sim, request(method, path), host=address)
            assert status == 403 and ADMIN_TOKEN_HEADER in body["error"], path
        assert exchange(open_sim, request("GET", "/_simulator/health"), host="127.0.0.1")[0] == 200
    with Care360Simulator(api_key=KEY, host="0.0.0.0", admin_token="t0ken") as token_sim:
        assert exchange(token_sim, request("GET", "/_simulator/health"), host=address)[0] == 403
        status, _, _ = exchange(
            token_sim, request("GET", "/_simulator/health", None, {ADMIN_TOKEN_HEADER: "t0ken"}), host=address
        )
        assert status == 200
        # With a token, loopback needs it too: whoever can reach the port is no longer trusted.
        assert exchange(token_sim, request("GET", "/_simulator/health"), host="127.0.0.1")[0] == 403


def test_recorded_requests_never_hold_the_key(sim: Care360Simulator) -> None:
    exchange(sim, request("POST", PATH, booking(), JSON_KEY))
    exchange(sim, request("POST", PATH, booking(), {**JSON_KEY, "cv-api-key": "wrong-key"}))
    _, _, recorded = exchange(sim, request("GET", "/_simulator/requests"))
    assert [r["key"] for r in recorded] == ["valid", "invalid"]
    text = json.dumps(recorded) + json.dumps(sim.requests)
    assert KEY not in text and "wrong-key" not in text


def test_cancel_frees_the_slot_and_leaves_lookups(sim: Care360Simulator) -> None:
    start = iso(next_slot(days=2))
    assert exchange(sim, request("POST", PATH, booking(startTime=start), JSON_KEY))[0] == 200
    lookup = request("GET", PATH + "?user_email=invitee@example.com", None, JSON_KEY)
    [appointment] = exchange(sim, lookup)[2]["data"]

    cancel = "/api/v1/calendar/appointments/cancel"
    wrong = json.dumps({"email": "someone@example.com", "appointmentId": appointment["id"]}).encode()
    assert exchange(sim, request("POST", cancel, wrong, JSON_KEY))[0] == 400
    assert exchange(sim, request("POST", cancel, b"{}", JSON_KEY))[2]["error"] == "email is required"
    assert exchange(sim, request("POST", cancel, wrong, {"Content-Type": "application/json"}))[0] == 401
    right = json.dumps({"email": "Invitee@example.com", "appointmentId": appointment["id"]}).encode()
    status, _, body = exchange(sim, request("POST", cancel, right, JSON_KEY))
    assert (status, body) == (
        200,
        {"status": 200, "success": True, "message": "Meeting cancelled successfully"},
    )
    assert exchange(sim, lookup)[2]["data"] == []
    # The slot is free again: a one-on-one event type takes a new booking of it.
    again = booking(startTime=start, email="next@example.com")
    assert exchange(sim, request("POST", PATH, again, JSON_KEY))[0] == 200
    assert exchange(sim, request("POST", cancel, right, JSON_KEY))[0] == 400  # already cancelled


def test_availability_checks_key_query_rate_limit_and_takes_faults() -> None:
    with Care360Simulator(api_key=KEY, lookup_rate_limit=2, lookup_rate_window=60) as sim:
        path = "/api/v1/calendar/provider-availability"
        assert exchange(sim, request("GET", path + "?provider_states=CA"))[0] == 401
        status, _, body = exchange(sim, request("GET", path, None, JSON_KEY))
        assert (status, body["error"]) == (400, "provider_states is required")
        status, _, body = exchange(
            sim, request("GET", "/api/v1/provider-availability?provider_states=CA", None, JSON_KEY)
        )
        assert (status, body["success"], body["data"]) == (200, True, [])
        assert exchange(sim, request("GET", path + "?provider_states=CA", None, JSON_KEY))[0] == 429
        sim.reset()
        sim.inject(Fault(503, target="availability"))
        sim.inject(Fault(502, target="cancel"))
        assert exchange(sim, request("GET", path + "?provider_states=CA", None, JSON_KEY))[0] == 503
        cancel = json.dumps({"email": "a@example.com", "appointmentId": "x"}).encode()
        assert exchange(sim, request("POST", PATH + "/cancel", cancel, JSON_KEY))[0] == 502


def test_an_appointment_preloaded_through_the_admin_endpoint_shows_in_lookups(sim: Care360Simulator) -> None:
    start = iso(next_slot(days=2))
    preload = json.dumps({"email": "elsewhere@example.com", "start": start}).encode()
    status, _, body = exchange(sim, request("POST", "/_simulator/appointments", preload))
    assert status == 200 and body["appointment"]["email"] == "elsewhere@example.com"
    lookup = request("GET", PATH + "?user_email=elsewhere@example.com", None, JSON_KEY)
    assert [a["start"] for a in exchange(sim, lookup)[2]["data"]] == [start.replace("Z", ".000Z")]
    assert sim.bookings == []  # made elsewhere, not through the API
    bad = json.dumps({"email": "x@example.com", "start": "2030-01-01T10:00:00"}).encode()  # no offset
    assert exchange(sim, request("POST", "/_simulator/appointments", bad))[0] == 400
