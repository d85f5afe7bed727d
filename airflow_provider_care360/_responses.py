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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from airflow_provider_care360._pii import mask_email, mask_name
from airflow_provider_care360.exceptions import (
    Care360AmbiguousError,
    Care360AuthError,
    Care360BadRequestError,
    Care360LookupAmbiguousError,
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
        for form in _secret_forms(value):  # as echoed verbatim, URL-encoded or JSON-escaped
            if form.casefold() not in folded:
                continue
            if "@" in value:
                text = re.sub(re.escape(form), mask_email(value), text, flags=re.IGNORECASE)
            elif len(value) > 1:  # a name: whole words only, so "Al" leaves "Invalid" alone
                text = re.sub(rf"(?<!\w){re.escape(form)}(?!\w)", mask_name(value), text, flags=re.IGNORECASE)
            folded = text.casefold()
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
            summary=f"Care360 rejected the API key (401){what}",
            **details,
        )
    if status == 429:
        wait = retry_after_seconds(headers, now)
        hint = f"Care360 asked to wait {wait:.0f} s." if wait is not None else "No wait was given."
        raise Care360RateLimitError(
            f"Care360 rate limit exceeded{what} (429): nothing was booked. {hint}",
            retry_after=wait,
            summary=f"Care360 rate limit exceeded{what} (429)",
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
                summary=f"Care360 answered {status} with success=false ({said})",
                **details,
            )
        raise Care360AmbiguousError(
            f"Care360 answered {status} with a body that is not the documented JSON "
            f"(body: {safe_snippet(body, secret, personal)!r}). The booking may or may not exist: "
            "check the calendar for this invitee before running the task again.",
            summary=f"Care360 answered {status} with a body that is not the documented JSON",
            **details,
        )
    if 300 <= status < 400:
        location = _header(headers, "Location")
        raise Care360BadRequestError(
            f"Care360 answered {status} (redirect to {safe_snippet(location or '?', secret, personal)!r}). "
            f"Nothing was booked; point the host of connection {conn_id!r} at the final URL.",
            summary=f"Care360 answered {status} (a redirect)",
            **details,
        )
    _raise_for_key_or_rate_limit(status, headers, details, conn_id=conn_id, what="", now=now)
    if status == 408:  # the server timed out waiting for the request: it never had it whole
        raise Care360NotSentError(
            f"Care360 did not receive the whole request ({status}; {said}): nothing was booked. "
            "Airflow will retry the task.",
            retry_after=retry_after_seconds(headers, now),
            summary=f"Care360 did not receive the whole request ({status})",
            **details,
        )
    if 400 <= status < 500:
        raise Care360BadRequestError(
            f"Care360 rejected the booking ({status}; {said}). Nothing was booked; fix the input "
            "rather than retrying.",
            summary=f"Care360 rejected the booking ({status}; {said})",
            **details,
        )
    raise Care360AmbiguousError(
        f"Care360 answered {status} ({said}). The booking may or may not exist: check the calendar "
        "for this invitee before running the task again.",
        summary=f"Care360 answered {status} ({said})",
        **details,
    )


