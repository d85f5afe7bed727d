"""
Turn a Care360 HTTP response into a result or a typed error.

Pure functions of (status, headers, body): no ``requests`` import, so they are cheap to load and
easy to test exhaustively.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from airflow_provider_care360._pii import mask_email, mask_name
from airflow_provider_care360.exceptions import (
    Care360AmbiguousError,
    Care360AuthError,
    Care360BadRequestError,
    Care360LookupError,
    Care360LookupUnusableError,
    Care360NotSentError,
    Care360RateLimitError,
)

SNIPPET_CHARS = 200
_EPOCH_THRESHOLD = 1_000_000_000  # X-RateLimit-Reset above this is a Unix time, below it a delta
_LONGEST_WAIT = 366 * 86400.0  # a wait asked for beyond a year is read as a year (the policy caps it)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date, RFC 9110)."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():  # str.isdigit() is also true for "²" and other digits
        return float(int(text)) if len(text) < 12 else _LONGEST_WAIT
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now or datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


def parse_rate_limit_reset(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from ``X-RateLimit-Reset``: a delta in seconds, or a Unix time."""
    if value is None:
        return None
    text = value.strip()
    try:
        number = float(text) if text.isascii() else float("nan")
    except (ValueError, OverflowError):
        return None
    if number != number or number < 0 or number == float("inf"):  # NaN, negative, inf
        return None
    if number >= _EPOCH_THRESHOLD:
        current = (now or datetime.now(UTC)).timestamp()
        return min(_LONGEST_WAIT, max(0.0, number - current))
    return number


def retry_after_seconds(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """The wait a response asks for: ``Retry-After`` first, then ``X-RateLimit-Reset``."""
    wait = parse_retry_after(_header(headers, "Retry-After"), now)
    if wait is None:
        wait = parse_rate_limit_reset(_header(headers, "X-RateLimit-Reset"), now)
    return wait


@functools.lru_cache(maxsize=8)
def _secret_forms(secret: str) -> tuple[str, ...]:
    r"""The key as a server may echo it: verbatim, JSON-escaped (ASCII or not, ``\/``), URL-encoded."""
    from urllib.parse import quote, quote_plus

    forms = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        json.dumps(secret)[1:-1].replace("/", "\\/"),
        quote(secret, safe=""),
        quote_plus(secret),
    }
    return tuple(sorted((f for f in forms if f), key=len, reverse=True))


def redact(text: str, secret: str | None, personal: Sequence[str] = ()) -> str:
    """
    ``text`` with every form of the API key replaced by ``***``, and the invitee's personal data
    (``personal``: the email and names the request sent) masked as in logs.
    """
    if secret:
        for form in _secret_forms(secret):
            text = text.replace(form, "***")
    folded = text.casefold() if personal else ""
    for value in personal:
        if value.casefold() not in folded:
            continue
        if "@" in value:
            text = re.sub(re.escape(value), mask_email(value), text, flags=re.IGNORECASE)
        elif len(value) > 1:  # a name: whole words only, so "Al" leaves "Invalid" alone
            text = re.sub(rf"(?<!\w){re.escape(value)}(?!\w)", mask_name(value), text, flags=re.IGNORECASE)
    return text


