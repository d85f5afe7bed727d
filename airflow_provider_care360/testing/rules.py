"""
The Care360 contract as the simulator reads it, as pure functions: no server, no clock unless asked.

This is the simulator's own reading of ``care360-api.md``, written apart from the provider's client
code on purpose: a test oracle that shared validation with what it tests would prove nothing.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from airflow_provider_care360._contract import LOCATIONS, TRACKING_KEYS

__all__ = [
    "DOCUMENTED",
    "UNKNOWN_USER",
    "appointment_view",
    "availability_answer",
    "booking_problem",
    "cancel_problem",
    "check_options",
    "check_seconds",
    "envelope",
    "lookup_answer",
    "timestamp",
    "utc",
]

REQUIRED = ("eventTypeId", "startTime", "email", "timezone", "location")
TRACKING_WIRE = frozenset(TRACKING_KEYS.values())


def envelope(status: int, message: str, error: str | None = None) -> dict[str, Any]:
    """The documented JSON envelope: ``status``, ``success``, ``message`` and, on failures, ``error``."""
    body: dict[str, Any] = {"status": status, "success": 200 <= status < 300, "message": message}
    if error is not None:
        body["error"] = error
    return body


DOCUMENTED = {
    200: envelope(200, "Meeting scheduled successfully"),
    401: envelope(401, "Unauthorized"),
    429: envelope(429, "Rate limit exceeded"),
}
UNKNOWN_USER = {
    "status": 404,
    "success": False,
    "message": "User not found",
    "error": "NotFoundError: no user with this email",
}


def check_options(
    *,
    slot_minutes: Any,
    rate_limit: Any,
    rate_window: Any,
    lookup_rate_limit: Any,
    lookup_rate_window: Any,
    quota: Any = None,
    quota_window: Any = 86400.0,
) -> None:
    """Refuse settings the simulator cannot serve with (a 0-minute slot divides by zero)."""
    if isinstance(slot_minutes, bool) or not isinstance(slot_minutes, int) or not 1 <= slot_minutes <= 1440:
        raise ValueError(f"slot_minutes must be a whole number from 1 to 1440, got {slot_minutes!r}")
    limits = (("rate_limit", rate_limit), ("lookup_rate_limit", lookup_rate_limit), ("quota", quota))
    for name, limit in limits:
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ValueError(f"{name} must be a whole number of at least 0, or None, got {limit!r}")
    windows = (
        ("rate_window", rate_window),
        ("lookup_rate_window", lookup_rate_window),
        ("quota_window", quota_window),
    )
    for name, window in windows:
        if isinstance(window, bool) or not isinstance(window, (int, float)) or not 0 < window < 1e9:
            raise ValueError(f"{name} must be a number of seconds above 0, got {window!r}")


def check_seconds(name: str, value: Any, *, optional: bool = False) -> None:
    """Refuse a duration that is not a finite number of seconds of at least 0 (``None`` if ``optional``)."""
    if value is None and optional:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 <= value < 1e9
    ):
        allowed = ", or None" if optional else ""
        raise ValueError(f"{name} must be a number of seconds of at least 0{allowed}, got {value!r}")


def booking_problem(
    body: Any,
    *,
    slot_minutes: int,
    zone: ZoneInfo,
    event_types: set[str] | None = None,
    now: datetime | None = None,
) -> str | None:
    """
    What is wrong with a booking body, or ``None``: the section 1 rules but "slot already taken".

    :param slot_minutes: slots start every this many minutes from midnight in ``zone``.
    :param zone: the host's zone, whose wall clock slots are aligned on.
    :param event_types: the event type ids that exist; ``None`` accepts any.
    :param now: the present (default: the clock); a start at or before it is in the past.
    """
    if not isinstance(body, dict):
        return "body must be a JSON object"
    for name in REQUIRED:
        value = body.get(name)
        if value is None or value == "":
            return f"{name} is required"
        if not isinstance(value, str):
            return f"{name} must be a string"
    for name in ("firstName", "lastName"):
        if name in body and body[name] is not None and not isinstance(body[name], str):
            return f"{name} must be a string"
    email = body["email"]
    local, at, domain = email.rpartition("@")
    if not at or not local or "." not in domain or " " in email:
        return "email must be a valid email"
    if body["location"] not in LOCATIONS:
        return f"location must be one of {', '.join(LOCATIONS)}"
    try:
        ZoneInfo(body["timezone"])
    except Exception:
        return "timezone must be a valid IANA time zone"
    tracking = body.get("tracking")
    if tracking is not None:
        if not isinstance(tracking, dict):
            return "tracking must be an object"
        for key, value in tracking.items():
            if key not in TRACKING_WIRE:
                return f"tracking.{key} is not allowed"
            if value is not None and not isinstance(value, str):
                return f"tracking.{key} must be a string or null"
    if event_types is not None and body["eventTypeId"] not in event_types:
        return "eventTypeId does not exist"
    try:
        start = datetime.fromisoformat(body["startTime"])
    except ValueError:
        return "startTime must be a valid ISO 8601 date-time"
    if start.tzinfo is None:
        return "startTime must be a valid ISO 8601 date-time with a time zone"
    try:  # the instant, its slot's end, and the host's wall clock must all be real dates
        local = start.astimezone(zone)
        start.astimezone(UTC) + timedelta(minutes=slot_minutes)
    except (OverflowError, ValueError):
        return "startTime is out of range"
    if start <= (now or datetime.now(UTC)):
        return "startTime is not a correct slot: it is in the past"
    if local.second or local.microsecond or (local.hour * 60 + local.minute) % slot_minutes:
        return (
            f"startTime is not a correct slot: slots start every {slot_minutes} minutes "
            f"from midnight in {zone.key}"
        )
    return None


def cancel_problem(body: Any) -> str | None:
    """What is wrong with a Cancel Appointment body (section 2b), or ``None``."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    for name in ("email", "appointmentId"):
        if not isinstance(body.get(name), str) or not body[name]:
            return f"{name} is required"
    if body.get("reason") is not None and not isinstance(body["reason"], str):
        return "reason must be a string"
    return None


