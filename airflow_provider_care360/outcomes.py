"""
The outcome record of a booking, and the summary of a batch of them.

``ScheduleAppointmentOperator`` returns its record when a try succeeds (its XCom ``return_value``)
and pushes it under :data:`OUTCOME_KEY` when a try fails: one copy either way. A task downstream of a
mapped booking task (``trigger_rule="all_done"``) pulls every row's record with
:func:`pull_outcomes` and turns them into a summary with :func:`summarize_outcomes`, to write back
to a warehouse or a CRM.

Pure functions, no Airflow imports.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from airflow_provider_care360._pii import mask_email

__all__ = [
    "OUTCOMES",
    "OUTCOME_KEY",
    "SETTLED",
    "Outcome",
    "appointment_summary",
    "outcome_record",
    "pull_outcomes",
    "summarize_outcomes",
]

#: The XCom key of the outcome record.
OUTCOME_KEY = "care360_outcome"


class Outcome(enum.StrEnum):
    """What happened to a booking attempt, as far as the client can know."""

    BOOKED = "booked"
    ALREADY_BOOKED = "already_booked"
    #: The row repeats an earlier row of the same batch (same invitee, same start instant): it is
    #: booked once, through the row it repeats (``duplicate_of``).
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    THROTTLED = "throttled"
    NOT_SENT = "not_sent"
    AMBIGUOUS = "ambiguous"


#: Every value of a record's ``outcome``, in the order a summary lists them.
OUTCOMES: tuple[str, ...] = tuple(outcome.value for outcome in Outcome)

#: The outcomes that mean "the appointment exists, once".
SETTLED = frozenset({Outcome.BOOKED.value, Outcome.ALREADY_BOOKED.value})
#: The outcomes a summary counts but does not list as problems: settled, or booked through another row.
_NOT_A_PROBLEM = SETTLED | {Outcome.DUPLICATE.value}

_NO_RECORD = (
    "no outcome recorded: the task did not finish a try (it did not run, its upstream failed, "
    "or its worker was killed and it had no try left)"
)


def outcome_record(
    *,
    outcome: str | None = None,
    http_status: int | None = None,
    message: str = "",
    event_type_id: Any = None,
    start_time: Any = None,
    email: Any = None,
    response: dict[str, Any] | None = None,
    appointment: dict[str, Any] | None = None,
    row_key: Any = None,
    map_index: int = -1,
    try_number: int | None = None,
) -> dict[str, Any]:
    """
    One booking's outcome as a JSON-serialisable dict.

    :param outcome: one of :data:`OUTCOMES`.
    :param http_status: the status of the last answer that decided the outcome, or ``None``.
    :param message: what happened, in words; never the API key, never the invitee's name.
    :param start_time: the start as sent (UTC, ``YYYY-MM-DDTHH:MM:SSZ``), or the raw value if it was
        invalid.
    :param email: the row's invitee address as the record carries it (masked unless the task asked
        for ``record_email="raw"``).
    :param row_key: the caller's own id of the row, to join the record back to it.
    :param response: the API's JSON answer to the booking, when one was received.
    :param appointment: the matching appointment from the lookup, when known, as
        :func:`appointment_summary` reduces it.
    """
    if outcome is not None and outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
    return {
        "outcome": outcome,
        "http_status": http_status,
        "message": message,
        "event_type_id": _plain(event_type_id),
        "start_time": _plain(start_time),
        "email": _plain(email),
        "response": response,
        "appointment": appointment_summary(appointment),
        "row_key": _plain(row_key),
        "map_index": map_index,
        "try_number": try_number,
    }


#: What a record keeps of an appointment from the lookup: no meeting link, clinician or case.
APPOINTMENT_KEYS = ("id", "start", "end", "status")


def appointment_summary(appointment: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """An appointment from the lookup reduced to ``id``, ``start``, ``end`` and ``status``."""
    if not isinstance(appointment, Mapping):
        return None
    return {key: appointment.get(key) for key in APPOINTMENT_KEYS}


def pull_outcomes(ti: Any, task_ids: str) -> list[Mapping[str, Any]]:
    """
    Every outcome record of a booking task (all its map indexes), for a write-back task.

    A try that succeeded pushed its record once, as its return value; a try that failed pushed it
    under :data:`OUTCOME_KEY`. Airflow clears a task instance's XComs when a new try starts, so each
    map index holds one of the two.
    """
    records: list[Mapping[str, Any]] = []
    for key in (OUTCOME_KEY, "return_value"):
        records += [r for r in _as_list(ti.xcom_pull(task_ids=task_ids, key=key)) if "outcome" in r]
    return records


def _plain(value: Any) -> Any:
    """A JSON-friendly form of a raw field (a datetime becomes its ISO string)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    isoformat = getattr(value, "isoformat", None)
    return isoformat() if callable(isoformat) else str(value)


