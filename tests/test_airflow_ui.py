"""
The connection form and Test Connection, as the real Airflow UI gets them.

Airflow 3: a real ``airflow api-server`` on loopback (throwaway home), read through the same endpoints
the UI calls. Airflow 2.11: the FAB connection form class the webserver renders.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
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


@pytest.fixture(scope="module")
def api_server() -> Iterator[str]:
    if not AIRFLOW_V_3_0_PLUS:
        pytest.skip("the API server is Airflow 3's; Airflow 2 is covered by the FAB form test")
    port = _free_port()
    env = {
        **os.environ,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        "AIRFLOW__API__WORKERS": "1",
    }
    proc = subprocess.Popen(
        [airflow_cli(), "api-server", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                _request(url + "/api/v2/monitor/health")
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                    raise RuntimeError("the API server did not start: " + err) from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


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
