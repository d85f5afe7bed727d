"""
`make airflow` for a newcomer: a real local Airflow with the provider, reachable, bookable, and gone
after Ctrl-C (SIGINT) with no process left behind; and, in that same Airflow, the Care360
connection form and example DAG 1's trigger form as a person sees them, in a headless Chromium.

One environment serves the whole module (it takes about half a minute to start). The last test
stops it with Ctrl-C and checks that nothing is left; the fixture stops it whatever happened before.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_care360.version_compat import AIRFLOW_V_3_3_PLUS

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not AIRFLOW_V_3_3_PLUS, reason="make airflow runs the latest supported release"),
]

ROOT = Path(__file__).resolve().parent.parent
SINGLE = "example_care360_single_booking"


def _call(url: str, token: str | None = None, method: str = "GET", body: Any = None) -> Any:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(
        urllib.request.Request(url, data, headers, method=method), timeout=30
    ) as answer:
        return json.loads(answer.read())


@dataclass
class LocalAirflow:
    """What `make airflow` printed, and the process it runs in."""

    proc: subprocess.Popen[bytes]
    log: Path
    url: str
    user: str
    password: str
    simulator: str
    ledger: str
    api_key: str
    children: list[Any]

    def token(self) -> str:
        login = {"username": self.user, "password": self.password}
        return str(_call(f"{self.url}/auth/token", None, "POST", login)["access_token"])

    def bookings(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.ledger, timeout=10) as answer:
            return list(json.loads(answer.read()))

    def ctrl_c(self) -> int:
        return _ctrl_c(self.proc)


def _ctrl_c(proc: subprocess.Popen[bytes]) -> int:
    """Send what Ctrl-C sends and wait for the exit; SIGKILL the group if it hangs."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGINT)
    try:
        return proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def local_airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAirflow]:
    import psutil

    folder = tmp_path_factory.mktemp("make-airflow")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_", "PYTEST_"))}
    env["CARE360_LOCAL_HOME"] = str(folder / "home")
    log = folder / "out.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "airflow_local.py"), "--port", "0"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )
    children: list[Any] = []
    try:
        deadline = time.monotonic() + 300
        while "Ctrl-C stops everything." not in (text := log.read_text()):
            assert proc.poll() is None, text
            assert time.monotonic() < deadline, text
            time.sleep(0.5)
        url = re.search(r"Airflow is up: (http://127\.0\.0\.1:\d+)", text)
        login = re.search(r"login: (\S+) / (\S+)", text)
        simulator = re.search(r"Care360 simulator: (http://127\.0\.0\.1:\d+)", text)
        ledger = re.search(r"its ledger: (http://127\.0\.0\.1:\d+/_simulator/bookings);", text)
        key_file = re.search(r"its API key is in (\S+)", text)
        assert url and login and simulator and ledger and key_file, text
        children = psutil.Process(proc.pid).children(recursive=True)
        yield LocalAirflow(
            proc=proc,
            log=log,
            url=url[1],
            user=login[1],
            password=login[2],
            simulator=simulator[1],
            ledger=ledger[1],
            api_key=Path(key_file[1]).read_text().strip(),
            children=children,
        )
    finally:
        # After a failed test too: Ctrl-C first, so the launcher stops the Airflow processes it
        # started in their own process groups; then whatever is left of them, by PID.
        _ctrl_c(proc)
        for child in psutil.wait_procs(children, timeout=10)[1]:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


def test_make_airflow_serves_the_connection_the_pool_and_a_booking(local_airflow: LocalAirflow) -> None:
    api = local_airflow.url
    assert len(local_airflow.children) >= 3  # API server, scheduler, DAG processor (and their workers)
    token = local_airflow.token()
    connection = _call(f"{api}/api/v2/connections/care360_default", token)
    assert connection["conn_type"] == "care360" and connection["host"] == local_airflow.simulator
    assert _call(f"{api}/api/v2/pools/care360", token)["slots"] == 4
    # What the UI's Test button sends for the stored connection: its fields, the key masked.
    ui_test = {"connection_id": "care360_default", "conn_type": "care360", "host": connection["host"]}
    tested = _call(f"{api}/api/v2/connections/test", token, "POST", {**ui_test, "port": 0, "password": "***"})
    assert tested == {
        "status": True,
        "message": f"Connected to Care360 at {connection['host']}; the API key was accepted.",
    }

    start = (datetime.now(UTC) + timedelta(days=3)).replace(hour=15, minute=0, second=0, microsecond=0)
    conf = {"start_time": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "email": "newcomer@example.com"}
    run = _call(f"{api}/api/v2/dags/{SINGLE}/dagRuns", token, "POST", {"logical_date": None, "conf": conf})
    assert _wait_for_run(local_airflow, run["dag_run_id"]) == "success"
    assert "newcomer@example.com" in [b["email"] for b in local_airflow.bookings()]


