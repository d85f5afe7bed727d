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
    its attributes (``rate_limit``, ``quota``, ``one_on_one``, ``lookup_lag``, ``latency``, ...) or
    :meth:`Care360Simulator.inject` (``Fault(504, apply_after=2)`` for a backend that books after its
    gateway answered), and check ``bookings``, ``appointments`` and ``requests`` afterwards
    (:meth:`Care360Simulator.wait_pending` waits for late applications).
    """
    with Care360Simulator(api_key="care360-test-" + secrets.token_hex(8)) as simulator:
        for name, value in simulator.airflow_connection_env().items():
            monkeypatch.setenv(name, value)
        yield simulator