def _as_list(records: Any) -> list[Mapping[str, Any]]:
    """
    What ``xcom_pull`` gave: one record, a list or a lazy sequence of them, or ``None``; a batch
    task's ``care360_outcomes`` (a list per map index) is flattened.
    """
    if records is None:
        return []
    if isinstance(records, Mapping):
        return [records]
    out: list[Mapping[str, Any]] = []
    for item in records:
        if isinstance(item, Mapping):
            out.append(item)
        elif isinstance(item, (list, tuple)):
            out += [r for r in item if isinstance(r, Mapping)]
    return out


def _map_index(record: Mapping[str, Any]) -> int | None:
    """A batch row's task map index (``None`` for a row set aside before mapping)."""
    index = record.get("map_index")
    return index if isinstance(index, int) and index >= 0 and isinstance(record.get("row"), int) else None


def summarize_outcomes(
    records: Iterable[Mapping[str, Any] | None] | Mapping[str, Any] | None,
    rows: Sequence[Any] | None = None,
    rejected: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """
    Count a batch's outcomes and list every row that did not end ``booked`` or ``already_booked``
    (a ``duplicate`` row, booked through the row it repeats, is counted and not listed).

    Records are matched to rows by their ``map_index``, never by position (``xcom_pull`` across map
    indexes gives no promise about order or gaps). With ``rows`` (the list the booking task was
    mapped over), a row without a record is reported too, as ``outcome: None``.

    :param records: what ``ti.xcom_pull(task_ids=..., key=OUTCOME_KEY)`` returned.
    :param rows: the mapped-over list, to account for rows that left no record.
    :param rejected: the rows set aside before mapping (the second item ``prepare_bookings(...)`` returns).
    :return: ``{"rows": n, "counts": {outcome: n, ...}, "problems": [{...}, ...]}``; each problem has
        ``map_index`` (``None`` for a row set aside before mapping), ``row`` (its index in the raw
        rows, for those), ``row_key``, ``email`` (as the record carries it; masked for a row with no
        record), ``event_type_id``, ``start_time``, ``outcome``, ``http_status``
        and ``reason``.
    """
    by_index: dict[int, Mapping[str, Any]] = {}
    unindexed: list[Mapping[str, Any]] = []
    by_row: dict[tuple[Any, int], Mapping[str, Any]] = {}
    for item in _as_list(records):
        index, row = item.get("map_index"), item.get("row")
        if isinstance(row, int) and not isinstance(row, bool):
            # A batch task's row (or a row set aside before mapping): its own entry, by (task, row).
            by_row.setdefault((index, row), item)
        elif isinstance(index, int) and index >= 0 and index not in by_index:
            by_index[index] = item
        else:
            unindexed.append(item)
    unindexed += [by_row[key] for key in sorted(by_row, key=lambda k: (str(k[0]), k[1]))]
    entries: list[tuple[int | None, Mapping[str, Any] | None, Any]] = []
    if rows is not None:
        entries = [(i, by_index.pop(i, None), row) for i, row in enumerate(rows)]
    entries += [(i, found, None) for i, found in sorted(by_index.items())]
    entries += [(_map_index(found), found, None) for found in [*unindexed, *_as_list(rejected)]]

    counts: Counter[str] = Counter()
    problems: list[dict[str, Any]] = []
    for index, record, row in entries:
        outcome = record.get("outcome") if record else None
        counts[outcome or "no_record"] += 1
        if outcome in _NOT_A_PROBLEM:
            continue
        source: Mapping[str, Any] = {}
        if record is not None:
            source = record
        elif isinstance(row, Mapping):
            source = row
        problems.append(
            {
                "map_index": index,
                "row": source.get("row") if record else None,
                "row_key": source.get("row_key"),
                # A record carries the email as its task chose (masked by default); a raw row's is masked.
                "email": source.get("email")
                if record
                else mask_email(source.get("email", source.get("invitee_email"))),
                "event_type_id": source.get("event_type_id"),
                "start_time": source.get("start_time"),
                "outcome": outcome,
                "http_status": record.get("http_status") if record else None,
                "reason": (record.get("message") if record else None) or _NO_RECORD,
            }
        )
    ordered = {name: counts[name] for name in (*OUTCOMES, "no_record") if counts[name]}
    return {"rows": len(entries), "counts": ordered, "problems": problems}