def _wait_for_run(local_airflow: LocalAirflow, run_id: str) -> str:
    run_url = f"{local_airflow.url}/api/v2/dags/{SINGLE}/dagRuns/{run_id}"
    deadline = time.monotonic() + 240
    while (state := _call(run_url, local_airflow.token())["state"]) not in ("success", "failed"):
        assert time.monotonic() < deadline, state
        time.sleep(1)
    return str(state)


# -- in a browser ---------------------------------------------------------------------------------


def _log_in(browser: Any, local_airflow: LocalAirflow) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(local_airflow.url)
    browser.find_element(By.NAME, "username").send_keys(local_airflow.user)
    browser.find_element(By.NAME, "password").send_keys(local_airflow.password + Keys.ENTER)
    browser.find_element(By.CSS_SELECTOR, "button[aria-label='Admin']")  # logged in: the navigation shows


def _wait(browser: Any, condition: Any, timeout: float = 30) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(condition)


def _click(browser: Any, element: Any) -> None:
    """Click once the element takes clicks (an accordion or a dialog may still be animating)."""
    from selenium.common.exceptions import ElementClickInterceptedException, ElementNotInteractableException
    from selenium.webdriver.support.ui import WebDriverWait

    def clicked(_: Any) -> bool:
        element.click()
        return True

    WebDriverWait(
        browser, 15, ignored_exceptions=(ElementClickInterceptedException, ElementNotInteractableException)
    ).until(clicked)


def _field(browser: Any, label: str) -> Any:
    """The form field (a Chakra field group) whose label reads ``label``."""
    from selenium.webdriver.common.by import By

    return browser.find_element(
        By.XPATH,
        f"//div[@role='dialog']//label[normalize-space(text())={json.dumps(label)}]/ancestor::div[@role='group'][1]",
    )


def _toast(browser: Any, title: str) -> str:
    """The whole text (title and message) of the toast whose title starts with ``title``."""
    from selenium.webdriver.common.by import By

    titled = f".//*[starts-with(normalize-space(), {json.dumps(title)})]"
    xpath = f"//*[@data-scope='toast'][@data-part='root'][{titled}]"

    def shown(b: Any) -> str | None:  # once the message is in too: the title can show a moment before it
        return next((t.text for t in b.find_elements(By.XPATH, xpath) if "\n" in t.text), None)

    return str(_wait(browser, shown))


def test_connection_form_in_a_browser(local_airflow: LocalAirflow, browser: Any, screenshots: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _log_in(browser, local_airflow)
    _click(browser, browser.find_element(By.CSS_SELECTOR, "button[aria-label='Admin']"))
    _click(browser, browser.find_element(By.XPATH, "//*[@role='menuitem'][normalize-space()='Connections']"))
    _click(browser, browser.find_element(By.XPATH, "//button[contains(., 'Add Connection')]"))
    browser.find_element(By.NAME, "connection_id").send_keys("care360_browser")
    kind = browser.find_element(By.CSS_SELECTOR, "[role=dialog] [role=combobox]")
    kind.click()
    kind.send_keys("Care360")
    browser.find_element(By.XPATH, "//*[@role='option'][normalize-space()='Care360']").click()

    # The standard fields, relabelled and trimmed as the provider declares.
    api_key = _field(browser, "API Key").find_element(By.TAG_NAME, "input")
    assert api_key.get_attribute("type") == "password"
    assert api_key.get_attribute("placeholder") == "the organisation's Care360 API key"
    base_url = _field(browser, "Base URL override").find_element(By.TAG_NAME, "input")
    assert "127.0.0.1:8360" in base_url.get_attribute("placeholder")
    labels = {tag.text.strip(" *\n") for tag in browser.find_elements(By.CSS_SELECTOR, "[role=dialog] label")}
    for hidden in ("Schema", "Login", "Port"):
        assert hidden not in labels, labels
    base_url.send_keys(local_airflow.simulator)
    api_key.send_keys(local_airflow.api_key)
    browser.save_screenshot(str(screenshots / "connection-form.png"))
    # The provider's own fields (the accordion shows one section at a time): the environment
    # dropdown and the timeout.
    browser.find_element(By.XPATH, "//button[contains(., 'Extra Fields')]").click()
    environment = _field(browser, "Environment").find_element(By.CSS_SELECTOR, "[role=combobox]")
    _click(browser, environment)
    options = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "[role=option]") if o.text]
    assert options == ["production", "staging"], options
    browser.find_element(By.XPATH, "//*[@role='option'][normalize-space()='staging']").click()
    timeout = _field(browser, "Timeout (seconds)").find_element(By.TAG_NAME, "input")
    assert timeout.get_attribute("name") == "element_timeout"
    assert timeout.get_attribute("role") == "spinbutton" or timeout.get_attribute("type") == "number"
    browser.save_screenshot(str(screenshots / "connection-form-extra-fields.png"))
    _click(browser, browser.find_element(By.XPATH, "//div[@role='dialog']//button[normalize-space()='Save']"))
    stored = _call(f"{local_airflow.url}/api/v2/connections/care360_browser", local_airflow.token())
    assert (stored["conn_type"], stored["host"]) == ("care360", local_airflow.simulator)
    assert json.loads(stored["extra"])["environment"] == "staging"

    # Airflow 3.3.2's Test button sends port 0 for a connection with none, which the API server
    # refuses as another destination (apache/airflow#73298): the README's workaround, port 0.
    _call(
        f"{local_airflow.url}/api/v2/connections/care360_browser?update_mask=port",
        local_airflow.token(),
        "PATCH",
        {"connection_id": "care360_browser", "conn_type": "care360", "port": 0},
    )
    browser.refresh()
    row = "//tr[.//*[normalize-space()='care360_browser']]"
    test_button = (By.XPATH, f"{row}//button[@aria-label='Test Connection']")
    _click(browser, browser.find_element(*test_button))
    success = _toast(browser, "Test Connection")
    accepted = f"Connected to Care360 at {local_airflow.simulator}; the API key was accepted."
    assert success.endswith(accepted), success
    browser.save_screenshot(str(screenshots / "test-succeeded.png"))

    # The same connection with a wrong key: the clear failure message.
    _click(browser, browser.find_element(By.XPATH, f"{row}//button[@aria-label='Edit Connection']"))
    key = _field(browser, "API Key").find_element(By.TAG_NAME, "input")
    key.send_keys(Keys.CONTROL, "a")
    key.send_keys("not-the-key")
    _click(browser, browser.find_element(By.XPATH, "//div[@role='dialog']//button[normalize-space()='Save']"))
    _wait(browser, lambda b: not b.find_elements(By.CSS_SELECTOR, "[role=dialog]"))
    _click(browser, browser.find_element(*test_button))
    failure = _toast(browser, "Test Connection Failed")
    assert failure.endswith(
        f"Care360 at {local_airflow.simulator} rejected the API key (401): check the connection's API Key."
    ), failure
    assert "not-the-key" not in failure
    browser.save_screenshot(str(screenshots / "test-failed.png"))


