"""
Testing with the Care360 simulator: a real HTTP server on loopback that implements the documented
Care360 API, for the provider's tests and for your own DAG tests.

- :class:`Care360Simulator` (``testing.server``): the server, its ledger and its admin endpoints.
- :class:`Fault` (``testing.faults``): how to answer the next requests of one kind instead.
- ``testing.rules``: the contract's rules as pure functions; ``testing.ratelimit``: the limiter.
- ``testing.pytest_plugin``: the ``care360_simulator`` fixture
  (``pytest_plugins = ["airflow_provider_care360.testing.pytest_plugin"]``).
- ``care360-simulator`` / ``python -m airflow_provider_care360.testing``: the command line.

It imports nothing from Airflow, so it also runs where Airflow is not installed.
"""

from airflow_provider_care360.testing.cli import main
from airflow_provider_care360.testing.faults import FAULT_TARGETS, Fault
from airflow_provider_care360.testing.server import (
    ADMIN,
    ADMIN_TOKEN_HEADER,
    MAX_REQUEST_BYTES,
    OPENAPI_PATH,
    Care360Simulator,
    openapi_document,
)

__all__ = [
    "OPENAPI_PATH",
    "openapi_document",
    "ADMIN",
    "ADMIN_TOKEN_HEADER",
    "FAULT_TARGETS",
    "MAX_REQUEST_BYTES",
    "Care360Simulator",
    "Fault",
    "main",
]
