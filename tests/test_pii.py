"""Masking of invitee personal data: the email's domain is hidden as well as its local part."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airflow_provider_care360._pii import mask_email, mask_name
from airflow_provider_care360.exceptions import Care360ValidationError
from airflow_provider_care360.validation import build_booking_payload

MASKED = re.compile(r"^[^@]\*\*\*@[^@.]\*\*\*(\.[^@.]+)?$")


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("jane.doe@smallclinic-family.com", "j***@s***.com"),
        ("a@b.co.uk", "a***@b***.uk"),
        ("john.doe@example.com", "j***@e***.com"),
        ("Jane.Doe@Mail.Example.ORG", "J***@M***.ORG"),  # the first label, the last one
        ("  jane@example.com\n", "j***@e***.com"),  # surrounding whitespace, as in a CSV cell
        ("jörg@bücher.de", "j***@b***.de"),
        ("o'brien+tag@x.io", "o***@x***.io"),
        ('"jane doe"@example.com', '"***@e***.com'),
        ("jane@example", "j***@e***"),  # no top-level domain: an invalid address, still masked
        ("jane@localhost@example.com", "j***@e***.com"),  # the domain is after the last @
    ],
)
def test_mask_email_keeps_one_letter_of_each_side_and_the_top_level_domain(address: str, masked: str) -> None:
    assert mask_email(address) == masked


@pytest.mark.parametrize(
    "value",
    [
        None,
        42,
        b"jane@example.com",
        "",
        "   ",
        "nobody",
        "@example.com",
        "jane@",
        "jane@.com",
        "jane@example..com",
        "jane@example.com.",
        "jane@[192.0.2.1]",
        "Jane Doe <jane@example.com>",
        "jane@exa mple.com",
    ],
)
def test_mask_email_masks_anything_unparseable_whole(value: object) -> None:
    assert mask_email(value) == "***"


@given(st.emails())
def test_a_masked_email_shows_two_letters_and_the_top_level_domain(address: str) -> None:
    masked = mask_email(address)
    local, _, domain = address.rpartition("@")
    assert MASKED.match(masked), masked
    assert masked == f"{local[0]}***@{domain[0]}***.{domain.rsplit('.', 1)[-1]}"
    assert mask_email(masked) == masked  # masking what is already masked changes nothing


@given(st.emails())
def test_a_masked_email_never_holds_the_domain_label(address: str) -> None:
    label = address.rpartition("@")[2].split(".")[0]
    if len(label) > 1:
        assert f"@{label}" not in mask_email(address)


def test_an_invalid_address_is_named_masked_in_the_validation_problem() -> None:
    with pytest.raises(Care360ValidationError) as info:
        build_booking_payload(
            event_type_id="evt-1",
            start_time="2026-02-01T09:30:00Z",
            email="jane.doe@smallclinic-family",
            timezone="UTC",
            location="zoom_conference",
            now=datetime(2026, 1, 15, 12, 0, tzinfo=UTC),
        )
    [problem] = info.value.problems
    assert problem.startswith("email: 'j***@s***' is not a valid email address"), problem
    assert "smallclinic" not in str(info.value) and "jane.doe" not in str(info.value)


@pytest.mark.parametrize(
    ("value", "masked"), [("John", "J***"), ("  zoë ", "z***"), ("", "***"), (None, "***")]
)
def test_mask_name(value: object, masked: str) -> None:
    assert mask_name(value) == masked
