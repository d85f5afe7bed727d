"""
A pytest plugin for testing your DAGs against the Care360 simulator.

Enable it with one line in your ``conftest.py`` (or the test module)::

    pytest_plugins = ["airflow_provider_care360.testing.pytest_plugin"]

or from the command line: ``pytest -p airflow_provider_care360.testing.pytest_plugin``. It needs
pytest, which the provider does not install for you.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from airflow_provider_care360.testing.server import Care360Simulator

__all__ = ["care360_simulator"]


@pytest.fixture
def care360_simulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[Care360Simulator]:
    """
    A running simulator for one test, and the ``care360_default`` connection pointing at it.

    It listens on a free loopback port with a fresh API key; ``AIRFLOW_CONN_CARE360_DEFAULT`` is set
    for the test and removed after it, and the simulator is stopped. Change its behaviour through
    its attributes (``rate_limit``, ``one_on_one``, ...) or :meth:`Care360Simulator.inject`, and
    check ``bookings``, ``appointments`` and ``requests`` afterwards.
    """
    with Care360Simulator(api_key="care360-test-" + secrets.token_hex(8)) as simulator:
        for name, value in simulator.airflow_connection_env().items():
            monkeypatch.setenv(name, value)
        yield simulator