def safe_snippet(body: bytes | str, secret: str | None = None, personal: Sequence[str] = ()) -> str:
    """A short, printable excerpt of a response body, with the key and personal data removed first."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = _CONTROL.sub(" ", redact(text, secret, personal)[: SNIPPET_CHARS * 4])
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 3] + "..."


def scrub(value: Any, secret: str | None, personal: Sequence[str] = ()) -> Any:
    """A copy of decoded JSON with the key removed and personal data masked in every string."""
    if not secret and not personal:
        return value
    if isinstance(value, str):
        return redact(value, secret, personal)
    if isinstance(value, list):
        return [scrub(item, secret, personal) for item in value]
    if isinstance(value, dict):
        return {scrub(k, secret, personal): scrub(v, secret, personal) for k, v in value.items()}
    return value


def _decode(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def _field(data: Mapping[str, Any], name: str, secret: str | None) -> str | None:
    """A field of an already scrubbed body, as a short printable text."""
    value = data.get(name)
    if value is None:
        return None
    return safe_snippet(value if isinstance(value, str) else json.dumps(value, default=str), secret)


def _read_answer(
    status: int, body: bytes, secret: str | None, personal: Sequence[str]
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The scrubbed JSON object of an answer, the error fields it carries, and what it said in words."""
    data = _decode(body)
    fields: dict[str, Any] = scrub(data, secret, personal) if isinstance(data, dict) else {}
    api_message = _field(fields, "message", secret)
    api_error = _field(fields, "error", secret)
    said = "; ".join(p for p in (api_message, api_error) if p) or (
        f"body: {safe_snippet(body, secret, personal)!r}"
    )
    details: dict[str, Any] = {
        "http_status": status,
        "api_message": api_message,
        "api_error": api_error,
        "response": fields if isinstance(data, dict) else None,
    }
    return fields, details, said


def _raise_for_key_or_rate_limit(
    status: int,
    headers: Mapping[str, str],
    details: dict[str, Any],
    *,
    conn_id: str,
    what: str,
    now: datetime | None,
) -> None:
    """The 401 and 429 answers, which mean the same for every request."""
    if status == 401:
        raise Care360AuthError(
            f"Care360 rejected the API key of connection {conn_id!r} (401 Unauthorized){what}. Nothing "
            "was booked; check the connection's password (API Key) and environment.",
            **details,
        )
    if status == 429:
        wait = retry_after_seconds(headers, now)
        hint = f"Care360 asked to wait {wait:.0f} s." if wait is not None else "No wait was given."
        raise Care360RateLimitError(
            f"Care360 rate limit exceeded{what} (429): nothing was booked. {hint}",
            retry_after=wait,
            **details,
        )


def parse_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    conn_id: str,
    secret: str | None = None,
    personal: Sequence[str] = (),
    now: datetime | None = None,
) -> dict[str, Any]:
    """
    Return the API's JSON body of a successful booking, or raise the matching ``Care360Error``.

    :param conn_id: named in messages that ask the reader to check the connection.
    :param secret: the API key, removed from any text quoted from the body.
    :param personal: the invitee's email and names as sent, masked wherever the body echoes them.
    """
    fields, details, said = _read_answer(status, body, secret, personal)

    if 200 <= status < 300:
        success = fields.get("success")
        if success is True:
            return fields
        if success is False:
            raise Care360BadRequestError(
                f"Care360 answered {status} but with success=false ({said}). Nothing was booked; "
                "check the booking fields.",
                **details,
            )
        raise Care360AmbiguousError(
            f"Care360 answered {status} with a body that is not the documented JSON "
            f"(body: {safe_snippet(body, secret, personal)!r}). The booking may or may not exist: "
            "check the calendar for this invitee before running the task again.",
            **details,
        )
    if 300 <= status < 400:
        location = _header(headers, "Location")
        raise Care360BadRequestError(
            f"Care360 answered {status} (redirect to {safe_snippet(location or '?', secret, personal)!r}). "
            f"Nothing was booked; point the host of connection {conn_id!r} at the final URL.",
            **details,
        )
    _raise_for_key_or_rate_limit(status, headers, details, conn_id=conn_id, what="", now=now)
    if status == 408:  # the server timed out waiting for the request: it never had it whole
        raise Care360NotSentError(
            f"Care360 did not receive the whole request ({status}; {said}): nothing was booked. "
            "Airflow will retry the task.",
            retry_after=retry_after_seconds(headers, now),
            **details,
        )
    if 400 <= status < 500:
        raise Care360BadRequestError(
            f"Care360 rejected the booking ({status}; {said}). Nothing was booked; fix the input "
            "rather than retrying.",
            **details,
        )
    raise Care360AmbiguousError(
        f"Care360 answered {status} ({said}). The booking may or may not exist: check the calendar "
        "for this invitee before running the task again.",
        **details,
    )


# -- Fetch Appointments (GET /api/v1/calendar/appointments) ------------------------------------

