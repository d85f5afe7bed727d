"""
Turn raw rows (from a warehouse, a CRM export, a file) into the arguments of mapped booking tasks.

A row that ``expand_kwargs`` cannot map (a missing or unknown key, ``email`` where the operator
takes ``invitee_email``) fails its task with Airflow's ``TypeError`` and is retried for nothing; a
row with both ``email`` and ``invitee_email`` books, and makes the invitee the task's failure-alert
recipient. :func:`prepare_bookings` runs in the upstream task instead: it checks each row the way the
operator will, returns the good rows as keyword arguments, and sets the bad ones aside as outcome
records with their reasons, so a write-back task accounts for every row::

    @task
    def load_rows(ti=None) -> list[dict]:
        rows = warehouse.get_records(...)
        bookings, rejected = prepare_bookings(rows, fixed={"event_type_id": EVENT_TYPE_ID})
        ti.xcom_push(key=REJECTED_KEY, value=rejected)  # for the write-back task
        return bookings

    ScheduleAppointmentOperator.partial(
        task_id="book", event_type_id=EVENT_TYPE_ID, location="zoom_conference"
    ).expand_kwargs(load_rows())

(Airflow maps over a task's return value only, not over one key of a ``multiple_outputs`` task.)

Pure functions, no Airflow imports.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from airflow_provider_care360._contract import BOOKING_FIELDS, RECORD_EMAIL_MODES
from airflow_provider_care360._pii import mask_email
from airflow_provider_care360.outcomes import outcome_record

__all__ = ["BOOKING_FIELDS", "REJECTED_KEY", "chunk_rows", "prepare_bookings", "prepare_indexed"]

#: The XCom key an upstream task pushes its set-aside rows under, by convention.
REJECTED_KEY = "care360_rejected"


def _rejected(index: int, row: Any, reason: str, raw_email: bool) -> dict[str, Any]:
    return _set_aside(index, row, "rejected", f"Row {index} was not booked: {reason}", raw_email)


def _set_aside(index: int, row: Any, outcome: str, message: str, raw_email: bool) -> dict[str, Any]:
    fields = row if isinstance(row, Mapping) else {}
    email = fields.get("invitee_email", fields.get("email"))
    record = outcome_record(
        outcome=outcome,
        message=message,
        event_type_id=fields.get("event_type_id"),
        start_time=fields.get("start_time"),
        email=email if raw_email or email is None else mask_email(email),
        row_key=fields.get("row_key"),
    )
    record["row"] = index
    return record


def prepare_bookings(
    rows: Iterable[Any], *, fixed: Mapping[str, Any] | None = None, record_email: str = "masked"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """
    Split rows into booking arguments and rejected rows.

    :param rows: mappings with the keys of :data:`BOOKING_FIELDS` (``email`` is accepted for
        ``invitee_email``, not both).
    :param fixed: the booking arguments the task sets in ``partial()`` (e.g. ``event_type_id``,
        ``location``): checked with each row, and not allowed in a row as well (Airflow would refuse
        the row).
    :param record_email: how the set-aside records carry the email: ``"masked"`` (default) or
        ``"raw"``, as the operator's ``record_email``. A row's ``row_key`` is carried as it is.
    :return: ``(bookings, rejected)``: a list of keyword arguments, one per good row, and a list
        of outcome records, one per row set aside, each with ``outcome: "rejected"``, the reason in
        ``message`` (personal data masked) and ``row``, the row's index in ``rows``. A row that
        repeats an earlier good row (the same invitee, its email compared case-insensitively, at the
        same start instant, whatever the zone it is written in) is set aside with
        ``outcome: "duplicate"`` and ``duplicate_of``, the index of the row that books it: mapped
        tasks never book one appointment twice.
    """
    indexed, rejected = prepare_indexed(rows, fixed=fixed, record_email=record_email)
    return [kwargs for _, kwargs in indexed], rejected


def payload_of(fields: Mapping[str, Any], *, require_future: bool = True) -> dict[str, Any]:
    """The request body of a row's booking arguments (operator names), or ``Care360ValidationError``."""
    from airflow_provider_care360.validation import build_booking_payload

    return build_booking_payload(
        require_future=require_future,
        event_type_id=fields.get("event_type_id"),
        start_time=fields.get("start_time"),
        email=fields.get("invitee_email"),
        timezone=fields.get("timezone"),
        location=fields.get("location"),
        first_name=fields.get("first_name"),
        last_name=fields.get("last_name"),
        tracking=fields.get("tracking"),
    )


