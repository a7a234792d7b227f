"""Unit tests of the node agent's environment building: $(VAR) expansion, refs, quantities."""

from __future__ import annotations

import base64
from decimal import Decimal

import pytest

from kumulus.devcluster.nodeagent.envbuild import (
    EnvError,
    ObjectRef,
    build_env,
    container_argv,
    expand,
    image_name,
    memory_limit_bytes,
    object_data,
    parse_quantity,
    referenced_objects,
    resolve_field_ref,
    resolve_resource_field_ref,
)

pytestmark = pytest.mark.unit

VARS = {"A": "alpha", "B": "beta", "EMPTY": ""}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "alpha"),
        ("x-$(A)-$(B)-y", "x-alpha-beta-y"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$$", "$"),
        ("$$$(A)", "$alpha"),
        ("$(A", "$(A"),
        ("$A", "$A"),
        ("cost: 5$", "cost: 5$"),
        ("$(EMPTY)x", "x"),
        ("", ""),
        ("$()", "$()"),
    ],
)
def test_expand_follows_kubernetes_rules(text: str, expected: str) -> None:
    assert expand(text, VARS.get) == expected


POD = {
    "metadata": {
        "name": "p1",
        "namespace": "ns1",
        "uid": "u-1",
        "labels": {"app": "demo"},
        "annotations": {"note": "hi"},
    },
    "spec": {"nodeName": "kumulus-dev", "serviceAccountName": "runner"},
    "status": {"podIP": "127.0.0.1"},
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("metadata.name", "p1"),
        ("metadata.namespace", "ns1"),
        ("metadata.uid", "u-1"),
        ("metadata.labels['app']", "demo"),
        ("metadata.labels['absent']", ""),
        ("metadata.annotations['note']", "hi"),
        ("spec.nodeName", "kumulus-dev"),
        ("spec.serviceAccountName", "runner"),
        ("status.podIP", "127.0.0.1"),
        ("status.hostIP", "127.0.0.1"),
    ],
)
def test_field_ref(path: str, expected: str) -> None:
    assert resolve_field_ref(POD, path) == expected


def test_unsupported_field_ref_is_an_error() -> None:
    with pytest.raises(EnvError):
        resolve_field_ref(POD, "spec.containers")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("64Mi", Decimal(64 * 2**20)),
        ("1Gi", Decimal(2**30)),
        ("100M", Decimal(100 * 10**6)),
        ("500m", Decimal("0.5")),
        ("2", Decimal(2)),
        ("1e3", Decimal(1000)),
        ("1.5Ki", Decimal(1536)),
    ],
)
def test_parse_quantity(text: str, expected: Decimal) -> None:
    assert parse_quantity(text) == expected


def test_parse_quantity_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_quantity("12XB")


def test_memory_limit_bytes() -> None:
    assert memory_limit_bytes({"resources": {"limits": {"memory": "32Mi"}}}) == 32 * 2**20
    assert memory_limit_bytes({"resources": {"requests": {"memory": "32Mi"}}}) is None
    assert memory_limit_bytes({}) is None


def test_resource_field_ref_uses_limit_divisor_and_node_fallback() -> None:
    container = {"resources": {"limits": {"memory": "64Mi", "cpu": "250m"}}}
    ref = {"resource": "limits.memory", "divisor": "1Mi"}
    assert resolve_resource_field_ref(container, ref, {}) == "64"
    assert resolve_resource_field_ref(container, {"resource": "limits.cpu"}, {}) == "1"
    assert (
        resolve_resource_field_ref(container, {"resource": "limits.cpu", "divisor": "1m"}, {})
        == "250"
    )
    assert resolve_resource_field_ref({}, {"resource": "limits.cpu"}, {"cpu": "2"}) == "2"


def test_object_data_decodes_secrets() -> None:
    secret = {"data": {"k": base64.b64encode(b"s3cret").decode()}}
    assert object_data("Secret", secret) == {"k": "s3cret"}
    assert object_data("ConfigMap", {"data": {"a": "1"}}) == {"a": "1"}


