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
                "hook-name": "Care360",
                # Airflow >= 3.2 builds the connection form from these two entries without
                # importing the hook; older versions ask the hook (see Care360Hook).
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login", "extra"],
                    "relabeling": {"password": "API Key", "host": "Base URL override"},
                    "placeholders": {
                        "password": "the organisation's Care360 API key",
                        "host": "optional, e.g. http://127.0.0.1:8360 for the local simulator",
                        "timeout": "30",
                    },
                },
                "conn-fields": {
                    "environment": {
                        "label": "Environment",
                        "schema": {
                            "type": "string",
                            "enum": ["production", "staging"],
                            "default": "production",
                        },
                        "description": "The Care360 environment; ignored when a base URL override is set.",
                    },
                    "timeout": {
                        "label": "Timeout (seconds)",
                        "schema": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 600},
                        "description": "Optional. Connect and read timeout per request (default 10 / 30 s).",
                    },
                    "allow_insecure_http": {
                        "label": "Allow plain HTTP",
                        "schema": {"type": ["boolean", "null"], "default": False},
                        "description": "Send the key over http:// to a non-loopback URL (off by default).",
                    },
                },
            }
        ],
    }