_UNUSABLE = (
    "The lookup of existing appointments (GET /api/v1/calendar/appointments) cannot be used "
    "with connection {conn!r}: {why}. Nothing was booked. The operator looks before it books so "
    "that no invitee is booked twice; to book without the lookup, set check_existing=False on "
    "the task (see the README for what that cannot protect against)."
)


def _is_unknown_user(fields: Mapping[str, Any]) -> bool:
    """The documented "NotFoundError" for an unknown ``user_email``, told apart from a missing route."""
    if fields.get("success") is not False:
        return False
    said = " ".join(str(fields.get(k) or "") for k in ("message", "error")).lower()
    return "notfounderror" in said.replace(" ", "") or "user" in said


def parse_lookup_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    conn_id: str,
    by_email: bool,
    secret: str | None = None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """
    Return the appointments of a lookup answer, or raise the matching ``Care360Error``.

    A lookup is a read, so nothing here is ambiguous: a 5xx or an unreadable answer is a
    :class:`Care360LookupError` (retry), a 429 a :class:`Care360RateLimitError`, a 401 a
    :class:`Care360AuthError`; a 403, a 404 that is not the documented "unknown user" answer, or a
    200 that is not the documented shape is a :class:`Care360LookupUnusableError` (fail now).

    :param by_email: the query named ``user_email``; only then is a 404 "unknown user" read as
        "this person has no appointments".
    """
    fields, details, said = _read_answer(status, body, secret, ())

    if status == 200:
        items = fields.get("data")
        if (
            fields.get("success") is True
            and isinstance(items, list)
            and all(isinstance(item, dict) and appointment_start(item) is not None for item in items)
        ):
            return [dict(item) for item in items]
        why = "its 200 answer is not the documented shape (success: true, data: a list of appointments)"
        raise Care360LookupUnusableError(_UNUSABLE.format(conn=conn_id, why=why), **details)
    if status == 404 and by_email and _is_unknown_user(fields):
        return []  # the documented answer for an email Care360 does not know: no appointments
    what = " on the appointment lookup"
    _raise_for_key_or_rate_limit(status, headers, details, conn_id=conn_id, what=what, now=now)
    if status in (403, 404, 405, 410) or 300 <= status < 400:
        meaning = {403: "forbidden", 404: "no such endpoint", 405: "method not allowed", 410: "gone"}
        why = f"Care360 answered {status} ({meaning.get(status, 'a redirect')}; {said})"
        raise Care360LookupUnusableError(_UNUSABLE.format(conn=conn_id, why=why), **details)
    if 400 <= status < 500:
        raise Care360LookupUnusableError(
            _UNUSABLE.format(conn=conn_id, why=f"Care360 refused the query ({status}; {said})"), **details
        )
    raise Care360LookupError(
        f"The appointment lookup failed: Care360 answered {status} ({said}). Nothing was booked; "
        "a lookup is safe to repeat, and Airflow will retry the task.",
        retry_after=retry_after_seconds(headers, now),
        **details,
    )


def parse_instant(value: object) -> datetime | None:
    """An aware datetime from an ISO 8601 string with an offset (``Z``, ``.000Z``, ``+05:30``)."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None and value.utcoffset() is not None else None
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def appointment_start(appointment: Mapping[str, Any]) -> datetime | None:
    """The ``start`` instant of an appointment from a lookup, or ``None`` if it has none."""
    return parse_instant(appointment.get("start"))


_GONE_STATUSES = frozenset({"CANCELLED", "CANCELED", "DELETED"})


def match_appointment(appointments: list[dict[str, Any]], start: datetime) -> dict[str, Any] | None:
    """
    The appointment that starts at the instant ``start``, or ``None``.

    Instants are compared, never strings (``...:00Z``, ``...:00.000Z`` and ``+05:30`` forms of the
    same instant match). Appointments marked deleted or cancelled are ignored.
    """
    for appointment in appointments:
        if appointment.get("isDeleted") is True:
            continue
        if str(appointment.get("status") or "").upper() in _GONE_STATUSES:
            continue
        if appointment_start(appointment) == start:
            return appointment
    return None
