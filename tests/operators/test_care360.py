"""ScheduleAppointmentOperator in real DAG runs (``dag.test()``) against the simulator on loopback."""

from __future__ import annotations

import itertools
import json
import socket
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import NoResultFound

from airflow_provider_care360.operators.care360 import ScheduleAppointmentOperator
from airflow_provider_care360.retry import RETRY_POLICIES_SUPPORTED
from airflow_provider_care360.testing import Fault
from support import (
    all_xcom_and_rendered_text,
    get_test_dag,
    iso,
    next_slot,
    run_dag,
    state_of,
    xcom_value,
)

pytestmark = pytest.mark.integration

DOCUMENTED_OK = {"status": 200, "success": True, "message": "Meeting scheduled successfully"}


def booking_conf(start: datetime, **overrides: Any) -> dict[str, Any]:
    return {"start_time": iso(start), **overrides}


# -- templating ---------------------------------------------------------------------------------


def test_fields_templated_from_params_book_once_and_return_the_outcome_record(simulator: Any) -> None:
    start = next_slot(days=2)
    result = run_dag("care360_t_params", booking_conf(start))

    assert result.state == "success"
    ti = result.ti("book")
    assert state_of(ti) == "success" and ti.try_number == 1
    record = xcom_value(result, "book")
    assert record["outcome"] == "booked" and record["http_status"] == 200
    assert record["response"] == DOCUMENTED_OK
    assert (record["event_type_id"], record["start_time"], record["email"]) == (
        "85f13305-0647-4473-9e63-0a56af405f6f",
        iso(start),
        "j***@e***.com",  # masked by default (record_email="raw" keeps the address)
    )
    assert record["row_key"] is None
    # Pushed once: the return value. Only a failed try pushes it under care360_outcome.
    with pytest.raises(NoResultFound):
        xcom_value(result, "book", key="care360_outcome")
    # It looked before it booked: one lookup, then one booking.
    assert [(r["method"], r["status"]) for r in simulator.requests] == [("GET", 404), ("POST", 200)]
    [booking] = simulator.bookings
    assert booking["email"] == "jane.doe@example.com"
    assert booking["startTime"] == iso(start)
    assert booking["firstName"] == "Jane" and booking["lastName"] == "Doe"
    assert booking["timezone"] == "America/New_York"
    assert booking["tracking"] == {"utmSource": "warehouse", "salesforceUuid": result.run_id}


def test_fields_from_xcom_pull_templates(simulator: Any) -> None:
    start = next_slot(days=3)
    patient = {
        "event_type_id": "evt-xcom",
        "start_time": iso(start),
        "email": "pat@example.org",
        "timezone": "Europe/London",
        "location": "google_conference",
    }
    result = run_dag("care360_t_xcom_pull", {"patient": patient})

    assert result.state == "success"
    [booking] = simulator.bookings
    assert (booking["eventTypeId"], booking["email"], booking["location"]) == (
        "evt-xcom",
        "pat@example.org",
        "google_conference",
    )
    assert "firstName" not in booking and "tracking" not in booking


def test_fields_from_xcomargs_of_a_multiple_outputs_task(simulator: Any) -> None:
    start = next_slot(days=4)
    patient = {
        "event_type_id": "evt-arg",
        "start_time": iso(start),
        "email": "arg@example.org",
        "timezone": "Asia/Kolkata",
        "location": "webex_conference",
        "first_name": "Arjun",
    }
    result = run_dag("care360_t_xcomarg", {"patient": patient})

    assert result.state == "success"
    [booking] = simulator.bookings
    assert booking["email"] == "arg@example.org"
    assert booking["firstName"] == "Arjun"
    assert booking["startTime"] == iso(start)


def test_native_rendering_gives_a_tracking_dict_and_a_datetime_start(simulator: Any) -> None:
    # A naive wall-clock time read in the invitee's zone (America/New_York) and sent as UTC.
    local_start = (datetime.now() + timedelta(days=5)).replace(hour=9, minute=30, second=0, microsecond=0)
    result = run_dag("care360_t_native", {"start_time": local_start.isoformat()})

    assert result.state == "success"
    [booking] = simulator.bookings
    from zoneinfo import ZoneInfo

    expected = local_start.replace(tzinfo=ZoneInfo("America/New_York")).astimezone(UTC)
    assert booking["startTime"] == iso(expected)
    assert booking["tracking"] == {"utmCampaign": "spring", "utmMedium": None}


