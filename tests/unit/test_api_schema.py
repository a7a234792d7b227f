"""The generated CRD schemas are structural, fully described and free-form only where meant."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from kumulus.api.crdgen import crd_for, structural_schema
from kumulus.api.v1alpha1 import ALL_KINDS, KumulusResource

pytestmark = pytest.mark.unit

# The only places where the apiserver keeps unknown fields: free-form JSON documents.
FREE_FORM_PATHS = {
    "Flow": {"spec.inputSchema"},
    "Execution": {"spec.inputs", "spec.connection.inputs", "status.outputs"},
    "Schedule": {"spec.inputs"},
    "Connection": {"spec.values"},
    "Webhook": set(),
}

FORBIDDEN_KEYS = {
    "$ref",
    "$defs",
    "definitions",
    "anyOf",
    "oneOf",
    "allOf",
    "not",
    "title",
    "const",
}

KIND_IDS = [k.crd.kind for k in ALL_KINDS]


def root_schema(kind: type[KumulusResource]) -> dict[str, Any]:
    schema: dict[str, Any] = crd_for(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def walk(node: Mapping[str, Any], path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every schema node, with a dotted path ([] for list items, {} for map values)."""
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), Mapping):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), Mapping):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", ALL_KINDS, ids=KIND_IDS)
def test_every_field_has_a_description(kind: type[KumulusResource]) -> None:
    missing = []
    for path, node in walk(root_schema(kind), ""):
        for name, sub in node.get("properties", {}).items():
            if path == "" and name == "metadata":
                continue  # The apiserver owns metadata's schema.
            if not str(sub.get("description", "")).strip():
                missing.append(f"{path}.{name}" if path else name)
    assert missing == []


@pytest.mark.parametrize("kind", ALL_KINDS, ids=KIND_IDS)
def test_no_json_schema_leftovers(kind: type[KumulusResource]) -> None:
    leftovers = [
        (path, key)
        for path, node in walk(root_schema(kind), "")
        for key in node
        if key in FORBIDDEN_KEYS
    ]
    assert leftovers == []
    # Null is expressed with nullable, never as a type.
    assert all(node.get("type") != "null" for _, node in walk(root_schema(kind), ""))


@pytest.mark.parametrize("kind", ALL_KINDS, ids=KIND_IDS)
def test_preserve_unknown_fields_only_at_free_form_paths(kind: type[KumulusResource]) -> None:
    found = {
        path
        for path, node in walk(root_schema(kind), "")
        if node.get("x-kubernetes-preserve-unknown-fields")
    }
    assert found == FREE_FORM_PATHS[kind.crd.kind]
    for path in found:
        node = dict(walk(root_schema(kind), ""))[path]
        assert node["type"] == "object"
        assert "properties" not in node


@pytest.mark.parametrize("kind", ALL_KINDS, ids=KIND_IDS)
def test_schema_is_structural(kind: type[KumulusResource]) -> None:
    """Every node has a type (except int-or-string) and objects say what they hold."""
    for path, node in walk(root_schema(kind), ""):
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, path
            continue
        assert node.get("type") in {"object", "array", "string", "integer", "number", "boolean"}, (
            path
        )
        if node["type"] == "object" and path != "metadata":
            assert (
                "properties" in node
                or "additionalProperties" in node
                or node.get("x-kubernetes-preserve-unknown-fields")
            ), path
        if node["type"] == "array":
            assert isinstance(node.get("items"), Mapping), path
        if node["type"] == "integer":
            assert node.get("format") in {"int32", "int64"}, path
        if "default" in node:
            assert node["default"] is not None, path