def chunk_rows(rows: Iterable[Any], size: int) -> list[list[Any]]:
    """
    ``rows`` in consecutive chunks of about ``size``, to map ``BatchScheduleAppointmentOperator``
    over: ``.partial(...).expand(rows=chunk_rows(rows, 1000))``. A row that repeats an earlier one
    (the same invitee at the same start) joins that row's chunk, which may then hold a few more than
    ``size``: its batch books it once and records the repeat as ``duplicate``. Each chunk's records
    carry its map index and each row's index in its chunk (``row``): a write-back joins on those (or
    on your ``row_key``), never on positions in a pulled list.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a whole number of at least 1, got {size!r}")
    # Rows for the same invitee at the same start go to one chunk (the first one's), so the batch
    # that books it sets the repeats aside as duplicates; chunks running at once never book it twice.
    chunks: list[list[Any]] = []
    home: dict[tuple[str, Any], int] = {}
    for row in rows:
        key = _same_booking(row)
        if key is not None and key in home:
            chunks[home[key]].append(row)
            continue
        if not chunks or len(chunks[-1]) >= size:
            chunks.append([])
        if key is not None:
            home[key] = len(chunks) - 1
        chunks[-1].append(row)
    return chunks


def _same_booking(row: Any) -> tuple[str, Any] | None:
    """(invitee, start instant) of a raw row, as prepare_bookings compares them; ``None`` if unreadable."""
    from airflow_provider_care360._responses import parse_instant

    if not isinstance(row, Mapping):
        return None
    email = row.get("invitee_email", row.get("email"))
    if not isinstance(email, str):
        return None
    start = row.get("start_time")
    instant = parse_instant(start)
    return email.strip().casefold(), instant if instant is not None else start


def prepare_indexed(
    rows: Iterable[Any],
    *,
    fixed: Mapping[str, Any] | None = None,
    record_email: str = "masked",
    require_future: bool = True,
) -> tuple[list[tuple[int, dict[str, Any]]], list[dict[str, Any]]]:
    """
    :func:`prepare_bookings`, keeping each good row's index: ``([(index, kwargs), ...], rejected)``.
    ``require_future=False`` leaves a past start to the caller (the batch operator's retry may first
    have to look for an earlier try's booking of it).

    :param rows: mappings with the keys of :data:`BOOKING_FIELDS` (``email`` is accepted for
        ``invitee_email``, not both).
    :param fixed: the booking arguments the task sets in ``partial()`` (e.g. ``event_type_id``,
        ``location``): checked with each row, and not allowed in a row as well (Airflow would refuse
        the row).
    :param record_email: how the set-aside records carry the email: ``"masked"`` (default) or
        ``"raw"``, as the operator's ``record_email``. A row's ``row_key`` is carried as it is.
    :return: ``(bookings, rejected)``: a list of keyword arguments, one per good row, and a list
        of outcome records, one per row set aside, each with ``outcome: "rejected"``, the reason in
        ``message`` (personal data masked) and ``row``, the row's index in ``rows``. A row that
        repeats an earlier good row (the same invitee, its email compared case-insensitively, at the
        same start instant, whatever the zone it is written in) is set aside with
        ``outcome: "duplicate"`` and ``duplicate_of``, the index of the row that books it: mapped
        tasks never book one appointment twice.
    """
    from airflow_provider_care360.exceptions import Care360ValidationError

    if record_email not in RECORD_EMAIL_MODES:
        raise ValueError(f"record_email must be one of {', '.join(RECORD_EMAIL_MODES)}, got {record_email!r}")
    raw = record_email == "raw"
    fixed = dict(fixed or {})
    unknown_fixed = set(fixed) - set(BOOKING_FIELDS)
    if unknown_fixed:
        raise ValueError(f"fixed: {', '.join(sorted(unknown_fixed))} are not booking arguments")
    bookings: list[tuple[int, dict[str, Any]]] = []
    rejected: list[dict[str, Any]] = []
    first_of: dict[tuple[str, str], int] = {}  # (invitee, start instant) -> the row that books it
    allowed = ", ".join((*BOOKING_FIELDS, "email"))
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            rejected.append(
                _rejected(index, row, f"a {type(row).__name__} is not a row; allowed: a mapping", raw)
            )
            continue
        if "email" in row and "invitee_email" in row:
            rejected.append(
                _rejected(index, row, "both email and invitee_email are given; allowed: one", raw)
            )
            continue
        kwargs = {("invitee_email" if key == "email" else key): value for key, value in row.items()}
        unknown = sorted(str(k) for k in kwargs if k not in BOOKING_FIELDS)
        twice = sorted(k for k in kwargs if k in fixed)
        if unknown or twice:
            reasons = []
            if unknown:
                reasons.append(f"unknown key(s) {', '.join(unknown)}; allowed: {allowed}")
            if twice:
                reasons.append(f"{', '.join(twice)} also set for every row by the task; allowed: one place")
            rejected.append(_rejected(index, row, "; ".join(reasons), raw))
            continue
        try:
            payload = payload_of({**fixed, **kwargs}, require_future=require_future)
        except Care360ValidationError as exc:
            rejected.append(_rejected(index, row, "; ".join(exc.problems), raw))
            continue
        same = (payload["email"].casefold(), payload["startTime"])
        if same in first_of:
            record = _set_aside(
                index,
                row,
                "duplicate",
                f"Row {index} repeats row {first_of[same]} (the same invitee at the same start): it is "
                f"booked once, through row {first_of[same]}.",
                raw,
            )
            record["duplicate_of"] = first_of[same]
            rejected.append(record)
            continue
        first_of[same] = index
        bookings.append((index, kwargs))
    return bookings, rejected
