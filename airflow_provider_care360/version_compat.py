"""
Which Airflow this is, and the oldest one the provider runs on.

Kept in the provider, as Airflow's own providers do (``common.compat``'s copy is there to be copied,
not imported). Imported by the modules that use Airflow, never by the simulator.
"""

from __future__ import annotations

__all__ = ["AIRFLOW_V_3_0_PLUS", "AIRFLOW_V_3_2_PLUS", "AIRFLOW_V_3_3_PLUS", "MIN_AIRFLOW_VERSION"]

#: The oldest Airflow the provider supports (and is tested on).
MIN_AIRFLOW_VERSION = "2.11.0"


def airflow_version_tuple(version: str | None = None) -> tuple[int, int, int]:
    """``(major, minor, micro)`` of the running Airflow, or of ``version``; pre-releases count as it."""
    from packaging.version import Version

    if version is None:
        from airflow import __version__

        version = str(__version__)
    parsed = Version(version)
    return parsed.major, parsed.minor, parsed.micro


def require_airflow(version: str | None = None) -> None:
    """Raise ``RuntimeError`` on an Airflow older than :data:`MIN_AIRFLOW_VERSION`."""
    if airflow_version_tuple(version) < airflow_version_tuple(MIN_AIRFLOW_VERSION):
        from airflow_provider_care360 import __version__

        raise RuntimeError(
            f"The package airflow-provider-care360 {__version__} needs Apache Airflow "
            f"{MIN_AIRFLOW_VERSION}+, found {version or airflow_version_tuple()}."
        )


require_airflow()
AIRFLOW_V_3_0_PLUS = airflow_version_tuple() >= (3, 0, 0)
AIRFLOW_V_3_2_PLUS = airflow_version_tuple() >= (3, 2, 0)
AIRFLOW_V_3_3_PLUS = airflow_version_tuple() >= (3, 3, 0)
