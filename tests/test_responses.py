"""Response parsing: each status and body maps to the documented outcome, with safe messages."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_care360._responses import (
    match_appointment,
    parse_lookup_response,
    parse_rate_limit_reset,
    parse_response,
    parse_retry_after,
    read_at_instant,
    safe_snippet,
)
from airflow_provider_care360.exceptions import (
    Care360AmbiguousError,
    Care360AuthError,
    Care360BadRequestError,
    Care360Error,
    Care360LookupAmbiguousError,
    Care360LookupError,
    Care360LookupUnusableError,
    Care360NotSentError,
    Care360RateLimitError,
    Care360RejectedError,
    Outcome,
)

NOW = datetime(2026, 1, 15, 12, 0, 0, tzinfo=UTC)


def parse(status: int, body: Any = b"", headers: dict[str, str] | None = None) -> dict[str, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_response(status, headers or {}, raw, conn_id="care360_test", secret="KEY-123", now=NOW)


def test_booked() -> None:
    body = {"status": 200, "success": True, "message": "Meeting scheduled successfully"}
    assert parse(200, body) == body


def test_an_appointment_id_is_returned_when_the_api_sends_one_and_never_invented() -> None:
    assert parse(200, {"success": True, "appointmentId": "a1"})["appointmentId"] == "a1"
    assert "appointmentId" not in parse(200, {"success": True})


@pytest.mark.parametrize(
    ("status", "body", "error", "outcome"),
    [
        (
            200,
            {"status": 200, "success": False, "message": "Slot gone"},
            Care360BadRequestError,
            Outcome.REJECTED,
        ),
        (200, {"status": 200, "message": "ok"}, Care360AmbiguousError, Outcome.AMBIGUOUS),
        (200, b"<html>ok</html>", Care360AmbiguousError, Outcome.AMBIGUOUS),
        (200, b"", Care360AmbiguousError, Outcome.AMBIGUOUS),
        (
            400,
            {"status": 400, "success": False, "message": "Invalid request", "error": "bad startTime"},
            Care360BadRequestError,
            Outcome.REJECTED,
        ),
        (
            401,
            {"status": 401, "success": False, "message": "Unauthorized"},
            Care360AuthError,
            Outcome.REJECTED,
        ),
        (403, {"message": "Forbidden"}, Care360BadRequestError, Outcome.REJECTED),
        (404, b"Not Found", Care360BadRequestError, Outcome.REJECTED),
        (422, {"message": "Unprocessable"}, Care360BadRequestError, Outcome.REJECTED),
        (301, b"", Care360BadRequestError, Outcome.REJECTED),
        (
            429,
            {"status": 429, "success": False, "message": "Rate limit exceeded"},
            Care360RateLimitError,
            Outcome.THROTTLED,
        ),
        (503, b"<html>maintenance</html>", Care360AmbiguousError, Outcome.AMBIGUOUS),
        (408, b"", Care360NotSentError, Outcome.NOT_SENT),
        (500, {"message": "boom"}, Care360AmbiguousError, Outcome.AMBIGUOUS),
        (502, b"<html>Bad Gateway</html>", Care360AmbiguousError, Outcome.AMBIGUOUS),
        (504, b"", Care360AmbiguousError, Outcome.AMBIGUOUS),
    ],
)
def test_outcomes(status: int, body: Any, error: type[Care360Error], outcome: Outcome) -> None:
    with pytest.raises(error) as info:
        parse(status, body)
    assert type(info.value) is error
    assert info.value.outcome is outcome
    assert info.value.http_status == status
    assert str(status) in str(info.value)


def test_400_message_carries_the_api_message_and_error() -> None:
    with pytest.raises(Care360BadRequestError) as info:
        parse(400, {"status": 400, "success": False, "message": "Invalid request", "error": "startTime bad"})
    assert info.value.api_message == "Invalid request" and info.value.api_error == "startTime bad"
    assert "Invalid request; startTime bad" in str(info.value)
    assert isinstance(info.value, Care360RejectedError)


def test_401_names_the_connection_not_the_key() -> None:
    with pytest.raises(Care360AuthError) as info:
        parse(401, {"message": "Unauthorized: key KEY-123 unknown"})
    assert "'care360_test'" in str(info.value)
    assert "KEY-123" not in str(info.value) + repr(info.value) + str(info.value.api_message)


def test_ambiguous_messages_say_the_booking_may_exist() -> None:
    with pytest.raises(Care360AmbiguousError) as info:
        parse(502, b"<html>Bad Gateway</html>")
    assert "may or may not exist" in str(info.value) and info.value.outcome is Outcome.AMBIGUOUS


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "30"}, 30.0),
        ({"retry-after": "0"}, 0.0),
        ({"Retry-After": "Thu, 15 Jan 2026 12:01:30 GMT"}, 90.0),
        ({"Retry-After": "Wed, 14 Jan 2026 12:00:00 GMT"}, 0.0),  # in the past
        ({"X-RateLimit-Reset": "12"}, 12.0),
        ({"X-RateLimit-Reset": str(int(NOW.timestamp()) + 40)}, 40.0),  # a Unix time
        ({"Retry-After": "soon", "X-RateLimit-Reset": "5"}, 5.0),
        ({}, None),
        ({"Retry-After": "-5"}, None),
    ],
)
def test_429_retry_after(headers: dict[str, str], expected: float | None) -> None:
    with pytest.raises(Care360RateLimitError) as info:
        parse(429, {"status": 429, "success": False, "message": "Rate limit exceeded"}, headers)
    assert info.value.retry_after == expected


def test_parsers_directly() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("garbage") is None
    assert parse_rate_limit_reset("nan") is None
    assert parse_rate_limit_reset("inf") is None


def test_snippets_are_short_printable_and_without_the_key() -> None:
    text = safe_snippet(b"KEY-123 \x00\x1b[31m" + b"x" * 5000, secret="KEY-123")
    assert "KEY-123" not in text and "\x00" not in text and "\x1b" not in text
    assert len(text) <= 200


@pytest.mark.parametrize("value", ["²", "٣", "1²", "9" * 400, "1e999", "nan", "-5", ""])
def test_odd_retry_after_values_are_ignored_or_capped_never_raised(value: str) -> None:
    wait = parse_retry_after(value, NOW)
    reset = parse_rate_limit_reset(value, NOW)
    for seconds in (wait, reset):
        assert seconds is None or 0 <= seconds <= 366 * 86400
    with pytest.raises(Care360RateLimitError):
        parse(429, {}, {"Retry-After": value, "X-RateLimit-Reset": value})


def test_a_key_across_the_snippet_cut_and_in_escaped_forms_never_leaks() -> None:
    key = 'k/ey"\u00e9-SECRET-0123456789'
    for cut in range(780, 820):
        assert "SECRET" not in safe_snippet("x" * cut + key + "y" * 100, secret=key)
    for echoed in (json.dumps({"m": key}), json.dumps({"m": key}, ensure_ascii=False)):
        assert "SECRET" not in safe_snippet(echoed, secret=key)
    from urllib.parse import quote

    assert "SECRET" not in safe_snippet(f"?k={quote(key, safe='')}", secret=key)


def test_errors_survive_pickling_with_their_fields() -> None:
    with pytest.raises(Care360RateLimitError) as info:
        parse(429, {"message": "Rate limit exceeded"}, {"Retry-After": "9"})
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is Care360RateLimitError
    assert (copy.retry_after, copy.http_status, str(copy)) == (9.0, 429, str(info.value))


_headers = st.dictionaries(
    st.sampled_from(["Retry-After", "X-RateLimit-Reset", "Content-Type", "Location", "X-Other"]),
    st.one_of(
        st.text(max_size=40),
        st.integers(min_value=-(10**12), max_value=10**12).map(str),
        st.sampled_from(["²", "٣", "9" * 400, "1e999", "-0", " 5 ", "Wed, 21 Oct 10000 07:28:00 GMT"]),
    ),
    max_size=4,
)
_bodies = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
        lambda children: st.one_of(
            st.lists(children, max_size=3), st.dictionaries(st.text(max_size=10), children, max_size=4)
        ),
        max_leaves=10,
    ).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"success": st.one_of(st.booleans(), st.none(), st.text(max_size=3))},
        optional={"message": st.one_of(st.text(max_size=30), st.integers()), "error": st.text(max_size=30)},
    ).map(lambda v: json.dumps(v).encode()),
)


@settings(max_examples=500, deadline=None)
@given(status=st.integers(min_value=100, max_value=599), headers=_headers, body=_bodies)
def test_any_response_is_a_result_or_a_typed_error(status: int, headers: dict[str, str], body: bytes) -> None:
    try:
        result = parse_response(status, headers, body, conn_id="c", secret="KEY-123", now=NOW)
    except Care360Error as exc:
        assert str(exc) and "KEY-123" not in str(exc)
        assert exc.retry_after is None or exc.retry_after >= 0
        return
    assert 200 <= status < 300 and result.get("success") is True


# -- Fetch Appointments ---------------------------------------------------------------------------

APPOINTMENT = {"id": "a1", "start": "2026-12-01T15:00:00.000Z", "end": "2026-12-01T15:30:00.000Z"}
CONFIRMED = {**APPOINTMENT, "status": "CONFIRMED"}


def lookup(status: int, body: Any = b"", by_email: bool = True, headers: dict[str, str] | None = None) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_lookup_response(
        status, headers or {}, raw, conn_id="care360_test", by_email=by_email, secret="KEY-123", now=NOW
    )


def test_lookup_200_returns_the_data() -> None:
    assert lookup(200, {"status": 200, "success": True, "data": [APPOINTMENT]}) == [APPOINTMENT]


@pytest.mark.parametrize(
    "body",
    [
        {"status": 200, "success": True, "data": {"start": "x"}},
        {"status": 200, "success": True},
        {"status": 200, "success": True, "data": ["not an object"]},
        {"status": 200, "success": False, "data": []},
        b"<html>ok</html>",
    ],
)
def test_lookup_200_of_another_shape_is_unusable_and_never_advises_booking_without_it(body: Any) -> None:
    with pytest.raises(Care360LookupUnusableError) as caught:
        lookup(200, body)
    assert "check_existing=False" not in str(caught.value)


def test_lookup_elements_without_a_readable_start_are_returned_for_the_reading_to_weigh() -> None:
    items = [{"id": "no start"}, {"start": None}, {"start": "2026-12-01T15:00:00"}, APPOINTMENT]
    assert lookup(200, {"status": 200, "success": True, "data": items}) == items


@pytest.mark.parametrize(
    "extra",
    [
        {"next": "/api/v1/calendar/appointments?page=2"},
        {"hasMore": True},
        {"total": 3},
        {"pagination": {"p": 1}},
    ],
)
def test_a_lookup_answer_that_looks_paged_is_ambiguous(extra: dict[str, Any]) -> None:
    with pytest.raises(Care360LookupAmbiguousError, match="page"):
        lookup(200, {"status": 200, "success": True, "data": [APPOINTMENT], **extra})
    # Not paging: an empty next, or a total that matches what came.
    assert lookup(200, {"status": 200, "success": True, "data": [APPOINTMENT], "next": None, "total": 1})


@pytest.mark.parametrize("status", [400, 404, 410, 422])
def test_the_unknown_user_answer_is_read_by_its_notfounderror_signature_under_any_4xx(status: int) -> None:
    assert (
        lookup(status, {"status": status, "success": False, "message": "x", "error": "NotFoundError"}) == []
    )
    assert lookup(status, {"success": False, "name": "NotFoundError", "message": "no such user"}) == []
    assert lookup(status, {"success": False, "error": "NotFoundError: no user with this email"}) == []


@pytest.mark.parametrize(
    "body",
    [
        {"status": 404, "success": False, "message": "User not found"},  # the word, not the signature
        {"status": 404, "success": False, "message": "Cannot GET /api/v1/calendar/appointments?user_email=x"},
        b"<html>Cannot GET /api/v1/calendar/appointments?user_email=x</html>",
        {"status": 404, "success": False, "error": "UserNotFoundErrorX"},  # not the token
        {"message": "Route not found"},
    ],
)
def test_a_404_without_the_signature_is_a_missing_endpoint(body: Any) -> None:
    with pytest.raises(Care360LookupUnusableError, match="no such endpoint"):
        lookup(404, body)


def test_the_unknown_user_signature_means_nothing_for_a_range_query() -> None:
    with pytest.raises(Care360LookupUnusableError):
        lookup(404, {"success": False, "error": "NotFoundError"}, by_email=False)


def test_lookup_statuses_map_to_typed_errors() -> None:
    with pytest.raises(Care360AuthError):
        lookup(401, {"status": 401, "success": False, "message": "Unauthorized"})
    with pytest.raises(Care360RateLimitError) as throttled:
        lookup(429, {}, headers={"Retry-After": "7"})
    assert throttled.value.retry_after == 7
    with pytest.raises(Care360LookupUnusableError, match="forbidden"):
        lookup(403, {"status": 403, "success": False, "message": "Forbidden"})
    with pytest.raises(Care360LookupUnusableError, match="refused the query"):
        lookup(409, {"status": 409, "success": False, "message": "Conflict"})


@pytest.mark.parametrize("status", [408, 425, 500, 502, 503, 504])
def test_lookup_408_425_and_5xx_are_retryable_and_keep_their_retry_after(status: int) -> None:
    with pytest.raises(Care360LookupError) as failed:
        lookup(status, b"", headers={"retry-after": "12"})
    assert failed.value.outcome is Outcome.NOT_SENT and failed.value.retryable
    assert failed.value.retry_after == 12


def test_lookup_errors_never_quote_the_key_or_the_invitee() -> None:
    raw = json.dumps({"message": "echo KEY-123", "error": "user_email jane.doe@example.com is archived"})
    with pytest.raises(Care360LookupError) as caught:
        parse_lookup_response(
            500,
            {},
            raw.encode(),
            conn_id="c",
            by_email=True,
            secret="KEY-123",
            personal=["jane.doe@example.com"],
            now=NOW,
        )
    text = str(caught.value) + json.dumps(caught.value.response) + caught.value.summary
    assert "KEY-123" not in text and "jane.doe" not in text and "j***@" in text


START = datetime(2026, 12, 1, 15, tzinfo=UTC)


def test_match_appointment_compares_instants() -> None:
    offset = {**APPOINTMENT, "start": "2026-12-01T20:30:00+05:30"}
    confirmed = {**APPOINTMENT, "status": "CONFIRMED"}
    assert match_appointment([confirmed], START) == confirmed
    assert match_appointment([{**offset, "status": "CONFIRMED"}], START) is not None
    assert match_appointment([{**confirmed, "start": "2026-12-01T15:00:00Z"}], START) is not None
    assert match_appointment([confirmed], START.replace(minute=30)) is None


@pytest.mark.parametrize(
    "status", ["CANCELLED", "CANCELED", "CANCELED_BY_INVITEE", "cancelled_by_host", "DELETED"]
)
def test_cancelled_like_appointments_do_not_count(status: str) -> None:
    assert match_appointment([{**APPOINTMENT, "status": status}], START) is None
    assert match_appointment([{**APPOINTMENT, "status": "CONFIRMED", "isDeleted": True}], START) is None


@pytest.mark.parametrize("status", ["RESCHEDULED", "PENDING", None, ""])
def test_an_unknown_status_at_the_instant_fails_closed_naming_it(status: Any) -> None:
    with pytest.raises(Care360LookupAmbiguousError, match=(status or "<none>")) as caught:
        match_appointment([{**APPOINTMENT, "status": status}], START)
    assert caught.value.outcome is Outcome.AMBIGUOUS and not caught.value.retryable
    # A confirmed one beside it settles it; an unknown one at another instant does not matter.
    assert match_appointment(
        [{**APPOINTMENT, "status": status}, {**APPOINTMENT, "status": "CONFIRMED"}], START
    )
    assert (
        match_appointment([{**APPOINTMENT, "status": status, "start": "2026-12-02T15:00:00Z"}], START) is None
    )


def test_an_unreadable_start_is_skipped_unless_nothing_matches() -> None:
    broken = {"id": "b", "start": None, "status": "CONFIRMED"}
    confirmed = {**APPOINTMENT, "status": "CONFIRMED"}
    assert match_appointment([broken, confirmed], START) == confirmed
    with pytest.raises(Care360LookupAmbiguousError, match="cannot be read"):
        match_appointment([broken], START)
    with pytest.raises(Care360LookupAmbiguousError):
        match_appointment([{**broken, "start": "2026-12-01T15:00:00"}], START)  # no offset


def test_two_active_appointments_at_the_instant_read_oldest_first() -> None:
    older = {**APPOINTMENT, "id": "old", "status": "CONFIRMED", "createdAt": "2026-11-01T10:00:00.000Z"}
    newer = {**APPOINTMENT, "id": "new", "status": "CONFIRMED", "createdAt": "2026-11-01T10:00:00.500Z"}
    reading = read_at_instant([newer, older], START)
    assert [a["id"] for a in reading.active] == ["old", "new"] and reading.found == older


def test_an_error_keeps_the_json_answer_without_the_key() -> None:
    with pytest.raises(Care360BadRequestError) as caught:
        parse(400, {"status": 400, "success": False, "message": "Invalid request", "error": "KEY-123 bad"})
    assert caught.value.response == {
        "status": 400,
        "success": False,
        "message": "Invalid request",
        "error": "*** bad",
    }


def test_personal_data_echoed_by_a_4xx_is_masked_wherever_it_is_quoted() -> None:
    echo = {
        "status": 400,
        "success": False,
        "message": "Invalid request",
        "error": "Jane.Doe@Example.com (Zephyrine Quillfeather) is not allowed; Invalid slot for Al",
    }
    with pytest.raises(Care360BadRequestError) as caught:
        parse_response(
            400,
            {},
            json.dumps(echo).encode(),
            conn_id="c",
            secret="KEY-123",
            personal=["jane.doe@example.com", "Zephyrine", "Quillfeather", "Al"],
            now=NOW,
        )
    quoted = str(caught.value) + json.dumps(caught.value.response) + str(caught.value.api_error)
    for pii in ("Jane.Doe@Example.com", "jane.doe", "Zephyrine", "Quillfeather"):
        assert pii not in quoted
    assert "j***@e***.com" in str(caught.value) and "Z*** Q***" in str(caught.value)
    assert "Invalid slot for A***" in str(caught.value)  # whole words only: "Invalid" is untouched


def test_errors_survive_airflows_own_serialization() -> None:
    from airflow.serialization.serialized_objects import BaseSerialization

    from airflow_provider_care360.exceptions import Care360ValidationError

    problems = ["email: 'j***@example' is not a valid email address", "location: 'skype' is not allowed"]
    with pytest.raises(Care360RateLimitError) as throttled:
        parse(429, {"status": 429, "success": False, "message": "Rate limit exceeded"}, {"Retry-After": "9"})
    for error in (Care360ValidationError(problems), throttled.value):
        copy = BaseSerialization.deserialize(BaseSerialization.serialize(error))
        assert type(copy) is type(error) and str(copy) == str(error)
    copy = BaseSerialization.deserialize(BaseSerialization.serialize(Care360ValidationError(problems)))
    assert copy.problems == problems and str(copy).startswith("Care360 booking not sent: 2 invalid field(s)")
    rebuilt = BaseSerialization.deserialize(BaseSerialization.serialize(throttled.value))
    assert (rebuilt.http_status, rebuilt.retry_after, rebuilt.response["message"]) == (
        429,
        9.0,
        "Rate limit exceeded",
    )
    # AirflowException.status_code (the status Airflow's API server answers with) is left alone.
    assert "status_code" not in vars(rebuilt) and "status_code" not in vars(throttled.value)


def test_personal_data_echoed_url_encoded_or_json_escaped_is_masked_too() -> None:
    email = "jane.doe+intake@smallclinic-family.com"
    body = {
        "status": 404,
        "success": False,
        "message": "Cannot GET /api/v1/calendar/appointments"
        "?user_email=jane.doe%2Bintake%40smallclinic-family.com",
        "error": "no route for user_email=jane.doe+intake@smallclinic-family.com",
    }
    with pytest.raises(Care360LookupUnusableError) as caught:
        parse_lookup_response(
            404, {}, json.dumps(body).encode(), conn_id="c", by_email=True, personal=[email], now=NOW
        )
    text = str(caught.value) + json.dumps(caught.value.response)
    assert "jane.doe" not in text.lower() and "smallclinic" not in text.lower()
    assert "j***@s***.com" in text
