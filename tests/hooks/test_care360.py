"""Care360Hook: connection handling and the exact request on the wire (real HTTP to the simulator)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_provider_care360 import __version__
from airflow_provider_care360.exceptions import (
    Care360AuthError,
    Care360BadRequestError,
    Care360ConnectionConfigError,
    Care360NotSentError,
    Care360RateLimitError,
    Care360ValidationError,
)
from airflow_provider_care360.hooks.care360 import DEFAULT_TIMEOUT, ENVIRONMENTS, Care360Hook
from support import iso, next_slot


def set_conn(monkeypatch: pytest.MonkeyPatch, conn_id: str = "care360_default", **conn: Any) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "care360", **conn}))


def book(hook: Care360Hook, start: datetime | str, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "event_type_id": "85f13305-0647-4473-9e63-0a56af405f6f",
        "start_time": start,
        "email": "invitee@example.com",
        "timezone": "Asia/Kolkata",
        "location": "google_conference",
    }
    fields.update(overrides)
    return hook.schedule_appointment(**fields)


# -- the request ----------------------------------------------------------------------------------


def test_exact_request_received_by_the_simulator(simulator: Any, api_key: str) -> None:
    start = next_slot(days=1)
    answer = book(
        Care360Hook(),
        start.astimezone(timezone(timedelta(hours=5, minutes=30))),  # aware, non-UTC
        first_name="John",
        last_name="Doe",
        tracking={"utm_campaign": "spring", "utmSource": None, "salesforce_uuid": "0061x"},
    )

    assert answer == {"status": 200, "success": True, "message": "Meeting scheduled successfully"}
    [request] = simulator.requests
    assert request["method"] == "POST"
    assert request["path"] == "/api/v1/calendar/appointments"
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert request["key"] == "valid" and headers["cv-api-key"] == "***"  # sent; never recorded
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"].startswith(f"airflow-provider-care360/{__version__} apache-airflow/")
    assert request["body"] == {
        "eventTypeId": "85f13305-0647-4473-9e63-0a56af405f6f",
        "startTime": iso(start),  # sent as UTC, with Z
        "email": "invitee@example.com",
        "firstName": "John",
        "lastName": "Doe",
        "timezone": "Asia/Kolkata",
        "location": "google_conference",
        "tracking": {"utmCampaign": "spring", "utmSource": None, "salesforceUuid": "0061x"},
    }


def test_optional_fields_left_out_of_the_body(simulator: Any) -> None:
    book(Care360Hook(), iso(next_slot()), first_name=None, last_name=None, tracking=None)
    body = simulator.requests[0]["body"]
    assert set(body) == {"eventTypeId", "startTime", "email", "timezone", "location"}


def test_naive_start_time_is_read_in_the_invitee_time_zone(simulator: Any) -> None:
    local = (datetime.now() + timedelta(days=3)).replace(hour=10, minute=0, second=0, microsecond=0)
    book(Care360Hook(), local.isoformat(), timezone="Asia/Kolkata")
    # 10:00 in Kolkata (UTC+05:30) is 04:30 UTC.
    assert simulator.requests[0]["body"]["startTime"] == local.strftime("%Y-%m-%dT04:30:00Z")


def test_one_session_reused_across_bookings(simulator: Any) -> None:
    hook = Care360Hook()
    session = hook.get_conn()
    book(hook, next_slot(offset_slots=0))
    book(hook, next_slot(offset_slots=1))
    assert hook.get_conn() is session
    assert len(simulator.bookings) == 2


def test_validation_error_sends_nothing_and_names_every_field(simulator: Any) -> None:
    with pytest.raises(Care360ValidationError) as info:
        book(Care360Hook(), "tomorrow", email="", timezone="Nowhere/City", location="phone")
    assert simulator.requests == []
    problems = " | ".join(info.value.problems)
    for field in ("start_time", "email", "timezone", "location"):
        assert f"{field}:" in problems


def test_validation_happens_before_the_connection_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_CARE360_DEFAULT", raising=False)
    with pytest.raises(Care360ValidationError):
        book(Care360Hook(), "not a time")


def test_status_errors_are_typed(simulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_care360.testing import Fault

    hook = Care360Hook()
    simulator.inject(Fault(status=429, headers={"Retry-After": "7"}))
    with pytest.raises(Care360RateLimitError) as throttled:
        book(hook, next_slot())
    assert throttled.value.retry_after == 7 and throttled.value.http_status == 429

    book(hook, next_slot())
    with pytest.raises(Care360BadRequestError) as taken:
        book(hook, next_slot())
    assert taken.value.api_error == "startTime is not a correct slot: it is already booked"

    set_conn(monkeypatch, host=simulator.url, password="wrong")
    with pytest.raises(Care360AuthError) as denied:
        book(Care360Hook(), next_slot(offset_slots=3))
    assert "'care360_default'" in str(denied.value) and "wrong" not in str(denied.value)


def test_connection_refused_is_not_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    set_conn(monkeypatch, host=f"http://127.0.0.1:{port}", password="k")
    with pytest.raises(Care360NotSentError):
        book(Care360Hook(), next_slot())


# -- the connection ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, ENVIRONMENTS["production"]),
        ({"environment": "production"}, "https://api.care360-next.carevalidate.com"),
        ({"environment": "Staging"}, "https://api-staging.care360-next.carevalidate.com"),
    ],
)
def test_environment_picks_the_base_url(monkeypatch: pytest.MonkeyPatch, extra: Any, expected: str) -> None:
    set_conn(monkeypatch, password="k", extra=extra)
    assert Care360Hook().settings.base_url == expected


@pytest.mark.parametrize(
    ("conn", "expected"),
    [
        ({"host": "http://127.0.0.1:8360"}, "http://127.0.0.1:8360"),
        ({"host": "https://care360.internal.example/proxy/"}, "https://care360.internal.example/proxy"),
        ({"host": "care360.internal.example", "port": 8443}, "https://care360.internal.example:8443"),
        ({"host": "localhost", "schema": "http", "port": 8360}, "http://localhost:8360"),
    ],
)
def test_host_overrides_the_environment(monkeypatch: pytest.MonkeyPatch, conn: Any, expected: str) -> None:
    set_conn(monkeypatch, password="k", extra={"environment": "staging"}, **conn)
    assert Care360Hook().settings.base_url == expected


@pytest.mark.parametrize(
    ("conn", "message"),
    [
        ({"extra": {"environment": "prod"}}, "extra.environment 'prod' is not allowed"),
        ({"password": ""}, "has no API key"),
        ({"host": "ftp://files.example.com"}, "host 'ftp://files.example.com' is not allowed"),
        ({"host": "http://:80"}, "is not allowed"),
        ({"host": "https://api.example.com:notaport"}, "is not allowed"),
        ({"host": "https://user:pw@api.example.com"}, "no credentials in the URL"),
        ({"host": "http://care360.example.com"}, "refusing to send the API key over plain http"),
        ({"extra": {"timeout": "soon"}}, "timeout 'soon' is not allowed"),
        ({"extra": {"timeout": -1}}, "timeout -1 is not allowed"),
    ],
)
def test_bad_connections_are_clear_errors_naming_the_connection(
    monkeypatch: pytest.MonkeyPatch, conn: dict[str, Any], message: str
) -> None:
    set_conn(monkeypatch, "care360_bad", **{"password": "k", **conn})
    with pytest.raises(Care360ConnectionConfigError) as info:
        _ = Care360Hook("care360_bad").settings
    assert "'care360_bad'" in str(info.value) or "Care360Hook('care360_bad')" in str(info.value)
    assert message in str(info.value)


def test_plain_http_to_a_remote_host_needs_an_explicit_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(
        monkeypatch, password="k", host="http://care360.example.com", extra={"allow_insecure_http": True}
    )
    assert Care360Hook().settings.base_url == "http://care360.example.com"


@pytest.mark.parametrize(
    ("extra", "arg", "expected"),
    [
        ({}, None, DEFAULT_TIMEOUT),
        ({"timeout": 12}, None, (12.0, 12.0)),
        ({"timeout": "7.5"}, None, (7.5, 7.5)),
        ({"timeout": [3, 20]}, None, (3.0, 20.0)),
        ({"timeout": 12}, 4, (4.0, 4.0)),
        ({}, (2, 9), (2.0, 9.0)),
    ],
)
def test_timeout_from_extra_and_argument(
    monkeypatch: pytest.MonkeyPatch, extra: Any, arg: Any, expected: tuple[float, float]
) -> None:
    set_conn(monkeypatch, password="k", extra=extra)
    assert Care360Hook(timeout=arg).settings.timeout == expected


def test_read_timeout_is_enforced(simulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_care360.exceptions import Care360AmbiguousError
    from airflow_provider_care360.testing import Fault

    simulator.inject(Fault(status=200, delay=6.0))
    hook = Care360Hook(timeout=(1, 0.5))
    # Without the timeout the 200 would come after 6 s and no error would be raised.
    with pytest.raises(Care360AmbiguousError, match="read timeout"):
        book(hook, next_slot())


def test_repr_and_settings_hide_the_key(simulator: Any, api_key: str) -> None:
    hook = Care360Hook()
    hook.get_conn()
    for text in (repr(hook), repr(hook.settings), repr(hook.get_conn().auth), str(hook.__dict__)):
        assert api_key not in text


# -- test_connection -----------------------------------------------------------------------------


def test_test_connection_accepts_a_valid_key_and_books_nothing(simulator: Any) -> None:
    ok, message = Care360Hook().test_connection()
    assert ok, message
    assert "accepted" in message
    assert simulator.bookings == []
    assert [(r["method"], r["path"]) for r in simulator.requests] == [
        ("GET", "/api/v1/calendar/provider-availability")
    ]


def test_test_connection_reports_a_rejected_key(simulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch, host=simulator.url, password="bad-key-123")
    ok, message = Care360Hook().test_connection()
    assert not ok
    assert message.endswith("rejected the API key (401): check the connection's API Key.")
    assert "bad-key-123" not in message


def test_test_connection_reports_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch, password="k", extra={"environment": "qa"})
    ok, message = Care360Hook().test_connection()
    assert not ok and "extra.environment 'qa' is not allowed" in message


# -- import cost ---------------------------------------------------------------------------------


@pytest.mark.integration  # a subprocess
def test_importing_the_operator_does_not_import_requests() -> None:
    # Airflow 2 imports requests itself, so after Airflow's own imports requests is made
    # unimportable: importing our operator module must not need it.
    code = (
        "import sys\n"
        "from airflow.providers.common.compat.sdk import BaseOperator, BaseHook\n"
        "for name in [m for m in sys.modules if m == 'requests' or m.startswith('requests.')]:\n"
        "    del sys.modules[name]\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'requests' or name.startswith('requests.'):\n"
        "            raise ImportError('requests imported at parse time')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import airflow_provider_care360.operators.care360\n"
        "print('requests' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_dns_failure_is_not_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    # Resolving a name would leave loopback, so the resolver's failure is simulated.
    import socket

    def no_such_host(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    set_conn(monkeypatch, password="k", host="https://care360.does-not-resolve.example")
    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    with pytest.raises(Care360NotSentError, match="the request was not sent"):
        book(Care360Hook(), next_slot())


def test_tls_failure_is_not_sent(simulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch, password="k", host=simulator.url.replace("http://", "https://"))
    with pytest.raises(Care360NotSentError, match="SSL"):
        book(Care360Hook(), next_slot())
    assert simulator.bookings == []


def test_fields_saved_by_older_connection_forms_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(
        monkeypatch,
        password="k",
        extra={"extra__care360__environment": "staging", "extra__care360__timeout": "12", "environment": ""},
    )
    settings = Care360Hook().settings
    assert settings.base_url == ENVIRONMENTS["staging"] and settings.timeout == (12.0, 12.0)


# -- the appointment lookup -----------------------------------------------------------------------


def test_find_appointments_sends_the_query_and_returns_the_data(simulator: Any, api_key: str) -> None:
    start = next_slot(days=2)
    book(Care360Hook(), start, email="Pat.Lee@example.com")
    found = Care360Hook().find_appointments(user_email="pat.lee@EXAMPLE.com")

    assert [a["start"] for a in found] == [start.strftime("%Y-%m-%dT%H:%M:%S.000Z")]
    request = simulator.lookup_requests[-1]
    assert request["query"] == {"user_email": ["pat.lee@EXAMPLE.com"]}
    assert request["key"] == "valid"


def test_an_unknown_invitee_has_no_appointments(simulator: Any) -> None:
    assert Care360Hook().find_appointments(user_email="nobody@example.com") == []
    assert [r["status"] for r in simulator.lookup_requests] == [404]


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"user_email": "not-an-email"},
        {"start_date": "2026-12-01"},
        {"start_date": "2026-12-02", "end_date": "2026-12-01"},
        {"start_date": "01/12/2026", "end_date": "2026-12-02"},
    ],
)
def test_a_bad_lookup_query_is_refused_before_sending(simulator: Any, query: dict[str, str]) -> None:
    with pytest.raises(Care360ValidationError):
        Care360Hook().find_appointments(**query)
    assert simulator.requests == []


def test_find_appointment_at_compares_instants_not_strings(simulator: Any) -> None:
    start = next_slot(days=2)
    book(Care360Hook(), start)
    hook = Care360Hook()
    kolkata = start.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()
    for same in (iso(start), start.strftime("%Y-%m-%dT%H:%M:%S.000Z"), kolkata, start):
        found = hook.find_appointment_at(email="invitee@example.com", start_time=same)
        assert found is not None and found["start"].startswith(start.strftime("%Y-%m-%dT%H:%M"))
    assert (
        hook.find_appointment_at(email="invitee@example.com", start_time=start + timedelta(minutes=30))
        is None
    )
    with pytest.raises(Care360ValidationError):
        hook.find_appointment_at(email="invitee@example.com", start_time=start.replace(tzinfo=None))


def test_a_cancelled_appointment_is_not_found(simulator: Any) -> None:
    start = next_slot(days=2)
    book(Care360Hook(), start)
    simulator.cancel_appointment(simulator.bookings[0]["id"])
    assert Care360Hook().find_appointment_at(email="invitee@example.com", start_time=start) is None


def test_a_lookup_timeout_is_a_retryable_lookup_error(
    simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_care360.exceptions import Care360LookupError
    from airflow_provider_care360.testing import Fault

    set_conn(monkeypatch, password=simulator.api_key, host=simulator.url, extra={"timeout": [1, 1]})
    simulator.inject(Fault(200, delay=2, target="lookup"))
    simulator.inject(Fault(reset=True, target="lookup"))
    hook = Care360Hook()
    for _ in range(2):
        with pytest.raises(Care360LookupError) as caught:
            hook.find_appointments(user_email="invitee@example.com")
        assert caught.value.outcome.value == "not_sent"
        assert not isinstance(caught.value, AirflowFailException)


@pytest.mark.parametrize(
    "key", ["first-line\nSECRET-part", "SECRET\u2603snow", "SECRET\x00nul", "tab\tSECRET"]
)
def test_a_key_no_header_can_carry_is_refused_without_quoting_it(
    simulator: Any, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    set_conn(monkeypatch, password=key, host=simulator.url)
    ok, message = Care360Hook().test_connection()
    assert ok is False and "SECRET" not in message and "API key" in message
    with pytest.raises(Care360ConnectionConfigError) as caught:
        book(Care360Hook(), next_slot(days=2))
    assert "SECRET" not in str(caught.value) + repr(caught.value)
    assert simulator.requests == []


# -- TLS: not sent only if the handshake failed ---------------------------------------------------


class _BrokenTlsServer:
    """A TLS server on loopback that completes the handshake, reads the request, then writes bytes
    that are not TLS: the client's TLS error comes while it reads the answer, after sending."""

    def __init__(self, tmp_path: Any) -> None:
        import datetime as dt
        import ipaddress
        import socket
        import ssl
        import threading

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256())
        )
        self.cert_file = tmp_path / "cert.pem"
        key_file = tmp_path / "key.pem"
        self.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(self.cert_file, key_file)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import os

        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.context.wrap_socket(conn, server_side=True) as tls:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += tls.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                while len(body) < length:
                    body += tls.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + body)
                os.write(tls.fileno(), b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # not TLS

    def close(self) -> None:
        self.listener.close()


def test_a_tls_error_after_sending_is_ambiguous_and_one_in_the_handshake_is_not_sent(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, simulator: Any
) -> None:
    from airflow_provider_care360.exceptions import Care360AmbiguousError, Care360LookupError

    server = _BrokenTlsServer(tmp_path)
    try:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server.cert_file))
        set_conn(monkeypatch, password="k-123", host=f"https://127.0.0.1:{server.port}", extra={"timeout": 5})
        with pytest.raises(Care360AmbiguousError, match="may or may not exist"):
            book(Care360Hook(), next_slot(days=2))
        assert len(server.requests) == 1 and b"POST /api/v1/calendar/appointments" in server.requests[0]
        with pytest.raises(Care360LookupError):  # a read: never ambiguous, safe to retry
            Care360Hook().find_appointments(user_email="invitee@example.com")
    finally:
        server.close()
    # https to a plain-HTTP port: the handshake itself fails, so nothing was sent.
    set_conn(monkeypatch, password="k-123", host=simulator.url.replace("http://", "https://"))
    with pytest.raises(Care360NotSentError, match="not sent"):
        book(Care360Hook(), next_slot(days=2))
    assert simulator.requests == []


