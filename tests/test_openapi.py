"""The OpenAPI document of the contract: shipped, served by the simulator, and obeyed by the hook."""

from __future__ import annotations

import json
import urllib.request
from datetime import datetime
from typing import Any

import jsonschema
import pytest
import requests

from airflow_provider_care360.hooks.care360 import Care360Hook
from airflow_provider_care360.testing import OPENAPI_PATH, Care360Simulator, openapi_document
from support import next_slot

DOCUMENT = openapi_document()
PATH = "/api/v1/calendar/appointments"


def _json_schema(node: Any) -> Any:
    """OpenAPI 3.0 schema to JSON Schema: ``nullable`` becomes a null type, refs point into $defs."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _json_schema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable"):
        out["type"] = [node["type"], "null"]
    if isinstance(out.get("$ref"), str):
        out["$ref"] = out["$ref"].replace("#/components/schemas/", "#/$defs/")
    return out


def validator(name: str) -> jsonschema.protocols.Validator:
    schema = {"$ref": f"#/$defs/{name}", "$defs": _json_schema(DOCUMENT["components"]["schemas"])}
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def test_the_document_names_the_four_endpoints_and_the_key_header() -> None:
    operations = {(path, method) for path, item in DOCUMENT["paths"].items() for method in item}
    assert operations == {
        ("/api/v1/calendar/appointments", "post"),
        ("/api/v1/calendar/appointments", "get"),
        ("/api/v1/calendar/appointments/cancel", "post"),
        ("/api/v1/calendar/provider-availability", "get"),
    }
    assert DOCUMENT["components"]["securitySchemes"]["apiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "cv-api-key",
    }
    jsonschema.Draft202012Validator.check_schema({"$defs": _json_schema(DOCUMENT["components"]["schemas"])})


def test_the_simulator_serves_the_shipped_document(simulator: Any) -> None:
    with urllib.request.urlopen(simulator.url + OPENAPI_PATH, timeout=5) as answer:
        assert json.loads(answer.read()) == DOCUMENT


def test_a_body_the_document_refuses_is_refused_by_it() -> None:
    # The validator itself can fail: an unknown field, a bad location, a missing email.
    check = validator("BookingRequest")
    good = {
        "eventTypeId": "e",
        "startTime": "2030-01-07T15:00:00Z",
        "email": "a@example.com",
        "timezone": "UTC",
        "location": "zoom_conference",
    }
    assert check.is_valid(good)
    for bad in (
        {**good, "extra": 1},
        {**good, "location": "phone"},
        {k: v for k, v in good.items() if k != "email"},
    ):
        assert not check.is_valid(bad)


@pytest.mark.parametrize("with_optional", [False, True])
def test_the_hooks_requests_validate_against_the_document(simulator: Any, with_optional: bool) -> None:
    start = next_slot(days=2)
    optional: dict[str, Any] = (
        {
            "first_name": "Jane",
            "last_name": "Doe",
            "tracking": {"utm_campaign": "spring", "utmSource": None, "salesforce_uuid": "0061x"},
        }
        if with_optional
        else {}
    )
    hook = Care360Hook()
    hook.schedule_appointment(
        event_type_id="85f13305-0647-4473-9e63-0a56af405f6f",
        start_time=start,
        email="jane.doe@example.com",
        timezone="America/New_York",
        location="zoom_conference",
        **optional,
    )
    hook.find_appointment_at(email="jane.doe@example.com", start_time=start)

    [post] = simulator.booking_requests
    errors = [e.message for e in validator("BookingRequest").iter_errors(post["body"])]
    assert errors == []
    assert post["key"] == "valid"
    assert {k.lower(): v for k, v in post["headers"].items()}["content-type"] == "application/json"

    [get] = simulator.lookup_requests
    parameters = {
        p["name"]: p for p in DOCUMENT["paths"]["/api/v1/calendar/appointments"]["get"]["parameters"]
    }
    assert set(get["query"]) <= set(parameters)
    for name, values in get["query"].items():
        [value] = values
        assert validator_for(parameters[name]["schema"]).is_valid(value), (name, value)
    assert get["key"] == "valid"


def validator_for(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def test_the_simulators_lookup_and_quota_answers_match_the_document() -> None:
    # Statuses the vendor leaves open and createdAt are in the Appointment schema; the quota's 429
    # sends only headers the document names.
    with Care360Simulator(api_key="k", quota=1, quota_window=600) as sim:
        headers = {"cv-api-key": "k", "Content-Type": "application/json"}
        body = {
            "eventTypeId": "e",
            "startTime": next_slot(days=2).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "email": "a@example.com",
            "timezone": "UTC",
            "location": "zoom_conference",
        }
        assert requests.post(sim.url + PATH, json=body, headers=headers, timeout=10).status_code == 200
        sim.add_appointment(email="a@example.com", start=next_slot(days=3), status="PENDING", is_deleted=True)
        refused = requests.post(sim.url + PATH, json=body, headers=headers, timeout=10)
        answer = requests.get(
            sim.url + PATH, params={"user_email": "a@example.com"}, headers=headers, timeout=10
        )
    assert [e.message for e in validator("AppointmentList").iter_errors(answer.json())] == []
    assert [a["status"] for a in answer.json()["data"]] == ["CONFIRMED", "PENDING"]
    for appointment in answer.json()["data"]:
        assert set(appointment) >= set(DOCUMENT["components"]["schemas"]["Appointment"]["properties"])
        datetime.fromisoformat(appointment["createdAt"])  # a real instant (format is not checked)
    documented = DOCUMENT["paths"][PATH]["post"]["responses"]["429"]["headers"]
    sent = {name for name in refused.headers if name.lower().startswith(("x-ratelimit", "retry-after"))}
    assert refused.status_code == 429 and sent == set(documented) - {"Retry-After"}
