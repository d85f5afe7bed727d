"""
The connection form and Test Connection, as the real Airflow UI gets them.

Airflow 3: a real ``airflow api-server`` on loopback (throwaway home), read through the same endpoints
the UI calls (the browser tests of Airflow 3's UI run against `make airflow`, in test_make_airflow).
Airflow 2.11: the FAB connection form class the webserver renders, and the form itself, in a real
``airflow webserver`` and a headless Chromium.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_care360.testing import Care360Simulator
from support import airflow_cli

pytestmark = pytest.mark.integration

try:
    from airflow_provider_care360.version_compat import AIRFLOW_V_3_0_PLUS
except ImportError:  # pragma: no cover
    AIRFLOW_V_3_0_PLUS = False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _request(url: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def _serving(args: list[str], env: dict[str, str], health: str, timeout: float) -> Iterator[str]:
    """Run ``airflow <args> --port <free port>`` on loopback until ``health`` answers; stop its group."""
    port = _free_port()
    with tempfile.TemporaryFile() as out:  # a file, not a pipe: a chatty server never blocks on it
        proc = subprocess.Popen(
            [airflow_cli(), *args, "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    _request(url + health)
                    break
                except (urllib.error.URLError, ConnectionError):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        out.seek(0)
                        output = out.read().decode(errors="replace")[-2000:]
                        raise RuntimeError(f"airflow {args[0]} did not start: {output}") from None
                    time.sleep(0.5)
            yield url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="module")
def api_server(airflow_db: Path) -> Iterator[str]:
    if not AIRFLOW_V_3_0_PLUS:
        pytest.skip("the API server is Airflow 3's; Airflow 2 is covered by the FAB form test")
    env = {
        **os.environ,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        "AIRFLOW__API__WORKERS": "1",
    }
    with _serving(["api-server", "--host", "127.0.0.1"], env, "/api/v2/monitor/health", 120) as url:
        yield url


def test_ui_hook_metadata_has_the_care360_form(api_server: str) -> None:
    metas = _request(api_server + "/ui/connections/hook_meta")
    [meta] = [m for m in metas if m["connection_type"] == "care360"]
    assert meta["hook_name"] == "Care360"
    standard = meta["standard_fields"]
    assert standard["password"]["title"] == "API Key" and standard["password"]["hidden"] is False
    assert standard["host"]["title"] == "Base URL override"
    assert "127.0.0.1:8360" in standard["host"]["placeholder"]
    for hidden in ("login", "port"):
        assert standard[hidden]["hidden"] is True
    extra = meta["extra_fields"]
    assert extra["environment"]["schema"]["enum"] == ["production", "staging"]
    assert extra["environment"]["value"] == "production"
    assert extra["timeout"]["schema"]["title"] == "Timeout (seconds)"


def test_test_connection_through_the_api_server(api_server: str) -> None:
    with Care360Simulator(api_key="ui-test-key-123") as sim:
        body = {"connection_id": "care360_ui", "conn_type": "care360", "host": sim.url}
        ok = _request(api_server + "/api/v2/connections/test", {**body, "password": "ui-test-key-123"})
        bad = _request(api_server + "/api/v2/connections/test", {**body, "password": "wrong-key-456"})
        assert sim.bookings == []
    assert ok["status"] is True, ok
    assert "accepted" in ok["message"]
    assert bad["status"] is False
    assert "rejected the API key" in bad["message"] and "wrong-key-456" not in bad["message"]


@pytest.mark.skipif(AIRFLOW_V_3_0_PLUS, reason="Airflow 3 has no FAB form; the API server tests cover it")
def test_fab_connection_form_offers_the_same_fields() -> None:
    from airflow.www.app import create_app
    from airflow.www.forms import create_connection_form_class

    app = create_app(testing=True)
    with app.test_request_context():
        form = create_connection_form_class()()
        fields = {field.name: field for field in form}
    assert str(fields["extra__care360__environment"].label.text) == "Environment"
    assert fields["extra__care360__environment"].default == "production"
    assert "extra__care360__timeout" in fields and "extra__care360__allow_insecure_http" in fields
    assert "care360" in dict(fields["conn_type"].choices)


@pytest.fixture(scope="module")
def webserver(airflow_db: Path) -> Iterator[tuple[str, str, str]]:
    """A real Airflow 2 webserver on loopback, with a FAB admin: ``(url, user, password)``."""
    if AIRFLOW_V_3_0_PLUS:
        pytest.skip("the FAB webserver is Airflow 2's; Airflow 3's UI is tested against make airflow")
    import secrets

    user, password = "admin", secrets.token_urlsafe(12)
    env = {
        **os.environ,
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        "AIRFLOW__WEBSERVER__WORKERS": "1",
        "AIRFLOW__WEBSERVER__SECRET_KEY": secrets.token_hex(16),
    }
    subprocess.run(
        [airflow_cli(), "users", "create", "-u", user, "-p", password, "-r", "Admin"]
        + ["-f", "Ada", "-l", "Admin", "-e", "admin@example.com"],
        env=env,
        check=True,
        capture_output=True,
    )
    with _serving(["webserver", "--hostname", "127.0.0.1"], env, "/health", 180) as url:
        yield url, user, password


def _alert(browser: Any) -> str:
    """The text of the flash-style alert the Airflow 2 form shows, once it shows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(b: Any) -> str | None:
        return next(
            (a.text for a in b.find_elements(By.CSS_SELECTOR, ".alert") if a.is_displayed() and a.text), None
        )

    return str(WebDriverWait(browser, 30).until(shown))


