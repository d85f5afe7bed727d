"""Airflow names that moved between versions, imported where they are used (never at parse time)."""

from __future__ import annotations

try:  # Airflow 3: the standard provider
    from airflow.providers.standard.triggers.temporal import DateTimeTrigger
except ImportError:  # Airflow 2.11
    from airflow.triggers.temporal import DateTimeTrigger  # type: ignore[no-redef,import-not-found,unused-ignore]

__all__ = ["DateTimeTrigger"]
