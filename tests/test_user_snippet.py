"""The README's "Testing your DAGs" test runs as written, in a project of its own, with the plugin."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import airflow_cli

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parent.parent / "README.md"


def _snippet() -> str:
    match = re.search(r"<!-- user-test -->\n```python\n(.*?)```", README.read_text(), re.S)
    assert match, "the README lost its user test"
    return match.group(1)


def test_the_readme_user_test_is_short_and_passes_in_a_fresh_project(tmp_path: Path) -> None:
    code = _snippet()
    assert len(code.splitlines()) < 15
    (tmp_path / "test_my_dag.py").write_text(code)
    home = tmp_path / "airflow-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_", "PYTEST_"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(tmp_path),  # dag.test() on Airflow 3 runs DAGs from here
    )
    subprocess.run([airflow_cli(), "db", "migrate"], env=env, check=True, capture_output=True)

    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_dag.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "1 passed" in run.stdout
    # The fixture cleaned up: no connection left behind for a later test to book through by mistake.
    assert "AIRFLOW_CONN_CARE360_DEFAULT" not in os.environ


def test_the_plugin_loads_from_the_command_line_too(tmp_path: Path) -> None:
    (tmp_path / "test_fixture.py").write_text(
        "import os\n"
        "def test_it(care360_simulator):\n"
        "    assert care360_simulator.url in os.environ['AIRFLOW_CONN_CARE360_DEFAULT']\n"
        "    assert care360_simulator.bookings == []\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        + ["-p", "airflow_provider_care360.testing.pytest_plugin", "test_fixture.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