def test_fab_connection_form_in_a_browser(
    webserver: tuple[str, str, str], browser: Any, screenshots: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    url, user, password = webserver
    browser.get(url + "/login/")
    browser.find_element(By.NAME, "username").send_keys(user)
    browser.find_element(By.NAME, "password").send_keys(password + Keys.ENTER)
    with Care360Simulator(api_key="fab-form-key-123") as sim:
        browser.find_element(By.LINK_TEXT, "Admin").click()
        browser.find_element(By.LINK_TEXT, "Connections").click()
        browser.find_element(By.CSS_SELECTOR, "a[href*='/connection/add']").click()
        # The type through its select2 dropdown, as a person picks it.
        browser.find_element(By.CSS_SELECTOR, ".select2-container").click()
        search = browser.switch_to.active_element
        search.send_keys("Care360")
        search.send_keys(Keys.ENTER)
        assert Select(browser.find_element(By.ID, "conn_type")).first_selected_option.text == "Care360"

        def label(field_id: str) -> str:
            return str(browser.find_element(By.CSS_SELECTOR, f"label[for='{field_id}']").text).strip(" *")

        api_key = browser.find_element(By.ID, "password")
        assert (label("password"), api_key.get_attribute("type")) == ("API Key", "password")
        assert api_key.get_attribute("placeholder") == "the organisation's Care360 API key"
        host = browser.find_element(By.ID, "host")
        assert label("host") == "Base URL override" and "127.0.0.1:8360" in host.get_attribute("placeholder")
        environment = browser.find_element(By.ID, "extra__care360__environment")
        assert label("extra__care360__environment") == "Environment"
        assert environment.get_attribute("value") == "production"  # Airflow 2's form has no dropdown
        assert "One of: production, staging." in environment.find_element(By.XPATH, "..").text
        assert label("extra__care360__timeout") == "Timeout (seconds)"
        for hidden in ("schema", "login", "port"):
            assert not browser.find_element(By.ID, hidden).is_displayed(), hidden

        browser.find_element(By.ID, "conn_id").send_keys("care360_browser")
        host.send_keys(sim.url)
        api_key.send_keys(sim.api_key)
        browser.save_screenshot(str(screenshots / "connection-form.png"))
        browser.find_element(By.ID, "test-connection").click()
        assert _alert(browser) == f"Connected to Care360 at {sim.url}; the API key was accepted."
        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(str(screenshots / "test-succeeded.png"))
        browser.find_element(By.XPATH, "//form[@id='model_form']//button[@type='submit']").click()
        browser.find_element(By.XPATH, "//*[contains(@class, 'alert')][contains(., 'Added Row')]")

        # Reopened for editing (the page loads on a Care360 connection), with a wrong key.
        browser.get(url + "/connection/list/")
        browser.find_element(
            By.XPATH, "//tr[.//td[normalize-space()='care360_browser']]//a[contains(@href, '/edit/')]"
        ).click()
        key = browser.find_element(By.ID, "password")
        key.clear()
        key.send_keys("not-the-key")
        browser.find_element(By.ID, "test-connection").click()
        failure = _alert(browser)
        assert failure == f"Care360 at {sim.url} rejected the API key (401): check the connection's API Key."
        browser.execute_script("window.scrollTo(0, 0)")  # the alert shows above the form
        browser.save_screenshot(str(screenshots / "test-failed.png"))
        assert sim.bookings == []
