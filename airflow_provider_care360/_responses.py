"""
Turn a Care360 HTTP response into a result or a typed error.

Pure functions of (status, headers, body): no ``requests`` import, so they are cheap to load and
easy to test exhaustively.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from airflow_provider_care360.exceptions import (
    Care360AmbiguousError,
    Care360AuthError,
    Care360BadRequestError,
    Care360NotSentError,
    Care360RateLimitError,
)

SNIPPET_CHARS = 200
_EPOCH_THRESHOLD = 1_000_000_000  # X-RateLimit-Reset above this is a Unix time, below it a delta
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
    if text.isdigit():
        return float(int(text))
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
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if number != number or number < 0 or number == float("inf"):  # NaN, negative, inf
        return None
    if number >= _EPOCH_THRESHOLD:
        current = (now or datetime.now(UTC)).timestamp()
        return max(0.0, number - current)
    return number


def retry_after_seconds(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """The wait a response asks for: ``Retry-After`` first, then ``X-RateLimit-Reset``."""
    wait = parse_retry_after(_header(headers, "Retry-After"), now)
    if wait is None:
        wait = parse_rate_limit_reset(_header(headers, "X-RateLimit-Reset"), now)
    return wait


def safe_snippet(body: bytes | str, secret: str | None = None) -> str:
    """A short, printable excerpt of a response body, with the API key (if echoed) removed."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = _CONTROL.sub(" ", text[: SNIPPET_CHARS * 4])
    if secret:
        text = text.replace(secret, "***")
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 3] + "..."


def _field(data: Mapping[str, Any], name: str, secret: str | None) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    return safe_snippet(value if isinstance(value, str) else json.dumps(value, default=str), secret)


def parse_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    conn_id: str,
    secret: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """
    Return the API's JSON body of a successful booking, or raise the matching ``Care360Error``.

    :param conn_id: named in messages that ask the reader to check the connection.
    :param secret: the API key, removed from any text quoted from the body.
    """
    data: Any
    try:
        data = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        data = None
    fields = data if isinstance(data, dict) else {}
    api_message = _field(fields, "message", secret)
    api_error = _field(fields, "error", secret)
    snippet = safe_snippet(body, secret)
    said = "; ".join(p for p in (api_message, api_error) if p) or f"body: {snippet!r}"
    details: dict[str, Any] = {"status_code": status, "api_message": api_message, "api_error": api_error}

    if 200 <= status < 300:
        success = fields.get("success")
        if success is True:
            return dict(fields)
        if success is False:
            raise Care360BadRequestError(
                f"Care360 answered {status} but with success=false ({said}). Nothing was booked; "
                "check the booking fields.",
                **details,
            )
        raise Care360AmbiguousError(
            f"Care360 answered {status} with a body that is not the documented JSON "
            f"(body: {snippet!r}). The booking may or may not exist: check the calendar for this "
            "invitee before running the task again.",
            **details,
        )
    if 300 <= status < 400:
        location = _header(headers, "Location")
        raise Care360BadRequestError(
            f"Care360 answered {status} (redirect to {safe_snippet(location or '?', secret)!r}). "
            f"Nothing was booked; point the host of connection {conn_id!r} at the final URL.",
            **details,
        )
    if status == 401:
        raise Care360AuthError(
            f"Care360 rejected the API key of connection {conn_id!r} (401 Unauthorized). Nothing was "
            "booked; check the connection's password (API Key) and environment.",
            **details,
        )
    if status == 429:
        wait = retry_after_seconds(headers, now)
        hint = f"Care360 asked to wait {wait:.0f} s." if wait is not None else "No wait was given."
        raise Care360RateLimitError(
            f"Care360 rate limit exceeded (429): nothing was booked. {hint} Airflow will retry the task.",
            retry_after=wait,
            **details,
        )
    if status in (408, 503):
        wait = retry_after_seconds(headers, now)
        raise Care360NotSentError(
            f"Care360 did not take the request ({status}; {said}): nothing was booked. "
            "Airflow will retry the task.",
            retry_after=wait,
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
