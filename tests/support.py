"""Helpers for tests: future slots, running the test DAGs, reading XCom and rendered fields."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TEST_DAGS = ROOT / "tests" / "dags"
EXAMPLE_DAGS = ROOT / "example_dags"


def airflow_cli() -> str:
    """The ``airflow`` command of the interpreter running the tests."""
    import sys

    return str(Path(sys.executable).with_name("airflow"))


def next_slot(days: int = 1, offset_slots: int = 0) -> datetime:
    """A future half-hour slot (UTC), ``offset_slots`` half hours after ``days`` from now."""
    base = (datetime.now(UTC) + timedelta(days=days)).replace(minute=0, second=0, microsecond=0)
    return base + timedelta(minutes=30 * offset_slots)


def iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class DagRunResult:
    state: str
    tis: dict[tuple[str, int], Any]
    run_id: str

    def ti(self, task_id: str, map_index: int = -1) -> Any:
        return self.tis[(task_id, map_index)]


def get_test_dag(dag_id: str, folder: Path = TEST_DAGS) -> Any:
    """Parse the test DAG file afresh: ``dag.test()`` mutates the DAG it runs (params from conf)."""
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 2
        from airflow.models.dagbag import DagBag
    bag = DagBag(dag_folder=str(folder))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag(dag_id)


def run_dag(dag_id: str, conf: dict[str, Any] | None = None, folder: Path = TEST_DAGS) -> DagRunResult:
    """Run a test DAG to completion with ``dag.test()`` and return its task instances."""
    dr = get_test_dag(dag_id, folder).test(run_conf=conf)
    tis = {(ti.task_id, ti.map_index): ti for ti in dr.get_task_instances()}
    return DagRunResult(state=str(getattr(dr.state, "value", dr.state)), tis=tis, run_id=dr.run_id)


def state_of(ti: Any) -> str:
    return str(getattr(ti.state, "value", ti.state))


def _xcom_model() -> Any:
    try:
        from airflow.models.xcom import XComModel
    except ImportError:  # Airflow 2
        from airflow.models.xcom import XCom as XComModel
    return XComModel


def xcom_value(result: DagRunResult, task_id: str, map_index: int = -1, key: str = "return_value") -> Any:
    XComModel = _xcom_model()  # noqa: N806
    from airflow.utils.session import create_session

    ti = result.ti(task_id, map_index)
    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id=ti.dag_id, run_id=ti.run_id, task_id=task_id, map_index=map_index)
            .filter_by(key=key)
            .one()
        )
        if isinstance(row.value, (dict, list)):  # Airflow 2.11 hands back the decoded JSON
            return row.value
        return XComModel.deserialize_value(row)


def outcome_of(result: DagRunResult, task_id: str = "book", map_index: int = -1) -> Any:
    """A booking task's outcome record: its return value when it succeeded, else ``care360_outcome``."""
    from sqlalchemy.exc import NoResultFound

    try:
        return xcom_value(result, task_id, map_index)
    except NoResultFound:
        return xcom_value(result, task_id, map_index, key="care360_outcome")


def all_xcom_and_rendered_text(result: DagRunResult) -> str:
    """Every XCom value and rendered template field of a run, as one string."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.utils.session import create_session

    XComModel = _xcom_model()  # noqa: N806

    parts: list[str] = []
    with create_session() as session:
        for row in session.query(XComModel).filter_by(run_id=result.run_id):
            parts.append(repr(row.value))
        for row in session.query(RenderedTaskInstanceFields).filter_by(run_id=result.run_id):
            parts.append(repr(row.rendered_fields))
    return "\n".join(parts)


def AIRFLOW_LOGS() -> Path:  # noqa: N802
    """Where Airflow writes task log files in this test session."""
    import os

    return Path(os.environ["AIRFLOW_HOME"]) / "logs"


@dataclass
class Try:
    number: int
    start: datetime | None
    end: datetime | None
    retry_delay_override: float | None


def tries(result: DagRunResult, task_id: str = "book", map_index: int = -1) -> list[Try]:
    """Every try of a task instance, oldest first: the archived ones and the final one."""
    from airflow.models.taskinstancehistory import TaskInstanceHistory
    from airflow.utils.session import create_session

    ti = result.ti(task_id, map_index)
    with create_session() as session:
        rows = (
            session.query(TaskInstanceHistory)
            .filter_by(dag_id=ti.dag_id, run_id=ti.run_id, task_id=task_id, map_index=map_index)
            .order_by(TaskInstanceHistory.try_number)
            .all()
        )
        out = [
            Try(r.try_number, r.start_date, r.end_date, getattr(r, "retry_delay_override", None))
            for r in rows
        ]
    out.append(Try(ti.try_number, ti.start_date, ti.end_date, None))
    return out