def test_mapped_batch_books_each_invitee_in_its_own_task_instance(simulator: Any) -> None:
    invitees = [
        {
            "event_type_id": "evt-batch",
            "start_time": iso(next_slot(days=6, offset_slots=i)),
            "invitee_email": f"patient{i}@example.com",
            "timezone": "UTC",
            "location": "zoom_conference",
        }
        for i in range(5)
    ]
    result = run_dag("care360_t_batch", {"invitees": invitees})

    assert result.state == "success"
    mapped = sorted(k[1] for k in result.tis if k[0] == "book")
    assert mapped == [0, 1, 2, 3, 4]
    assert sorted(b["email"] for b in simulator.bookings) == sorted(i["invitee_email"] for i in invitees)
    records = [xcom_value(result, "book", i) for i in range(5)]
    assert [(r["outcome"], r["map_index"], r["email"]) for r in records] == [
        ("booked", i, "p***@e***.com") for i in range(5)
    ]


# -- failures -----------------------------------------------------------------------------------


def test_invalid_fields_fail_at_once_without_any_request(simulator: Any, capfd: Any) -> None:
    conf = booking_conf(
        datetime(2020, 1, 1, tzinfo=UTC),
        email="not-an-email",
        timezone="Mars/Olympus_Mons",
        location="skype",
    )
    result = run_dag("care360_t_params", conf)

    ti = result.ti("book")
    assert state_of(ti) == "failed"
    assert ti.try_number == 1  # retries=2, yet no retry
    assert simulator.requests == []  # not even a lookup
    record = xcom_value(result, "book", key="care360_outcome")
    assert (record["outcome"], record["http_status"]) == ("rejected", None)
    assert "location:" in record["message"]
    out = capfd.readouterr()
    text = out.out + out.err
    for field in ("start_time", "email", "timezone", "location"):
        assert f"{field}:" in text
    assert "not-an-email" not in text  # the invitee's address is masked even when invalid


def test_400_fails_after_one_try_with_the_api_error(simulator: Any, capfd: Any) -> None:
    start = next_slot(days=2)
    simulator.inject(
        Fault(
            status=400,
            body={
                "status": 400,
                "success": False,
                "message": "Invalid request",
                "error": "startTime is not a correct slot",
            },
        )
    )
    result = run_dag("care360_t_params", booking_conf(start))

    ti = result.ti("book")
    assert (state_of(ti), ti.try_number) == ("failed", 1)
    assert len(simulator.booking_requests) == 1 and simulator.bookings == []
    out = capfd.readouterr()
    assert "Invalid request; startTime is not a correct slot" in out.out + out.err


def test_a_taken_slot_is_rejected_by_the_simulator_and_not_retried(simulator: Any) -> None:
    start = next_slot(days=2)
    assert run_dag("care360_t_params", booking_conf(start)).state == "success"
    second = run_dag("care360_t_params", booking_conf(start, email="other@example.com"))

    ti = second.ti("book")
    assert (state_of(ti), ti.try_number) == ("failed", 1)
    assert [b["email"] for b in simulator.bookings] == ["jane.doe@example.com"]


def test_401_fails_after_one_try_naming_the_connection(
    simulator: Any, monkeypatch: pytest.MonkeyPatch, capfd: Any
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_CARE360_WRONG_KEY",
        json.dumps({"conn_type": "care360", "host": simulator.url, "password": "not-the-key"}),
    )
    result = run_dag("care360_t_params", booking_conf(next_slot(days=2), conn_id="care360_wrong_key"))

    ti = result.ti("book")
    assert (state_of(ti), ti.try_number) == ("failed", 1)
    assert [r["status"] for r in simulator.requests] == [401]  # the lookup; no booking sent
    out = capfd.readouterr()
    assert "rejected the API key of connection 'care360_wrong_key'" in out.out + out.err
    assert "not-the-key" not in out.out + out.err


def test_429_goes_up_for_retry_then_books_once(simulator: Any) -> None:
    simulator.inject(Fault(status=429, headers={"Retry-After": "1"}))
    result = run_dag("care360_t_params", booking_conf(next_slot(days=2)))

    ti = result.ti("book")
    assert (state_of(ti), ti.try_number) == ("success", 2)
    assert [r["status"] for r in simulator.booking_requests] == [429, 200]
    assert len(simulator.bookings) == 1