@pytest.mark.parametrize("kind", ALL_KINDS, ids=KIND_IDS)
def test_status_root_is_strict(kind: type[KumulusResource]) -> None:
    status = root_schema(kind)["properties"]["status"]
    assert "x-kubernetes-preserve-unknown-fields" not in status
    assert status["properties"]["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    assert "observedGeneration" in status["properties"]


def test_optional_becomes_nullable_and_enum_default_is_emitted() -> None:
    spec = root_schema(ALL_KINDS[1])["properties"]["spec"]["properties"]
    assert spec["flowRef"]["nullable"] is True
    assert spec["flowRef"]["type"] == "object"
    assert spec["flowRef"]["required"] == ["name"]
    assert spec["type"] == {
        "default": "FLOW",
        "description": spec["type"]["description"],
        "enum": ["FLOW", "SCRIPT", "CONNECTION", "TASK"],
        "type": "string",
    }
    assert spec["desiredState"]["default"] == "Running"
    assert "default" not in spec["script"]  # None defaults are not emitted.


def test_typed_maps_datetimes_and_int_or_string() -> None:
    from kumulus.api.v1alpha1 import ExecutionStatus, PodTemplate, ScheduleStatus

    pod = structural_schema(PodTemplate)["properties"]
    assert pod["nodeSelector"]["additionalProperties"] == {"type": "string"}
    assert pod["resources"]["properties"]["limits"]["additionalProperties"] == {
        "x-kubernetes-int-or-string": True
    }
    assert pod["tolerations"]["items"]["properties"]["tolerationSeconds"]["format"] == "int64"
    status = structural_schema(ExecutionStatus)["properties"]
    assert status["startTime"]["type"] == "string"
    assert status["startTime"]["format"] == "date-time"
    next_times = structural_schema(ScheduleStatus)["properties"]["nextScheduleTimes"]
    assert next_times["items"] == {"format": "date-time", "type": "string"}


def test_exclusive_minimum_is_openapi_v3_boolean() -> None:
    from kumulus.api.v1alpha1 import RateLimit

    rps = structural_schema(RateLimit)["properties"]["requestsPerSecond"]
    assert rps["minimum"] == 0
    assert rps["exclusiveMinimum"] is True
    assert rps["type"] == "number"


def test_cel_rules_are_attached_where_they_span_fields() -> None:
    def rules(kind_index: int) -> list[str]:
        spec = root_schema(ALL_KINDS[kind_index])["properties"]["spec"]
        return [r["message"] for r in spec.get("x-kubernetes-validations", [])]

    assert "exactly one of spec.code or spec.codeFrom must be set" in rules(0)
    execution = rules(1)
    assert "spec.flowRef is required when spec.type is FLOW" in execution
    assert "spec.type is immutable" in execution
    assert "spec.desiredState cannot change once it is Cancelled" in execution
    assert rules(4) == [
        "a webhook needs auth (keySecretRef, bearerTokenSecretRef or hmacSecretRef) or "
        "auth.allowUnauthenticated: true"
    ]
    env = root_schema(ALL_KINDS[1])["properties"]["spec"]["properties"]["podTemplate"]
    value_from = env["properties"]["env"]["items"]["properties"]["valueFrom"]
    assert any("secretKeyRef" in r["rule"] for r in value_from["x-kubernetes-validations"])


@pytest.mark.parametrize("kind", ALL_KINDS, ids=KIND_IDS)
def test_crd_names_and_shape(kind: type[KumulusResource]) -> None:
    crd = crd_for(kind)
    spec = crd["spec"]
    names = spec["names"]
    assert crd["metadata"]["name"] == f"{names['plural']}.kumulus.dev"
    assert spec["scope"] == "Namespaced"
    assert names["kind"] == kind.crd.kind
    assert names["listKind"] == f"{kind.crd.kind}List"
    assert names["singular"] == kind.crd.kind.lower()
    assert names["categories"] == ["kumulus"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1"
    assert version["served"] is True
    assert version["storage"] is True
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[-1] in {"Age", "Message"}
    assert "Age" in columns


def test_short_names_and_printer_columns() -> None:
    short = {k.crd.kind: crd_for(k)["spec"]["names"]["shortNames"] for k in ALL_KINDS}
    assert short == {
        "Flow": ["kflow", "kfl"],
        "Execution": ["kex", "kexec"],
        "Schedule": ["ksched"],
        "Connection": ["kconn"],
        "Webhook": ["kwh"],
    }
    columns = {
        k.crd.kind: {
            c["name"]: c["jsonPath"]
            for c in crd_for(k)["spec"]["versions"][0]["additionalPrinterColumns"]
        }
        for k in ALL_KINDS
    }
    assert columns["Flow"]["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Execution"] == {
        "Type": ".spec.type",
        "Flow": ".spec.flowRef.name",
        "Phase": ".status.phase",
        "Age": ".metadata.creationTimestamp",
        "Duration": ".status.duration",
        "Message": ".status.message",
    }
    assert list(columns["Schedule"]) == [
        "Schedule",
        "TimeZone",
        "Suspend",
        "Ready",
        "Next",
        "Last",
        "Age",
    ]
    assert columns["Schedule"]["Next"] == ".status.nextScheduleTimes"
    assert list(columns["Connection"]) == ["Type", "Ready", "Reason", "Age"]
    assert list(columns["Webhook"]) == ["Flow", "Enabled", "URL", "Ready", "Age"]