def test_an_answer_trickled_past_the_timeout_is_cut_off_and_unclear(monkeypatch: Any) -> None:
    """requests' read timeout bounds each read; the hook bounds the whole answer by connect + read."""
    import json as jsonlib
    import socket
    import threading
    import time as timelib

    from airflow_provider_care360.exceptions import Care360AmbiguousError, Care360LookupError

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=trickle, args=(conn,), daemon=True).start()

    def trickle(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
            for _ in range(40):  # a byte every 0.2 s: each read well inside the 1 s read timeout
                if stop.is_set():
                    return
                try:
                    conn.sendall(b" ")
                except OSError:
                    return
                timelib.sleep(0.2)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = server.getsockname()[1]
    monkeypatch.setenv(
        "AIRFLOW_CONN_TRICKLE",
        jsonlib.dumps({"conn_type": "care360", "password": "k", "host": f"http://127.0.0.1:{port}"}),
    )
    hook = Care360Hook("trickle", timeout=(0.5, 1.0))
    payload = {
        "eventTypeId": "e",
        "startTime": "2030-01-01T10:00:00Z",
        "email": "a@example.com",
        "timezone": "UTC",
        "location": "zoom_conference",
    }
    try:
        started = timelib.monotonic()
        with pytest.raises(Care360AmbiguousError, match="send its whole answer"):
            hook.send_booking(payload)
        assert timelib.monotonic() - started < 4  # the 1.5 s deadline, not the 8 s trickle
        with pytest.raises(Care360LookupError, match="send its whole answer"):
            hook.find_appointments(user_email="a@example.com")
    finally:
        stop.set()
        server.close()
        hook.close()
