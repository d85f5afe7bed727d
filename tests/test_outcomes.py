"""The outcome record and the write-back summary: pure functions."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from airflow_provider_care360.outcomes import outcome_record, summarize_outcomes


def record(index: int, outcome: str | None, **kw: object) -> dict[str, object]:
    return outcome_record(outcome=outcome, map_index=index, email=f"r{index}@example.com", **kw)  # type: ignore[arg-type]


def test_a_record_has_the_documented_fields_and_plain_values() -> None:
    rec = outcome_record(outcome="booked", start_time=datetime(2026, 12, 1, 15, tzinfo=UTC))
    assert set(rec) >= {
        "outcome",
        "http_status",
        "message",
        "event_type_id",
        "start_time",
        "email",
        "response",
        "appointment",
    }
    assert rec["start_time"] == "2026-12-01T15:00:00+00:00"
    with pytest.raises(ValueError, match="outcome"):
        outcome_record(outcome="maybe")


def test_records_are_matched_to_rows_by_map_index_not_position() -> None:
    rows = [{"invitee_email": f"r{i}@example.com"} for i in range(4)]
    # Out of order, with a gap (row 2 left no record), as xcom_pull may return them.
    records = [
        record(3, "rejected", http_status=400, message="Care360 rejected the booking (400)"),
        record(0, "booked"),
        record(1, "already_booked"),
    ]
    summary = summarize_outcomes(records, rows)

    assert summary["rows"] == 4
    assert summary["counts"] == {"booked": 1, "already_booked": 1, "rejected": 1, "no_record": 1}
    problems = {p["map_index"]: p for p in summary["problems"]}
    assert sorted(problems) == [2, 3]
    assert problems[3]["email"] == "r3@example.com" and problems[3]["http_status"] == 400
    assert problems[2]["email"] == "r***@e***.com" and problems[2]["outcome"] is None  # a raw row: masked
    assert "no outcome recorded" in problems[2]["reason"]


def test_a_single_record_or_nothing_is_accepted() -> None:
    # xcom_pull gives a single value when one task instance pushed, None when none did.
    assert summarize_outcomes(record(0, "booked"))["counts"] == {"booked": 1}
    assert summarize_outcomes(None) == {"rows": 0, "counts": {}, "problems": []}
    assert summarize_outcomes([None, record(0, "throttled")])["counts"] == {"throttled": 1}
