"""Apache Airflow provider for booking Care360 appointments."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "get_provider_info"]


def get_provider_info() -> dict[str, Any]:
    """Describe this provider to Airflow's ``ProvidersManager`` (``apache_airflow_provider`` entry point)."""
    return {
        "package-name": "airflow-provider-care360",
        "name": "Care360",
        "description": "Book Care360 appointments from Airflow pipelines.",
        "versions": [__version__],
        "connection-types": [
            {
                "connection-type": "care360",
                "hook-class-name": "airflow_provider_care360.hooks.care360.Care360Hook",
            }
        ],
    }