def availability_answer(query: dict[str, list[str]]) -> tuple[int, Any]:
    """Provider availability (section 2c): booking links, never open slots; none configured here."""
    if not (query.get("provider_states") or [""])[0]:
        return 400, envelope(400, "Invalid request", "provider_states is required")
    if (query.get("start_time") or query.get("end_time")) and not query.get("event_type_id"):
        return 400, envelope(400, "Invalid request", "start_time and end_time need event_type_id")
    return 200, {
        "status": 200,
        "success": True,
        "message": "Provider availability fetched successfully",
        "data": [],
    }


def lookup_answer(
    ledger: list[dict[str, Any]], query: dict[str, list[str]], now: datetime | None = None
) -> tuple[int, Any]:
    """
    The Fetch Appointments answer (section 2a) for a query, from a snapshot of the ledger.

    :param ledger: every appointment, as the simulator stores them (``startTime``, ``end``, ``email``,
        ``cancelled``, ...).
    :param now: the present (default: the clock); appointments that have ended are left out.
    """
    email = (query.get("user_email") or [""])[0].strip().lower()
    first = next(iter(query.get("start_date") or []), None)
    last = next(iter(query.get("end_date") or []), None)
    if (first is None) != (last is None):
        return 400, envelope(400, "Invalid request", "start_date and end_date go together")
    if first is None and not email:
        return 400, envelope(400, "Invalid request", "user_email or start_date and end_date is required")
    begin = finish = None
    if first is not None and last is not None:
        try:
            begin = datetime.combine(date.fromisoformat(first), datetime.min.time(), UTC)
            finish = datetime.combine(date.fromisoformat(last), datetime.min.time(), UTC)
        except ValueError:
            return 400, envelope(400, "Invalid request", "start_date and end_date must be YYYY-MM-DD")
        if begin > finish:
            return 400, envelope(400, "Invalid request", "start_date must not be after end_date")
        finish += timedelta(days=1)
    now = now or datetime.now(UTC)
    if email and not any(b["email"].lower() == email for b in ledger):
        return 404, UNKNOWN_USER
    found = []
    for item in ledger:
        start = datetime.fromisoformat(item["startTime"])
        end = datetime.fromisoformat(item["end"])
        if item["cancelled"] or end <= now or (email and item["email"].lower() != email):
            continue
        if begin is not None and finish is not None and not (start < finish and end > begin):
            continue
        found.append((end, appointment_view(item)))
    found.sort(key=lambda pair: pair[0])
    data = [view for _, view in found]
    return 200, {
        "status": 200,
        "success": True,
        "message": "Appointments fetched successfully",
        "data": data,
    }


def utc(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def timestamp(value: datetime) -> str:
    """An instant with milliseconds, as the API writes ``createdAt``: ``2026-12-01T15:00:00.123Z``."""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def millis(value: str) -> str:
    """``2026-12-01T15:00:00Z`` -> ``2026-12-01T15:00:00.000Z``, as the API writes instants."""
    return value.removesuffix("Z") + ".000Z"


def appointment_view(item: dict[str, Any]) -> dict[str, Any]:
    """
    A ledger entry as Fetch Appointments shows it: no event type, no email, no tracking.

    ``status`` and ``isDeleted`` are the entry's own (``CONFIRMED`` and ``false`` unless it was
    pre-loaded with others); ``createdAt`` is when it entered the ledger.
    """
    return {
        "id": item["id"],
        "createdAt": item["bookedAt"],
        "updatedAt": item.get("updatedAt", item["bookedAt"]),
        "title": "Appointment",
        "start": millis(item["slot"]),
        "end": millis(item["end"]),
        "topic": None,
        "description": None,
        "color": None,
        "isEditable": True,
        "agentEventId": item["id"],
        "agentName": "Simulated provider",
        "status": item.get("status", "CONFIRMED"),
        "isDeleted": item.get("isDeleted", False),
        "meetingDetails": {},
        "case": {"id": "case-" + item["id"][:8]},
    }