def parse_cancel_response(
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
    The API's JSON body of a successful cancel (section 2b), or the matching ``Care360Error``.

    Success is read from ``success: true``, never from ``message`` (the vendor's docs give two).
    """
    fields, details, said = _read_answer(status, body, secret, personal)
    if 200 <= status < 300 and fields.get("success") is True:
        return fields
    what = " on the cancel request"
    _raise_for_key_or_rate_limit(status, headers, details, conn_id=conn_id, what=what, now=now)
    if 400 <= status < 500 or (200 <= status < 300 and fields.get("success") is False):
        raise Care360BadRequestError(
            f"Care360 refused to cancel the appointment ({status}; {said}).",
            summary=f"Care360 refused the cancel ({status}; {said})",
            **details,
        )
    raise Care360AmbiguousError(
        f"Care360 answered the cancel request with {status} ({said}): the appointment may or may not "
        "be cancelled.",
        summary=f"Care360 answered the cancel request with {status} ({said})",
        **details,
    )


# -- Fetch Appointments (GET /api/v1/calendar/appointments) ------------------------------------

_UNUSABLE = (
    "The lookup of existing appointments (GET /api/v1/calendar/appointments) cannot be used "
    "with connection {conn!r}: {why}. Nothing was booked. The operator looks before it books so "
    "that no invitee is booked twice; check the connection's base URL and that its API key may read "
    "appointments."
)
#: The documented signature of the unknown-user answer, as a token: never a word such as "user".
_NOT_FOUND_ERROR = re.compile(r"(?<![A-Za-z0-9_])NotFoundError(?![A-Za-z0-9_])")
#: Fields of an error body that may carry the error's type name.
_SIGNATURE_FIELDS = ("error", "name", "type", "code", "errorType", "error_type", "message")
#: Keys that would mean the answer is one page of several (no paging is documented).
_PAGING_KEYS = frozenset(
    {
        "next",
        "nextPage",
        "next_page",
        "nextCursor",
        "next_cursor",
        "cursor",
        "hasMore",
        "has_more",
        "page",
        "pages",
        "pageSize",
        "page_size",
        "totalPages",
        "total_pages",
        "pagination",
        "links",
        "nextToken",
        "next_token",
        "continuation",
        "offset",
        "limit",
    }
)
#: Lookup answers that a later try may not get again: retried, never read as "no appointments".
_LOOKUP_RETRYABLE = frozenset({408, 425})


def _is_unknown_user(fields: Mapping[str, Any]) -> bool:
    """The documented "NotFoundError" for an unknown ``user_email``, told apart from a missing route."""
    if fields.get("success") is not False:
        return False
    for name in _SIGNATURE_FIELDS:
        value = fields.get(name)
        if isinstance(value, str) and _NOT_FOUND_ERROR.search(value):
            return True
        if isinstance(value, Mapping) and any(
            isinstance(v, str) and _NOT_FOUND_ERROR.search(v) for v in value.values()
        ):
            return True
    return False


def _paging_signs(fields: Mapping[str, Any], items: list[Any]) -> list[str]:
    """What in a 200 lookup answer suggests it holds only part of the appointments."""
    signs = sorted(k for k in fields if k in _PAGING_KEYS and fields[k] not in (None, False, "", [], {}))
    for key in ("total", "totalCount", "total_count", "count"):
        value = fields.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > len(items):
            signs.append(f"{key}={value} > {len(items)} returned")
    return signs


def parse_lookup_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    conn_id: str,
    by_email: bool,
    secret: str | None = None,
    personal: Sequence[str] = (),
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """
    Return the appointments of a lookup answer, or raise the matching ``Care360Error``.

    A lookup is a read: a 5xx, a 408 or a 425 is a :class:`Care360LookupError` (retry, with the
    ``Retry-After`` it named), a 429 a :class:`Care360RateLimitError`, a 401 a
    :class:`Care360AuthError`. The unknown-user answer is recognised by its documented signature
    (``NotFoundError`` in its error fields, under any 4xx), and read as "no appointments"; a 404
    without it means the endpoint is not there. That, a 403, any other 4xx, or a 200 that is not the
    documented shape is a :class:`Care360LookupUnusableError` (fail now, nothing booked). A 200 that
    looks like one page of several is a :class:`Care360LookupAmbiguousError`.

    :param by_email: the query named ``user_email``; only then is "unknown user" read as "this
        person has no appointments".
    :param personal: the email the query carried, masked wherever the answer echoes it.
    """
    fields, details, said = _read_answer(status, body, secret, personal)

    if status == 200:
        items = fields.get("data")
        if (
            fields.get("success") is True
            and isinstance(items, list)
            and all(isinstance(i, dict) for i in items)
        ):
            if signs := _paging_signs(fields, items):
                raise Care360LookupAmbiguousError(
                    f"The appointment lookup's answer looks like one page of several ({', '.join(signs)}); "
                    "Care360 documents no paging, so the invitee's appointment may be on a page not read. "
                    "Nothing was booked.",
                    summary="the lookup's answer looks paged",
                    **details,
                )
            return [dict(item) for item in items]
        why = "its 200 answer is not the documented shape (success: true, data: a list of appointments)"
        raise Care360LookupUnusableError(_UNUSABLE.format(conn=conn_id, why=why), summary=why, **details)
    if by_email and 400 <= status < 500 and status not in (401, 429) and _is_unknown_user(fields):
        return []  # the documented answer for an email Care360 does not know: no appointments
    what = " on the appointment lookup"
    _raise_for_key_or_rate_limit(status, headers, details, conn_id=conn_id, what=what, now=now)
    if status in _LOOKUP_RETRYABLE or status >= 500:
        summary = f"the appointment lookup failed: Care360 answered {status} ({said})"
        raise Care360LookupError(
            f"The appointment lookup failed: Care360 answered {status} ({said}). Nothing was booked; "
            "a lookup is safe to repeat, and Airflow will retry the task.",
            retry_after=retry_after_seconds(headers, now),
            summary=summary,
            **details,
        )
    meaning = {403: "forbidden", 404: "no such endpoint", 405: "method not allowed", 410: "gone"}
    if status in meaning or 300 <= status < 400:
        why = f"Care360 answered {status} ({meaning.get(status, 'a redirect')}; {said})"
    else:
        why = f"Care360 refused the query ({status}; {said})"
    raise Care360LookupUnusableError(_UNUSABLE.format(conn=conn_id, why=why), summary=why, **details)


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


#: Statuses of an appointment that exists. Care360 documents ``CONFIRMED`` only.
ACTIVE_STATUSES = frozenset({"CONFIRMED"})


def _gone(appointment: Mapping[str, Any]) -> bool:
    """Cancelled-like: any status starting ``CANCEL``, ``DELETED``, or ``isDeleted: true``."""
    status = str(appointment.get("status") or "").strip().upper()
    return appointment.get("isDeleted") is True or status.startswith("CANCEL") or status == "DELETED"


@dataclass(frozen=True)
class AtInstant:
    """
    What a lookup says about one start instant.

    :param active: the appointments at the instant whose status says they exist, oldest first.
    :param unknown: the statuses, at the instant, that the provider cannot read (neither active nor
        cancelled-like).
    :param unreadable: how many appointments had a ``start`` that cannot be read.
    """

    active: tuple[dict[str, Any], ...]
    unknown: tuple[str, ...]
    unreadable: int

    @property
    def found(self) -> dict[str, Any] | None:
        """The appointment that stands at the instant (the earliest created), or ``None``."""
        return self.active[0] if self.active else None

    @property
    def clear(self) -> bool:
        """Whether the answer can be trusted: something active, or nothing unknown or unreadable."""
        return bool(self.active) or not (self.unknown or self.unreadable)


def _created(appointment: Mapping[str, Any]) -> tuple[int, datetime, str]:
    created = parse_instant(appointment.get("createdAt"))
    if created is None:
        return (1, datetime.max.replace(tzinfo=UTC), str(appointment.get("id")))
    return (0, created, str(appointment.get("id")))


def read_at_instant(appointments: list[dict[str, Any]], start: datetime) -> AtInstant:
    """
    Sort a lookup's appointments at the instant ``start`` into active, unknown and unreadable.

    Instants are compared, never strings (``...:00Z``, ``...:00.000Z`` and ``+05:30`` forms of the
    same instant match). An appointment whose start cannot be read is counted, not matched: it only
    matters when nothing active is found.
    """
    active: list[dict[str, Any]] = []
    unknown: list[str] = []
    unreadable = 0
    for appointment in appointments:
        at = appointment_start(appointment)
        if at is None:
            unreadable += 1
            continue
        if at != start or _gone(appointment):
            continue
        status = str(appointment.get("status") or "").strip().upper()
        if status in ACTIVE_STATUSES:
            active.append(appointment)
        else:
            unknown.append(status or "<none>")
    active.sort(key=_created)
    return AtInstant(active=tuple(active), unknown=tuple(unknown), unreadable=unreadable)


def match_appointment(appointments: list[dict[str, Any]], start: datetime) -> dict[str, Any] | None:
    """
    The appointment that exists at the instant ``start``, or ``None`` when none does.

    Raises :class:`Care360LookupAmbiguousError` when the answer cannot say: no active appointment
    at the instant, and one there with a status the provider does not know, or one whose start
    cannot be read.
    """
    reading = read_at_instant(appointments, start)
    if not reading.clear:
        raise lookup_unclear(reading)
    return reading.found


def lookup_unclear(reading: AtInstant) -> Care360LookupAmbiguousError:
    """The error for a lookup answer that cannot say whether the appointment exists."""
    parts = []
    if reading.unknown:
        parts.append(
            f"an appointment at this start has status {', '.join(sorted(set(reading.unknown)))}, which "
            f"the provider does not know (it counts {', '.join(sorted(ACTIVE_STATUSES))} as booked, and "
            "statuses starting CANCEL or DELETED as gone)"
        )
    if reading.unreadable:
        parts.append(f"{reading.unreadable} appointment(s) in the answer have a start that cannot be read")
    why = "; ".join(parts)
    return Care360LookupAmbiguousError(
        f"The appointment lookup cannot say whether the invitee is booked at this start: {why}. "
        "Nothing was booked by this try: check the appointment in Care360.",
        summary=f"the lookup cannot say whether the appointment exists ({why})",
    )
