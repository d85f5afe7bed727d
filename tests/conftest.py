"""
Test set-up: a throwaway AIRFLOW_HOME, its SQLite DB migrated only when an integration test runs,
and a simulator per test.

Tests marked ``integration`` run DAGs, subprocesses or servers against a real Airflow; every other
test is marked ``unit`` and must need none of that (``make test-unit`` runs them with no metadata DB).

The environment is set here, at import, because Airflow reads its configuration when it is first
imported.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from support import TEST_DAGS, airflow_cli

AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="care360-airflow-home-"))

for _name in [n for n in os.environ if n.startswith(("AIRFLOW_CONN_", "AIRFLOW__"))]:
    del os.environ[_name]
os.environ.update(
    {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(TEST_DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test not marked ``integration`` is a ``unit`` test: ``make test-unit`` runs those."""
    for item in items:
        if item.get_closest_marker("integration") is None:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session", autouse=True)
def _airflow_home() -> Any:
    """Delete the throwaway home when the session ends."""
    yield AIRFLOW_HOME
    shutil.rmtree(AIRFLOW_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Migrate the throwaway metadata DB, once per session, the first time a test needs it."""
    subprocess.run([airflow_cli(), "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())
    return AIRFLOW_HOME


@pytest.fixture(autouse=True)
def _metadata_db_for_integration_tests(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("integration") is not None:
        request.getfixturevalue("airflow_db")


@pytest.fixture
def api_key() -> str:
    # Distinctive, so a scan of logs and XCom can find any leak.
    return "c360-SECRET-" + secrets.token_hex(12)


@pytest.fixture
def simulator(api_key: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A running simulator with ``care360_default`` pointing at it."""
    from airflow_provider_care360.testing import Care360Simulator

    with Care360Simulator(api_key=api_key) as sim:
        for name, value in sim.airflow_connection_env().items():
            monkeypatch.setenv(name, value)
        yield sim