CONTAINER = {
    "name": "c",
    "image": "busybox:1.36",
    "envFrom": [
        {"configMapRef": {"name": "cm"}},
        {"secretRef": {"name": "sec"}, "prefix": "S_"},
        {"configMapRef": {"name": "gone", "optional": True}},
    ],
    "env": [
        {"name": "PLAIN", "value": "v-$(FROM_CM)"},
        {"name": "ESCAPED", "value": "$$(PLAIN)"},
        {"name": "REF", "value": "$(PLAIN)/$(LATER)"},
        {"name": "LATER", "value": "late"},
        {"name": "CMKEY", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "FROM_CM"}}},
        {"name": "SECKEY", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
        {
            "name": "OPTIONAL",
            "valueFrom": {"secretKeyRef": {"name": "sec", "key": "nope", "optional": True}},
        },
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
    ],
}
OBJECTS: dict[ObjectRef, dict[str, str] | None] = {
    ObjectRef("ConfigMap", "cm"): {"FROM_CM": "cmval", "bad key": "skipped"},
    ObjectRef("Secret", "sec"): {"password": "pw"},
    ObjectRef("ConfigMap", "gone"): None,
}


def test_build_env_combines_sources_in_kubernetes_order() -> None:
    env = build_env(POD, CONTAINER, OBJECTS, {"PATH": "/bin", "HOSTNAME": "p1"})
    assert env == {
        "PATH": "/bin",
        "HOSTNAME": "p1",
        "FROM_CM": "cmval",
        "S_password": "pw",
        "PLAIN": "v-cmval",
        "ESCAPED": "$(PLAIN)",
        "REF": "v-cmval/$(LATER)",
        "LATER": "late",
        "CMKEY": "cmval",
        "SECKEY": "pw",
        "POD_NAME": "p1",
        "APP": "demo",
    }


def test_build_env_never_injects_service_variables() -> None:
    env = build_env(POD, {"name": "c"}, {}, {"PATH": "/bin"})
    assert env == {"PATH": "/bin"}
    assert not any(key.startswith("KUBERNETES_") for key in env)


def test_build_env_missing_required_objects_are_errors() -> None:
    container = {
        "name": "c",
        "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}],
    }
    with pytest.raises(EnvError, match='configmap "cm" not found'):
        build_env(POD, container, {ObjectRef("ConfigMap", "cm"): None}, {})
    with pytest.raises(EnvError, match="couldn't find key k"):
        build_env(POD, container, {ObjectRef("ConfigMap", "cm"): {"other": "1"}}, {})
    from_missing = {"name": "c", "envFrom": [{"secretRef": {"name": "s"}}]}
    with pytest.raises(EnvError, match='secret "s" not found'):
        build_env(POD, from_missing, {ObjectRef("Secret", "s"): None}, {})


def test_referenced_objects() -> None:
    assert referenced_objects(CONTAINER) == {
        ObjectRef("ConfigMap", "cm"),
        ObjectRef("Secret", "sec"),
        ObjectRef("ConfigMap", "gone"),
    }


def test_container_argv_expands_and_uses_the_image_map() -> None:
    env = {"NAME": "world"}
    with_command = {"image": "ignored:1", "command": ["echo", "hi $(NAME)"], "args": ["$$(NAME)"]}
    assert container_argv(with_command, env, {}) == ["echo", "hi world", "$(NAME)"]
    mapped = {"image": "registry:5000/kumulus/runner:0.1", "args": ["--x"]}
    assert container_argv(mapped, env, {"registry:5000/kumulus/runner": ["kumulus-runner"]}) == [
        "kumulus-runner",
        "--x",
    ]
    assert container_argv({"image": "nginx:latest"}, env, {}) is None


@pytest.mark.parametrize(
    ("image", "name"),
    [
        ("busybox", "busybox"),
        ("busybox:1.36", "busybox"),
        ("localhost:5000/a/b:tag", "localhost:5000/a/b"),
        ("localhost:5000/a/b", "localhost:5000/a/b"),
        ("a/b@sha256:abc", "a/b"),
    ],
)
def test_image_name_strips_tag_and_digest(image: str, name: str) -> None:
    assert image_name(image) == name