def test_trigger_form_books_in_a_browser(
    local_airflow: LocalAirflow, browser: Any, screenshots: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    start = (datetime.now(UTC) + timedelta(days=4)).replace(hour=16, minute=30, second=0, microsecond=0)
    _log_in(browser, local_airflow)
    browser.get(f"{local_airflow.url}/dags/{SINGLE}")
    browser.find_element(By.XPATH, "//button[normalize-space()='Trigger']").click()

    # The typed params as form fields: the start time is a date-time picker (UTC), the email a text field.
    _field(browser, "Start time").find_element(By.CSS_SELECTOR, "[data-testid='datetime-input']").click()
    picker = browser.find_element(By.CSS_SELECTOR, "[data-scope=popover][data-part=content][data-state=open]")
    day = picker.find_element(By.CSS_SELECTOR, "input[placeholder='YYYY/MM/DD']")
    day.send_keys(start.strftime("%Y/%m/%d"))
    clock = picker.find_element(By.CSS_SELECTOR, "input[placeholder='HH:mm']")
    clock.send_keys(Keys.CONTROL, "a")
    clock.send_keys(start.strftime("%H:%M"))
    email = browser.find_element(By.NAME, "element_email")
    email.click()  # closes the picker
    email.send_keys("browser@example.com")
    browser.find_element(By.NAME, "element_first_name").send_keys("Ada")
    assert start.strftime("%H:%M") in _field(browser, "Start time").text
    assert "zoom_conference" in _field(browser, "Location").text
    browser.save_screenshot(str(screenshots / "trigger-form.png"))
    browser.find_element(By.XPATH, "//div[@role='dialog']//button[normalize-space()='Trigger']").click()

    # The UI goes to the new run's page; its id is in the URL.
    _wait(browser, lambda b: "/runs/" in b.current_url)
    run_id = urllib.request.unquote(browser.current_url.rsplit("/runs/", 1)[1].split("/")[0])
    assert _wait_for_run(local_airflow, run_id) == "success"
    browser.refresh()
    _wait(browser, lambda b: "Success" in b.find_element(By.TAG_NAME, "body").text)
    browser.save_screenshot(str(screenshots / "run-succeeded.png"))
    booked = [b for b in local_airflow.bookings() if b["email"] == "browser@example.com"]
    assert len(booked) == 1, booked
    assert booked[0]["startTime"] == start.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert booked[0]["firstName"] == "Ada"


def test_ctrl_c_stops_everything(local_airflow: LocalAirflow) -> None:
    """Runs last in this module: the other tests share the environment."""
    import psutil

    returncode = local_airflow.ctrl_c()
    text = local_airflow.log.read_text()
    assert returncode == 0, text
    assert "Stopped: no process left." in text
    psutil.wait_procs(local_airflow.children, timeout=10)
    left = [c.pid for c in local_airflow.children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert left == []