def test_429_from_the_real_rate_limiter_in_a_batch(simulator: Any) -> None:
    simulator.rate_limit, simulator.rate_window = 1, 4.0
    invitees = [
        {
            "event_type_id": "evt-rl",
            "start_time": iso(next_slot(days=7, offset_slots=i)),
            "invitee_email": f"rl{i}@example.com",
            "timezone": "UTC",
            "location": "zoom_conference",
        }
        for i in range(3)
    ]
    result = run_dag("care360_t_batch", {"invitees": invitees})

    assert result.state == "success"
    assert len(simulator.bookings) == 3
    assert len({b["email"] for b in simulator.bookings}) == 3
    # Whether two tasks meet inside one window depends on the machine's speed, so the test checks
    # the recorded arrivals instead: the limiter let one booking through per window, and every
    # request that came within a window of a success was throttled and retried until it got in.
    posts = simulator.booking_requests
    successes = [r["at"] for r in posts if r["status"] == 200]
    assert all(later - earlier >= 4.0 - 0.05 for earlier, later in itertools.pairwise(successes))
    for request in posts:
        since = min((request["at"] - t for t in successes if t < request["at"]), default=None)
        if since is not None and since < 4.0 - 0.05:
            assert request["status"] == 429
        elif since is None or since > 4.0 + 0.05:
            assert request["status"] == 200


# -- check_existing=False: the journal alone keeps a booking single -----------------------------

requires_task_state_store = pytest.mark.skipif(
    not RETRY_POLICIES_SUPPORTED, reason="the booking journal needs task_state_store (Airflow >= 3.3)"
)


@requires_task_state_store
def test_no_lookup_a_try_lost_after_the_answer_is_replayed_not_sent_again(simulator: Any, capfd: Any) -> None:
    result = run_dag("care360_t_no_check_lost_success", booking_conf(next_slot(days=2)))

    ti = result.ti("book")
    assert (state_of(ti), ti.try_number) == ("success", 2)
    assert [(r["method"], r["status"]) for r in simulator.requests] == [("POST", 200)]
    assert len(simulator.bookings) == 1
    record = xcom_value(result, "book")
    assert record["outcome"] == "booked"
    assert record["message"] == "Booked by try 1 of this task; nothing was sent again."
    assert "Try 1 of this task booked this appointment: nothing was sent" in "".join(capfd.readouterr())


@requires_task_state_store
def test_no_lookup_a_later_try_with_other_fields_fails_at_once_and_sends_nothing(simulator: Any) -> None:
    first, other = next_slot(days=2), next_slot(days=2, offset_slots=1)
    result = run_dag("care360_t_no_check_lost_success", booking_conf(first, start_time_retry=iso(other)))

    ti = result.ti("book")
    assert (state_of(ti), ti.try_number) == ("failed", 2)
    assert [b["startTime"] for b in simulator.bookings] == [iso(first)]
    assert [r["method"] for r in simulator.requests] == ["POST"]
    record = xcom_value(result, "book", key="care360_outcome")
    assert record["outcome"] == "rejected"
    assert "already booked an appointment with other booking fields" in record["message"]


# -- secrets and PII ----------------------------------------------------------------------------


def test_api_key_never_in_logs_xcom_or_rendered_fields(simulator: Any, api_key: str, capfd: Any) -> None:
    from airflow_provider_care360.exceptions import Care360Error
    from airflow_provider_care360.hooks.care360 import Care360Hook
    from support import AIRFLOW_LOGS

    simulator.inject(Fault(status=429, headers={"Retry-After": "1"}))
    conf = booking_conf(next_slot(days=2), first_name="Zephyrine", last_name="Quillfeather")
    result = run_dag("care360_t_params", conf)
    assert result.state == "success"
    # A failing run too: its exception text goes through the same logs.
    simulator.inject(Fault(status=500, body={"message": f"echo {api_key}"}), times=3)
    failed = run_dag("care360_t_params", booking_conf(next_slot(days=2, offset_slots=1)))
    assert state_of(failed.ti("book")) == "failed"

    out = capfd.readouterr()
    logs = out.out + out.err
    log_files = "".join(p.read_text(errors="replace") for p in Path(AIRFLOW_LOGS()).rglob("*") if p.is_file())
    stored = all_xcom_and_rendered_text(result) + all_xcom_and_rendered_text(failed)
    # The rendered fields hold the masked forms (the scan sees them), never the invitee in clear.
    assert "j***@e***.com" in stored and "Z***" in stored and "Q***" in stored
    for pii in ("jane.doe@example.com", "Zephyrine", "Quillfeather", "Jane"):
        assert pii not in stored
    hook = Care360Hook()
    hook.get_conn()
    task = get_test_dag("care360_t_params").get_task("book")
    try:
        hook.schedule_appointment(
            event_type_id="e",
            start_time=next_slot(days=2),
            email="a@example.com",
            timezone="UTC",
            location="zoom_conference",
        )
        hook.schedule_appointment(
            event_type_id="e",
            start_time=next_slot(days=2),
            email="a@example.com",
            timezone="UTC",
            location="zoom_conference",
        )
    except Care360Error as exc:  # the slot is taken on the second call
        error_text = str(exc) + repr(exc)
    for text in (logs, log_files, stored, repr(hook), repr(task), repr(hook.settings), error_text):
        assert api_key not in text
    # Invitee email and names show only masked in the task's log lines; the body is never logged.
    assert "j***@e***.com" in logs
    for pii in ("jane.doe@example.com", "Zephyrine", "Quillfeather", '"eventTypeId"'):
        assert pii not in logs and pii not in log_files


