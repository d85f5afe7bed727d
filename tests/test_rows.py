"""prepare_bookings: raw rows into booking arguments, bad rows set aside with their reasons."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_care360.rows import prepare_bookings
from support import iso, next_slot

FIXED = {"event_type_id": "evt", "location": "zoom_conference"}


def good(**overrides: Any) -> dict[str, Any]:
    return {
        "start_time": iso(next_slot(days=2)),
        "invitee_email": "a@example.com",
        "timezone": "UTC",
        **overrides,
    }


def test_good_rows_become_keyword_arguments_and_email_is_read_as_invitee_email() -> None:
    other = {"start_time": iso(next_slot(days=2)), "email": "b@example.com", "timezone": "UTC"}
    bookings, rejected = prepare_bookings([good(), other], fixed=FIXED)
    assert rejected == []
    assert [b["invitee_email"] for b in bookings] == ["a@example.com", "b@example.com"]
    assert all("email" not in b and "event_type_id" not in b for b in bookings)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"start_time": iso(next_slot(days=2)), "timezone": "UTC"}, "email: is required"),
        (good(phone="555"), "unknown key(s) phone"),
        (good(email="b@example.com"), "both email and invitee_email"),
        (good(location="zoom_conference"), "location also set for every row by the task"),
        (good(invitee_email="\ufeffa@example.com"), "not a valid email address"),
        (good(timezone="localtime"), "timezone:"),
        ("not a row", "a str is not a row"),
    ],
)
def test_bad_rows_are_set_aside_with_their_reason(row: Any, reason: str) -> None:
    bookings, rejected = prepare_bookings([good(), row], fixed=FIXED)
    assert len(bookings) == 1
    [record] = rejected
    assert record["outcome"] == "rejected" and record["row"] == 1
    assert reason in record["message"] and record["message"].startswith("Row 1 was not booked: ")


def test_a_fixed_argument_that_is_not_a_booking_field_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="pool"):
        prepare_bookings([], fixed={"pool": "care360"})
