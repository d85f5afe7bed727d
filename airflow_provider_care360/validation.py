"""
Validation of booking fields, before any request is sent.

:func:`build_booking_payload` checks every field, reports all problems at once in a
:class:`~airflow_provider_care360.exceptions.Care360ValidationError`, and otherwise returns the
JSON body of the Schedule Appointment request, with the API's camelCase field names.

To weed out bad rows before a mapped booking task, use
:func:`airflow_provider_care360.rows.prepare_bookings` in the upstream task: it takes the rows as
they come (``email`` or ``invitee_email``) and keeps each bad row's reason.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

from airflow_provider_care360._contract import LOCATIONS, TRACKING_KEYS
from airflow_provider_care360._pii import mask_email, mask_name
from airflow_provider_care360.exceptions import Care360ValidationError

__all__ = [
    "LOCATIONS",
    "TRACKING_KEYS",
    "build_booking_payload",
    "build_lookup_query",
    "format_start_time",
    "past_start_problem",
]

_TRACKING_WIRE = frozenset(TRACKING_KEYS.values())

_MAX_SHOWN = 60
# Files in a zoneinfo directory that are not IANA zone names.
_NOT_ZONES = frozenset({"Factory", "localtime", "posixrules"})


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _email_problem(address: str) -> str | None:
    """Why ``address`` is not one valid email address (syntax only: no DNS, no network), or None."""
    from email_validator import EmailNotValidError, validate_email

    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        return (
            f"email: {mask_email(address)!r} is not a valid email address "
            f"({_without_parts(str(exc), address)}); allowed: one address such as name@example.com"
        )
    return None


def _without_parts(text: str, address: str) -> str:
    """The validator's reason with any piece of the address it quotes (a domain label, say) masked."""
    local, _, domain = address.rpartition("@")
    parts = sorted(
        {p for p in (local, domain, *domain.split("."), *re.split(r"[.+_-]", local)) if len(p) > 2},
        key=len,
        reverse=True,
    )
    for part in parts:
        text = text.replace(part, "***")
    return text


@functools.cache
def _iana_names() -> frozenset[str]:
    """The IANA time zone names (links such as ``US/Eastern`` included), from ``tzdata``."""
    try:
        from importlib.resources import files

        names: set[str] | list[str] = files("tzdata").joinpath("zones").read_text().split()
    except (ImportError, OSError):  # no tzdata package: the system's zoneinfo files
        from zoneinfo import available_timezones

        names = available_timezones()
    return frozenset(n for n in names if n not in _NOT_ZONES and not n.startswith(("posix/", "right/")))


def _zone(name: str) -> Any:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if name not in _iana_names():
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):
        return None


def _wall_clock_problem(naive: datetime, zone: Any, zone_name: str) -> str | None:
    """A naive start that does not exist in the zone (a DST gap) or happens twice (a fold)."""
    first, second = naive.replace(tzinfo=zone, fold=0), naive.replace(tzinfo=zone, fold=1)
    if first.utcoffset() == second.utcoffset():
        return None
    shown = naive.isoformat()
    if first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != naive:
        moved = first.astimezone(UTC).astimezone(zone).isoformat()
        return (
            f"start_time: {shown} does not exist in {zone_name} (the clocks skip it for daylight "
            f"saving time; it would be read as {moved}); allowed: a time that exists there, or a "
            "time with an offset"
        )
    return (
        f"start_time: {shown} happens twice in {zone_name} (the clocks go back); allowed: an offset "
        f"that says which, {first.isoformat()} or {second.isoformat()}"
    )


