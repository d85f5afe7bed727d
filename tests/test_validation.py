"""Booking validation: every problem reported at once, before any request; PII masked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pendulum
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_care360._pii import mask_email, mask_name
from airflow_provider_care360.exceptions import Care360ValidationError
from airflow_provider_care360.validation import LOCATIONS, build_booking_payload

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
GOOD: dict[str, Any] = {
    "event_type_id": "evt-1",
    "start_time": "2026-02-01T09:30:00Z",
    "email": "jane.doe@example.com",
    "timezone": "America/New_York",
    "location": "zoom_conference",
}


def build(**overrides: Any) -> dict[str, Any]:
    return build_booking_payload(**{**GOOD, **overrides}, now=NOW)


def problems(**overrides: Any) -> list[str]:
    with pytest.raises(Care360ValidationError) as info:
        build(**overrides)
    return info.value.problems


def test_a_valid_booking_becomes_the_camel_case_body() -> None:
    assert build(first_name=" Jane ", last_name="Doe") == {
        "eventTypeId": "evt-1",
        "startTime": "2026-02-01T09:30:00Z",
        "email": "jane.doe@example.com",
        "firstName": "Jane",
        "lastName": "Doe",
        "timezone": "America/New_York",
        "location": "zoom_conference",
    }


@pytest.mark.parametrize(
    ("start", "zone", "expected"),
    [
        ("2026-02-01T09:30:00Z", "UTC", "2026-02-01T09:30:00Z"),
        ("2026-02-01T15:00:00+05:30", "UTC", "2026-02-01T09:30:00Z"),
        ("2026-02-01T09:30:00", "Asia/Kolkata", "2026-02-01T04:00:00Z"),  # naive: invitee's zone
        ("2026-07-01 09:30", "America/New_York", "2026-07-01T13:30:00Z"),  # EDT
        (datetime(2026, 2, 1, 9, 30, tzinfo=UTC), "UTC", "2026-02-01T09:30:00Z"),
        (pendulum.datetime(2026, 2, 1, 10, 30, tz="Europe/Paris"), "UTC", "2026-02-01T09:30:00Z"),
        (datetime(2026, 2, 1, 9, 30), "Europe/London", "2026-02-01T09:30:00Z"),
    ],
)
def test_start_time_forms(start: Any, zone: str, expected: str) -> None:
    assert build(start_time=start, timezone=zone)["startTime"] == expected


def test_every_problem_is_reported_at_once_naming_the_field() -> None:
    found = problems(
        event_type_id=" ",
        start_time="2025-01-01T00:00:00Z",
        email="jane.doe@",
        timezone="Mars/Base",
        location="skype",
        tracking={"utm_source": 5, "fbclid": "x"},
    )
    fields = [p.split(":", 1)[0] for p in found]
    assert fields == [
        "event_type_id",
        "email",
        "timezone",
        "location",
        "start_time",
        "tracking.utmSource",
        "tracking",
    ]
    text = "\n".join(found)
    assert "jane.doe" not in text  # masked
    assert "one of google_conference, zoom_conference" in text
    assert "not in the future" in text


@pytest.mark.parametrize("missing", ["event_type_id", "start_time", "email", "timezone", "location"])
@pytest.mark.parametrize("empty", [None, "", "   "])
def test_required_fields(missing: str, empty: Any) -> None:
    assert problems(**{missing: empty}) == [f"{missing}: is required and must not be empty"]


@pytest.mark.parametrize(
    "value", ["tomorrow", "2026-02-01", "01/02/2026 09:30", "2026-02-30T09:00:00Z", 1738400000]
)
def test_unparseable_start_times(value: Any) -> None:
    [problem] = problems(start_time=value)
    assert problem.startswith("start_time: ") and "ISO 8601" in problem


@pytest.mark.parametrize(
    "address", ["plain", "a@b", "a b@example.com", "a@@example.com", "x" * 250 + "@e.com"]
)
def test_implausible_emails(address: str) -> None:
    [problem] = problems(email=address)
    assert problem.startswith("email: ") and address not in problem


@pytest.mark.parametrize(
    "address",
    [
        "\ufeffjane@example.com",  # a byte-order mark from a CSV
        "jane@example.com\u200b",  # a trailing zero-width space
        "a@b..c",
        "mailto:jane@example.com",
        "a\x00b@example.com",
    ],
)
def test_addresses_a_regex_let_through_are_refused(address: str) -> None:
    [problem] = problems(email=address)
    assert problem.startswith("email: ") and "not a valid email address" in problem


def test_a_naive_start_in_a_dst_gap_is_refused_not_moved() -> None:
    [problem] = problems(start_time="2027-03-14T02:30:00", timezone="America/New_York")
    assert "does not exist in America/New_York" in problem and "offset" in problem
    # With an offset it is unambiguous, and booked as written.
    assert build(start_time="2027-03-14T03:30:00-04:00")["startTime"] == "2027-03-14T07:30:00Z"


def test_a_naive_start_in_a_dst_fold_is_refused_not_guessed() -> None:
    [problem] = problems(start_time="2027-11-07T01:30:00", timezone="America/New_York")
    assert "happens twice in America/New_York" in problem
    assert "2027-11-07T01:30:00-04:00" in problem and "2027-11-07T01:30:00-05:00" in problem
    assert build(start_time="2027-11-07T01:30:00-05:00")["startTime"] == "2027-11-07T06:30:00Z"


@pytest.mark.parametrize("value", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:30:00+01:00"])
def test_extreme_dates_are_validation_errors(value: str) -> None:
    [problem] = problems(start_time=value)
    assert problem.startswith("start_time: ") and "out of range" in problem


@pytest.mark.parametrize("zone", ["localtime", "posixrules", "Factory", "posix/UTC", "right/UTC"])
def test_zoneinfo_files_that_are_not_iana_zones_are_refused(zone: str) -> None:
    [problem] = problems(timezone=zone)
    assert problem.startswith("timezone: ") and "IANA" in problem


@pytest.mark.parametrize("zone", ["US/Eastern", "Etc/UTC", "UTC", "GMT", "Asia/Kolkata"])
def test_iana_names_and_links_are_accepted(zone: str) -> None:
    assert build(timezone=zone)["timezone"] == zone


def test_tracking_snake_and_camel_keys_and_json_strings() -> None:
    body = build(tracking={"utm_campaign": "c", "utmSource": None, "salesforce_uuid": "s"})
    assert body["tracking"] == {"utmCampaign": "c", "utmSource": None, "salesforceUuid": "s"}
    assert build(tracking='{"utm_term": "t"}')["tracking"] == {"utmTerm": "t"}
    assert "tracking" not in build(tracking={})
    assert "tracking" not in build(tracking="")
    assert problems(tracking={"utm_term": "a", "utmTerm": "b"}) == [
        "tracking: utmTerm is given twice (camelCase and snake_case)"
    ]
    assert problems(tracking="not json")[0].startswith("tracking: ")
    assert problems(tracking=["utm_source"])[0].startswith("tracking: ")


def test_optional_names_are_left_out_when_empty_and_checked_when_given() -> None:
    body = build(first_name="", last_name=None)
    assert "firstName" not in body and "lastName" not in body
    [problem] = problems(first_name=42)
    assert problem.startswith("first_name: ")


def test_masking() -> None:
    assert mask_email("john.doe@example.com") == "j***@e***.com"
    assert mask_email("nobody") == "***"
    assert mask_email(None) == "***"
    assert mask_name("John") == "J***"
    assert mask_name("") == "***"


def test_error_is_a_fail_exception_so_airflow_never_retries_it() -> None:
    from airflow.providers.common.compat.sdk import AirflowFailException

    with pytest.raises(AirflowFailException):
        build(location="phone")


_any_value = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.integers(),
    st.floats(allow_nan=True),
    st.booleans(),
    st.datetimes(timezones=st.one_of(st.none(), st.timezones())),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(
        st.text(max_size=15), st.one_of(st.none(), st.text(max_size=10), st.integers()), max_size=4
    ),
)
_likely_start = st.one_of(
    _any_value,
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)).map(lambda d: d.isoformat()),
)


@settings(max_examples=400, deadline=None)
@given(
    event_type_id=_any_value,
    start_time=_likely_start,
    email=st.one_of(_any_value, st.emails()),
    tz=st.one_of(_any_value, st.sampled_from(["UTC", "Asia/Kolkata", "America/New_York", "../etc/passwd"])),
    location=st.one_of(_any_value, st.sampled_from(LOCATIONS)),
    first_name=_any_value,
    tracking=_any_value,
)
def test_any_input_gives_a_body_or_a_validation_error(
    event_type_id: Any, start_time: Any, email: Any, tz: Any, location: Any, first_name: Any, tracking: Any
) -> None:
    try:
        body = build_booking_payload(
            event_type_id=event_type_id,
            start_time=start_time,
            email=email,
            timezone=tz,
            location=location,
            first_name=first_name,
            tracking=tracking,
            now=NOW,
        )
    except Care360ValidationError as exc:
        assert exc.problems and all(":" in p for p in exc.problems)
        if isinstance(email, str) and "@" in email and len(email) > 3:
            # The address never shows in its own problem line (another field may hold the same text).
            assert all(email not in p for p in exc.problems if p.startswith("email:"))
        return
    assert body["location"] in LOCATIONS
    assert body["startTime"].endswith("Z") and body["startTime"] > "2026-01-15T12:00:00Z"
    assert isinstance(body["eventTypeId"], str) and body["eventTypeId"]
    datetime.strptime(body["startTime"], "%Y-%m-%dT%H:%M:%SZ")
    assert NOW < datetime.strptime(body["startTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert set(body.get("tracking", {})) <= {
        "utmCampaign",
        "utmSource",
        "utmMedium",
        "utmContent",
        "utmTerm",
        "salesforceUuid",
    }


def test_now_defaults_to_the_clock() -> None:
    soon = datetime.now(UTC) + timedelta(minutes=5)
    assert build_booking_payload(**{**GOOD, "start_time": soon})["startTime"]