# -- BaseOperator.email stays the alert list ----------------------------------------------------


class _SmtpSink:
    """A real SMTP server on loopback that records who each message went to."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.recipients: list[list[str]] = []
        self.event = threading.Event()
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
                sink.recipients.append(list(envelope.rcpt_tos))
                sink.event.set()
                return "250 OK"

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> _SmtpSink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


def test_dag_email_alerts_the_on_call_address_and_never_books_it(
    simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _SmtpSink() as smtp:
        monkeypatch.setenv(
            "AIRFLOW_CONN_SMTP_DEFAULT",
            json.dumps(
                {
                    "conn_type": "smtp",
                    "host": "127.0.0.1",
                    "port": smtp.port,
                    "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "airflow@example.org"},
                }
            ),
        )
        # Airflow 2 sends alerts through its [smtp] settings, Airflow 3 through the connection.
        for name, value in {
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp.port),
            "SMTP_STARTTLS": "False",
            "SMTP_SSL": "False",
            "SMTP_MAIL_FROM": "airflow@example.org",
        }.items():
            monkeypatch.setenv(f"AIRFLOW__SMTP__{name}", value)
        start = next_slot(days=2)
        ok = run_dag("care360_t_alerting", booking_conf(start))
        assert ok.state == "success"
        assert [b["email"] for b in simulator.bookings] == ["jane.doe@example.com"]
        assert smtp.recipients == []

        simulator.inject(Fault(status=400))
        failed = run_dag("care360_t_alerting", booking_conf(start + timedelta(hours=1)))
        assert state_of(failed.ti("book")) == "failed"
        assert smtp.event.wait(10)

    assert smtp.recipients == [["oncall@example.org"]]
    assert [b["email"] for b in simulator.bookings] == ["jane.doe@example.com"]
    assert all(r["body"]["email"] != "oncall@example.org" for r in simulator.booking_requests)


def test_email_is_not_a_booking_field_and_invitee_email_is() -> None:
    fields = ScheduleAppointmentOperator.template_fields
    assert "email" not in fields
    assert set(fields) == {
        "event_type_id",
        "start_time",
        "invitee_email",
        "timezone",
        "location",
        "first_name",
        "last_name",
        "tracking",
        "row_key",
        "care360_conn_id",
    }
    task = get_test_dag("care360_t_alerting").get_task("book")
    assert task.email == ["oncall@example.org"]
    assert task.invitee_email == "{{ params.email }}"


def test_fields_render_through_airflows_own_machinery() -> None:
    from jinja2 import TemplateNotFound

    task = get_test_dag("care360_t_native").get_task("book")  # render_template_as_native_obj=True
    env = task.get_template_env()
    assert task.render_template("{{ 6 * 7 }}", {}, env) == 42
    assert task.template_fields_renderers["tracking"] == "json"

    class WithTemplateFiles(ScheduleAppointmentOperator):
        template_ext = (".j2",)

    subclass = WithTemplateFiles(
        task_id="t", event_type_id="e", start_time="s", invitee_email="i", timezone="z", location="l"
    )
    # A literal string naming a template file is looked up as one, as in any Airflow operator.
    with pytest.raises(TemplateNotFound):
        subclass.render_template("event_type.j2", {}, env)