def _parse_start(value: object) -> datetime | None:
    if isinstance(value, datetime):  # includes pendulum.DateTime
        return value
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or "T" not in text.upper() and " " not in text:
        return None  # a bare date is not a start time
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _start_text(
    parsed: datetime,
    zone: Any,
    zone_name: str | None,
    now: datetime | None,
    problems: list[str],
    require_future: bool = True,
) -> str | None:
    """The start as sent (UTC), or None with the problem appended; may raise OverflowError."""
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        if zone is None:
            return None  # the timezone problem is already reported
        if problem := _wall_clock_problem(parsed, zone, str(zone_name)):
            problems.append(problem)
            return None
        parsed = parsed.replace(tzinfo=zone)
    text = format_start_time(parsed)
    if require_future and (problem := past_start_problem(parsed, now)):
        problems.append(problem)
        return None
    return text


def past_start_problem(start: datetime, now: datetime | None = None) -> str | None:
    """The problem of a start that is not in the future, or ``None``."""
    current = now or datetime.now(UTC)
    if start > current:
        return None
    return (
        f"start_time: {format_start_time(start)} is not in the future (now {format_start_time(current)}); "
        "allowed: a future date-time"
    )


def format_start_time(value: datetime) -> str:
    """Format an aware datetime in the contract's ``YYYY-MM-DDTHH:MM:SSZ`` form (UTC)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _normalise_tracking(value: object, problems: list[str]) -> dict[str, str | None] | None:
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except ValueError:
            problems.append(
                f"tracking: a string that is not a JSON object is not allowed; allowed: a dict (or JSON "
                f"object) with the keys {', '.join(sorted(_TRACKING_WIRE))}"
            )
            return None
    if not isinstance(value, Mapping):
        problems.append(
            f"tracking: a {type(value).__name__} is not a mapping; allowed: a dict with the keys "
            f"{', '.join(sorted(_TRACKING_WIRE))}"
        )
        return None
    out: dict[str, str | None] = {}
    for key, item in value.items():
        wire = TRACKING_KEYS.get(key, key) if isinstance(key, str) else None
        if wire not in _TRACKING_WIRE:
            # The key is shown masked: a spreadsheet's column can carry a name or an address.
            problems.append(
                f"tracking: unknown key {mask_name(str(key))!r}; allowed: "
                f"{', '.join(sorted(_TRACKING_WIRE))} (or their snake_case twins)"
            )
            continue
        assert wire is not None
        if wire in out:
            problems.append(f"tracking: {wire} is given twice (camelCase and snake_case)")
            continue
        if item is not None and not isinstance(item, str):
            problems.append(
                f"tracking.{wire}: a {type(item).__name__} is not allowed; allowed: a string or null"
            )
            continue
        out[wire] = item
    return out


def build_booking_payload(
    *,
    event_type_id: object,
    start_time: object,
    email: object,
    timezone: object,
    location: object,
    first_name: object = None,
    last_name: object = None,
    tracking: object = None,
    now: datetime | None = None,
    require_future: bool = True,
) -> dict[str, Any]:
    """
    Check booking fields and return the request body, or raise ``Care360ValidationError``.

    :param start_time: an ISO 8601 string or a ``datetime``. An aware value is converted to UTC; a
        naive value is read as a wall-clock time in the invitee's ``timezone``. It must be in the
        future.
    :param tracking: a mapping with any of the six documented keys, camelCase or snake_case, values
        string or ``None``; a JSON object string is accepted too.
    :param now: the current time (aware), for tests; defaults to the clock.
    :param require_future: refuse a start that is not in the future (the default). ``False`` lets
        a caller that must first look at an earlier try's booking check it itself
        (:func:`past_start_problem`).
    :return: the JSON body, camelCase, with optional fields left out when empty.
    """
    problems: list[str] = []

    def required_string(field: str, value: object, shown: str) -> str | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            problems.append(f"{field}: is required and must not be empty")
            return None
        if not isinstance(value, str):
            problems.append(f"{field}: {shown} is not allowed; allowed: a string")
            return None
        return value.strip()

    event = required_string("event_type_id", event_type_id, _shown(event_type_id))

    address = required_string("email", email, "***" if isinstance(email, str) else type(email).__name__)
    if address is not None and (problem := _email_problem(address)):
        problems.append(problem)
        address = None

    zone_name = required_string("timezone", timezone, _shown(timezone))
    zone = _zone(zone_name) if zone_name else None
    if zone_name and zone is None:
        problems.append(
            f"timezone: {_shown(zone_name)} is not an IANA time zone; allowed: a name such as "
            "'America/New_York', 'Asia/Kolkata' or 'UTC'"
        )

    place = required_string("location", location, _shown(location))
    if place is not None and place not in LOCATIONS:
        problems.append(f"location: {_shown(place)} is not allowed; allowed: one of {', '.join(LOCATIONS)}")

    start_text: str | None = None
    if start_time is None or (isinstance(start_time, str) and not start_time.strip()):
        problems.append("start_time: is required and must not be empty")
    else:
        parsed = _parse_start(start_time)
        if parsed is None:
            problems.append(
                f"start_time: {_shown(start_time)} is not an ISO 8601 date-time; allowed: e.g. "
                "'2025-11-28T04:30:00Z', or a datetime"
            )
        else:
            try:
                start_text = _start_text(parsed, zone, zone_name, now, problems, require_future)
            except (OverflowError, ValueError):
                problems.append(
                    f"start_time: {_shown(start_time)} is out of range; allowed: a date-time whose "
                    "UTC instant falls between the years 1 and 9999"
                )

    names: dict[str, str] = {}
    for field, wire, value in (("first_name", "firstName", first_name), ("last_name", "lastName", last_name)):
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if not isinstance(value, str):
            problems.append(f"{field}: a {type(value).__name__} is not allowed; allowed: a string or None")
            continue
        if len(value) > 200:
            problems.append(f"{field}: {mask_name(value)!r} is too long; allowed: at most 200 characters")
            continue
        names[wire] = value.strip()

    tracking_body = _normalise_tracking(tracking, problems)

    if problems:
        raise Care360ValidationError(problems)

    body: dict[str, Any] = {
        "eventTypeId": event,
        "startTime": start_text,
        "email": address,
        **names,
        "timezone": zone_name,
        "location": place,
    }
    if tracking_body:
        body["tracking"] = tracking_body
    return body


def _day(field: str, value: object, problems: list[str]) -> date | None:
    if isinstance(value, datetime):
        problems.append(f"{field}: a datetime is not allowed; allowed: a date or 'YYYY-MM-DD'")
        return None
    if isinstance(value, date):
        return value
    if isinstance(value, str) and len(value.strip()) == 10:
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    problems.append(f"{field}: {_shown(value)} is not allowed; allowed: a date or 'YYYY-MM-DD'")
    return None


def build_lookup_query(
    *, user_email: object = None, start_date: object = None, end_date: object = None
) -> dict[str, str]:
    """
    Check the filters of a Fetch Appointments lookup and return its query parameters.

    Either ``user_email``, or ``start_date`` and ``end_date`` together (``start_date <= end_date``),
    or all three. Raises ``Care360ValidationError`` naming each bad filter.
    """
    problems: list[str] = []
    query: dict[str, str] = {}
    if user_email is not None:
        if not isinstance(user_email, str) or not user_email.strip():
            problems.append("user_email: is not allowed; allowed: one address such as name@example.com")
        elif problem := _email_problem(user_email.strip()):
            problems.append("user_" + problem)
        else:
            query["user_email"] = user_email.strip()
    if (start_date is None) != (end_date is None):
        problems.append("start_date, end_date: give both or neither")
    elif start_date is not None:
        first, last = _day("start_date", start_date, problems), _day("end_date", end_date, problems)
        if first and last and first > last:
            problems.append(f"start_date: {first} is after end_date {last}; allowed: start_date <= end_date")
        elif first and last:
            query["start_date"], query["end_date"] = first.isoformat(), last.isoformat()
    elif user_email is None:
        problems.append("user_email, start_date, end_date: give user_email, or start_date and end_date")
    if problems:
        raise Care360ValidationError(problems)
    return query
