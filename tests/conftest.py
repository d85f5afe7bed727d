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


#: Where tests write what a person may want to look at afterwards (the browser tests' screenshots).
TEST_OUTPUT = Path(
    os.environ.get("CARE360_TEST_OUTPUT") or Path(__file__).resolve().parents[1] / "test-output"
)

#: Debian's chromium and chromium-driver packages; a browser is never downloaded at run time.
CHROMIUM = os.environ.get("CARE360_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CARE360_CHROMEDRIVER", "/usr/bin/chromedriver")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test item, so fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def browser(request: pytest.FixtureRequest) -> Any:
    """A headless Chromium driven by Selenium, at a desktop size, with an English locale.

    Skipped where Chromium or its driver is not installed (``apt-get install chromium
    chromium-driver``), unless ``CARE360_BROWSER_TESTS=required`` (as in CI), where that fails.
    """
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        message = "the browser tests need Debian's chromium and chromium-driver: " + ", ".join(missing)
        if os.environ.get("CARE360_BROWSER_TESTS") == "required":
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--lang=en-US",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(15)
    try:
        yield driver
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:  # what the page showed when the test failed
            folder = TEST_OUTPUT / "screenshots" / request.node.name
            folder.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(folder / "failed.png"))
    finally:
        driver.quit()


@pytest.fixture
def screenshots(request: pytest.FixtureRequest) -> Path:
    """A folder for this test's screenshots, under the test output folder; kept after the run."""
    folder = TEST_OUTPUT / "screenshots" / request.node.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder
