"""
Test set-up: a throwaway AIRFLOW_HOME with a migrated SQLite DB, and a simulator per test.

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


@pytest.fixture(scope="session", autouse=True)
def airflow_db() -> Any:
    """Migrate the throwaway metadata DB once per session; delete the home afterwards."""
    subprocess.run([airflow_cli(), "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())
    yield AIRFLOW_HOME
    shutil.rmtree(AIRFLOW_HOME, ignore_errors=True)


@pytest.fixture
def api_key() -> str:
    # Distinctive, so a scan of logs and XCom can find any leak.
    return "c360-SECRET-" + secrets.token_hex(12)


@pytest.fixture
def simulator(api_key: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A running simulator with ``care360_default`` pointing at it."""
    from airflow_provider_care360.simulator import Care360Simulator

    with Care360Simulator(api_key=api_key) as sim:
        for name, value in sim.airflow_connection_env().items():
            monkeypatch.setenv(name, value)
        yield sim
