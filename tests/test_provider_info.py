"""Registration with Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

import os
import subprocess
from importlib.metadata import entry_points
from typing import Any

import pytest

from airflow_provider_care360 import __version__, get_provider_info
from support import airflow_cli


def test_get_provider_info_describes_the_connection_type() -> None:
    info = get_provider_info()
    assert info["package-name"] == "airflow-provider-care360"
    assert info["versions"] == [__version__]
    assert {"name", "description"} <= set(info)
    [conn_type] = info["connection-types"]
    assert conn_type["connection-type"] == "care360"
    assert conn_type["hook-class-name"] == "airflow_provider_care360.hooks.care360.Care360Hook"
    assert conn_type["hook-name"] == "Care360"
    assert set(conn_type["conn-fields"]) == {"environment", "timeout", "allow_insecure_http"}


def test_entry_point_points_at_get_provider_info() -> None:
    [ep] = [
        e
        for e in entry_points(group="apache_airflow_provider")
        if e.value.startswith("airflow_provider_care360")
    ]
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


@pytest.mark.integration  # a subprocess
def test_airflow_providers_list_shows_it() -> None:
    out = subprocess.run(
        [airflow_cli(), "providers", "list", "--output", "plain"],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ.copy(),
    )
    assert "airflow-provider-care360" in out.stdout


def _fresh_manager() -> Any:
    from airflow.providers_manager import ProvidersManager

    ProvidersManager._initialized = False  # type: ignore[attr-defined]
    ProvidersManager._instance = None  # type: ignore[attr-defined]
    return ProvidersManager()


def test_connection_form_fields_for_the_ui() -> None:
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manager = _fresh_manager()
        widgets = manager.connection_form_widgets
        behaviour = manager.field_behaviours["care360"]
        manager.hooks["care360"]  # importing the hook must not warn about the legacy form either
    legacy = [w for w in caught if "care360" in str(w.message).lower() or "Care360Hook" in str(w.message)]
    assert legacy == []

    from airflow_provider_care360.version_compat import AIRFLOW_V_3_0_PLUS, AIRFLOW_V_3_2_PLUS

    env = widgets["extra__care360__environment"].field
    if AIRFLOW_V_3_2_PLUS:  # declared in get_provider_info(): a JSON-schema dropdown
        assert env["schema"]["enum"] == ["production", "staging"] and env["value"] == "production"
        assert env["schema"]["title"] == "Environment"
    else:  # the FAB form, from Care360Hook.get_connection_form_widgets()
        from wtforms import BooleanField, StringField

        assert env.field_class is StringField and env.kwargs["default"] == "production"
        assert str(env.args[0]) == "Environment"
        assert widgets["extra__care360__allow_insecure_http"].field.field_class is BooleanField
    assert behaviour["relabeling"] == {"password": "API Key", "host": "Base URL override"}
    assert {"schema", "port", "login"} <= set(behaviour["hidden_fields"])
    # Airflow 2's form keeps Extra (its Test button needs the field's editor); Airflow 3's hides it.
    assert ("extra" in behaviour["hidden_fields"]) is AIRFLOW_V_3_0_PLUS
    assert "127.0.0.1:8360" in behaviour["placeholders"]["host"]


def test_the_legacy_form_widgets_match_the_declared_fields() -> None:
    pytest.importorskip("flask_appbuilder", reason="the legacy connection form is Airflow < 3.2's FAB UI")
    from airflow_provider_care360.hooks.care360 import Care360Hook

    [conn_type] = get_provider_info()["connection-types"]
    declared = conn_type["conn-fields"]
    widgets = Care360Hook.get_connection_form_widgets()
    assert set(widgets) == set(declared)
    for name, field in declared.items():
        widget = widgets[name]
        assert str(widget.args[0]) == field["label"], name
        assert widget.kwargs["description"].startswith(field["description"]), name
    env_default = widgets["environment"].kwargs["default"]
    assert env_default == declared["environment"]["schema"]["default"]
    assert all(value in widgets["environment"].kwargs["description"] for value in ("production", "staging"))


def test_an_airflow_older_than_supported_is_refused_at_import() -> None:
    from airflow_provider_care360.version_compat import MIN_AIRFLOW_VERSION, require_airflow

    require_airflow(MIN_AIRFLOW_VERSION)
    require_airflow("3.3.2")
    for old in ("2.10.5", "2.9.0", "1.10.15"):
        with pytest.raises(RuntimeError, match=r"needs Apache Airflow 2\.11\.0\+"):
            require_airflow(old)
