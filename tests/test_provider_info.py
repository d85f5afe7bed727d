"""Registration with Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

import os
import subprocess
from importlib.metadata import entry_points

from support import airflow_cli

from airflow_provider_care360 import __version__, get_provider_info


def test_get_provider_info_describes_the_connection_type() -> None:
    info = get_provider_info()
    assert info["package-name"] == "airflow-provider-care360"
    assert info["versions"] == [__version__]
    assert {"name", "description"} <= set(info)
    assert info["connection-types"] == [
        {
            "connection-type": "care360",
            "hook-class-name": "airflow_provider_care360.hooks.care360.Care360Hook",
        }
    ]


def test_entry_point_points_at_get_provider_info() -> None:
    [ep] = [e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("airflow_provider_care360")]
    assert ep.load() is get_provider_info


def test_providers_manager_sees_the_care360_connection_type() -> None:
    try:  # Airflow >= 3.2 moved hook discovery into the task SDK
        from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime as Manager
    except ImportError:
        from airflow.providers_manager import ProvidersManager as Manager  # type: ignore[assignment]

    manager = Manager()
    assert "airflow-provider-care360" in manager.providers
    hook_info = manager.hooks["care360"]
    assert hook_info is not None
    assert hook_info.hook_class_name == "airflow_provider_care360.hooks.care360.Care360Hook"
    assert hook_info.connection_id_attribute_name == "care360_conn_id"
    assert hook_info.hook_name == "Care360"


def test_airflow_providers_list_shows_it() -> None:
    out = subprocess.run(
        [airflow_cli(), "providers", "list", "--output", "plain"],
        capture_output=True, text=True, check=True, env=os.environ.copy(),
    )
    assert "airflow-provider-care360" in out.stdout
