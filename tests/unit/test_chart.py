"""The Helm chart ``charts/kumulus``: ``helm lint --strict`` and ``helm template`` output.

Renders the chart with the pinned helm (built by ``make binaries``, found like the dev cluster
finds its binaries) for Kubernetes 1.36.3, with default and changed values, and checks what a
reviewer would: explicit commands, settings, least-privilege RBAC that matches config/rbac/,
the CRDs switch, and that values.schema.json rejects bad values.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from kumulus.devcluster.paths import bin_cache_dir, read_versions
from kumulus.domain import outputs
from kumulus.domain.settings import Settings
from kumulus.webhook.settings import WebhookSettings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kumulus"
RBAC = ROOT / "config" / "rbac"
KUBE_VERSION = "1.36.3"
RELEASE, NAMESPACE = "kumulus", "kumulus-system"

Doc = dict[str, Any]


def helm_binary() -> Path:
    """``$HELM``, else the pinned helm in the binary cache (``make binaries`` builds it)."""
    explicit = os.environ.get("HELM")
    path = (
        Path(explicit)
        if explicit
        else bin_cache_dir() / f"helm-{read_versions()['HELM_VERSION']}" / "helm"
    )
    if not os.access(path, os.X_OK):
        pytest.fail(f"no helm at {path}: run `make binaries` (or set HELM)")
    return path


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(helm_binary()), *args], capture_output=True, text=True, timeout=60, check=False
    )
    if check and proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def render(*sets: str, chart: Path = CHART, release: str = RELEASE) -> list[Doc]:
    """``helm template`` with ``--set`` values (``json:k=v`` for ``--set-json``); the documents."""
    return [d for d in yaml.safe_load_all(_template(sets, chart, release)) if d]


@functools.cache
def _template(sets: tuple[str, ...], chart: Path, release: str) -> str:
    """The rendered YAML (cached: the tests render the same values more than once)."""
    args = ["template", release, str(chart), "-n", NAMESPACE, "--kube-version", KUBE_VERSION]
    for s in sets:
        if s.startswith("json:"):
            args += ["--set-json", s.removeprefix("json:")]
        else:
            args += ["--set", s]
    return helm(*args).stdout


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, got {[d['metadata'] for d in found]}"
    return found[0]


def container(deployment: Doc) -> Doc:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    result: Doc = c
    return result


def env_of(c: Doc) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env") or [] if "value" in e}


@pytest.fixture(scope="module")
def default() -> list[Doc]:
    return render()


# --------------------------------------------------------------------------- lint


def test_helm_lint_strict_is_clean() -> None:
    proc = helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout


# --------------------------------------------------------------------------- operator


def test_default_render_has_the_expected_objects(default: list[Doc]) -> None:
    names = sorted(
        (d["kind"], d["metadata"]["name"])
        for d in default
        if d["kind"] != "CustomResourceDefinition"
    )
    assert names == sorted(
        [
            ("ServiceAccount", "kumulus-operator"),
            ("ServiceAccount", "kumulus-webhook"),
            ("ClusterRole", "kumulus-operator"),
            ("ClusterRoleBinding", "kumulus-operator"),
            ("ClusterRole", "kumulus-runner"),
            ("ClusterRole", "kumulus-connection-executor"),
            ("ClusterRoleBinding", "kumulus-connection-executor"),
            ("ClusterRole", "kumulus-webhook"),
            ("ClusterRoleBinding", "kumulus-webhook"),
            ("ClusterRole", "kumulus-webhook-secrets"),
            ("Deployment", "kumulus-operator"),
            ("Deployment", "kumulus-webhook"),
            ("Service", "kumulus-webhook"),
            ("Service", "kumulus-operator-metrics"),
            ("Service", "kumulus-webhook-metrics"),
        ]
    )
    for d in default:
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"):
            assert d["metadata"]["namespace"] == NAMESPACE, d["metadata"]


def test_operator_runs_kopf_with_an_explicit_command_and_a_liveness_probe(
    default: list[Doc],
) -> None:
    dep = one(default, "Deployment", "kumulus-operator")
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "kumulus-operator"
    c = container(dep)
    assert c["image"] == "ghcr.io/kumulus-dev/kumulus:0.1.0"  # appVersion by default
    assert c["command"] == [
        "kopf",
        "run",
        "--standalone",
        "--liveness=http://0.0.0.0:8080/healthz",
        "--all-namespaces",
        "-m",
        "kumulus.handlers",
    ]
    assert c["ports"] == [
        {"name": "liveness", "containerPort": 8080, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 8000, "protocol": "TCP"},
    ]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    assert c["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    # Pods select only their own component.
    assert dep["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"


def test_operator_env_parses_as_settings_with_the_documented_defaults(default: list[Doc]) -> None:
    env = env_of(container(one(default, "Deployment", "kumulus-operator")))
    kumulus_env = {k: v for k, v in env.items() if k.startswith("KUMULUS_")}
    # Every setting is given by the chart: nothing is left to a hidden default ...
    fields = {f"KUMULUS_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    assert set(kumulus_env) == fields
    # ... and with the defaults of values.yaml they are exactly Settings' own defaults,
    # except the runner's image, which follows the chart's appVersion and repository.
    settings = Settings.from_env(kumulus_env)
    assert settings.runner_image == "ghcr.io/kumulus-dev/kumulus-runner:0.1.0"
    assert settings.webhook_base_url == "http://kumulus-webhook.kumulus-system.svc"
    assert (settings.metrics_host, settings.metrics_port) == ("0.0.0.0", 8000)  # in a Pod
    chart_derived = {
        "runner_image": Settings().runner_image,
        "webhook_base_url": "",
        "metrics_host": Settings().metrics_host,
    }
    assert dataclasses.replace(settings, **chart_derived) == Settings()


def test_values_settings_keys_are_settings_fields() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    settings_keys = set(values["operator"]["settings"])
    assert settings_keys == set(
        schema["properties"]["operator"]["properties"]["settings"]["properties"]
    )
    chart_managed = {
        "runner_image",
        "runner_service_account",
        "runner_cluster_role",
        "manage_runner_rbac",
        "namespaces",
        "image_pull_policy",
        "connection_executor_inline",
        "webhook_base_url",
        "metrics_host",  # metrics.host
        "metrics_port",  # metrics.port / metrics.connectionExecutorPort
        "log_format",  # operator.logFormat
    }
    assert {snake_case(k) for k in settings_keys} | chart_managed == {
        f.name for f in dataclasses.fields(Settings)
    }, (
        "operator.settings in values.yaml/values.schema.json must list every Settings field "
        "the chart does not set itself"
    )


def snake_case(key: str) -> str:
    return "".join("_" + ch.lower() if ch.isupper() else ch for ch in key)


def test_changed_values_reach_the_operator() -> None:
    docs = render(
        "image.tag=1.2.3",
        "image.repository=registry.local/kumulus",
        "runner.image.repository=registry.local/runner",
        "runner.image.tag=9",
        "runner.image.pullPolicy=Always",
        "runner.manageRbac=false",
        "watchNamespaces={team-a,team-b}",
        "operator.settings.podStartDeadlineSeconds=45",
        "operator.settings.defaultTtlSeconds=3600",
        "operator.settings.outputLimitBytes=1048576",
        "json:operator.settings.requeueErrorSeconds=0.5",
        "operator.replicas=2",
        "operator.liveness.host=127.0.0.1",
        "operator.liveness.port=18080",
    )
    dep = one(docs, "Deployment", "kumulus-operator")
    assert dep["spec"]["replicas"] == 2
    c = container(dep)
    assert c["image"] == "registry.local/kumulus:1.2.3"
    assert "--namespace=team-a" in c["command"] and "--namespace=team-b" in c["command"]
    assert "--all-namespaces" not in c["command"]
    assert "--liveness=http://127.0.0.1:18080/healthz" in c["command"]
    settings = Settings.from_env(env_of(c))
    assert settings.runner_image == "registry.local/runner:9"
    assert settings.image_pull_policy == "Always"
    assert settings.manage_runner_rbac is False
    assert settings.namespaces == ("team-a", "team-b")
    assert settings.pod_start_deadline_seconds == 45
    assert settings.default_ttl_seconds == 3600
    assert settings.output_limit_bytes == 1048576  # no "1.048576e+06"
    assert settings.requeue_error_seconds == 0.5


def test_extra_env_is_appended() -> None:
    docs = render("operator.extraEnv[0].name=KUMULUS_LOG_FORMAT", "operator.extraEnv[0].value=json")
    assert env_of(container(one(docs, "Deployment", "kumulus-operator")))["KUMULUS_LOG_FORMAT"] == (
        "json"
    )


# --------------------------------------------------------------------------- connection executor


def test_connection_executor_in_the_operator_process_by_default(default: list[Doc]) -> None:
    assert not find(default, "Deployment", "kumulus-connection-executor")
    env = env_of(container(one(default, "Deployment", "kumulus-operator")))
    assert Settings.from_env(env).connection_executor_inline is True
    binding = one(default, "ClusterRoleBinding", "kumulus-connection-executor")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kumulus-operator", "namespace": NAMESPACE}
    ]


def test_separate_connection_executor_has_its_own_deployment_and_identity() -> None:
    docs = render("connectionExecutor.separate=true", "operator.settings.connectionConcurrency=5")
    op = container(one(docs, "Deployment", "kumulus-operator"))
    assert Settings.from_env(env_of(op)).connection_executor_inline is False
    dep = one(docs, "Deployment", "kumulus-connection-executor")
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "kumulus-connection-executor"
    c = container(dep)
    assert c["command"][:2] == ["kopf", "run"]
    assert c["command"][-2:] == ["-m", "kumulus.handlers.connection_executor"]
    assert Settings.from_env(env_of(c)).connection_concurrency == 5
    one(docs, "ServiceAccount", "kumulus-connection-executor")
    binding = one(docs, "ClusterRoleBinding", "kumulus-connection-executor")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kumulus-connection-executor", "namespace": NAMESPACE}
    ]
    # The connection executor's role is no longer bound to the operator.
    operator_roles = {
        b["roleRef"]["name"]
        for b in find(docs, "ClusterRoleBinding") + find(docs, "RoleBinding")
        if any(s["name"] == "kumulus-operator" for s in b["subjects"])
    }
    assert operator_roles == {"kumulus-operator"}


def test_connection_executor_disabled() -> None:
    docs = render("connectionExecutor.enabled=false", "connectionExecutor.separate=true")
    assert not find(docs, "ClusterRole", "kumulus-connection-executor")
    assert not find(docs, "Deployment", "kumulus-connection-executor")
    env = env_of(container(one(docs, "Deployment", "kumulus-operator")))
    assert Settings.from_env(env).connection_executor_inline is False


# --------------------------------------------------------------------------- webhook


def test_webhook_deployment_and_service(default: list[Doc]) -> None:
    dep = one(default, "Deployment", "kumulus-webhook")
    c = container(dep)
    assert c["command"] == ["kumulus-webhook"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "kumulus-webhook"
    svc = one(default, "Service", "kumulus-webhook")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    assert c["ports"][0]["name"] == "http"
    assert not find(default, "Ingress")


def test_webhook_env_parses_as_its_settings_with_the_documented_defaults(
    default: list[Doc],
) -> None:
    env = env_of(container(one(default, "Deployment", "kumulus-webhook")))
    webhook_env = {k: v for k, v in env.items() if k.startswith("KUMULUS_WEBHOOK_")}
    fields = {f"KUMULUS_WEBHOOK_{f.name.upper()}" for f in dataclasses.fields(WebhookSettings)}
    assert set(webhook_env) == fields
    settings = WebhookSettings.from_env(webhook_env)
    assert settings.host == "0.0.0.0"  # in a Pod; the service's own default is loopback
    assert dataclasses.replace(settings, host=WebhookSettings().host) == WebhookSettings()


def test_changed_values_reach_the_webhook_service() -> None:
    docs = render(
        "webhook.port=9000",
        "webhook.namespace=hooks",
        "watchNamespaces={hooks}",
        "webhook.settings.maxInFlight=8",
        "webhook.settings.maxInputsBytes=2097152",
    )
    c = container(one(docs, "Deployment", "kumulus-webhook"))
    settings = WebhookSettings.from_env(env_of(c))
    assert (settings.port, settings.namespace, settings.namespaces) == (9000, "hooks", ("hooks",))
    assert (settings.max_in_flight, settings.max_inputs_bytes) == (8, 2097152)
    assert c["ports"][0]["containerPort"] == 9000


def test_webhook_ingress_is_optional() -> None:
    docs = render("webhook.ingress.enabled=true", "webhook.ingress.host=hooks.example.org")
    ingress = one(docs, "Ingress", "kumulus-webhook")
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == "hooks.example.org"
    # Only the webhook routes, not /metrics.
    assert [p["path"] for p in rule["http"]["paths"]] == ["/api/latest/webhook", "/namespaces"]
    for path in rule["http"]["paths"]:
        assert path["backend"]["service"] == {"name": "kumulus-webhook", "port": {"name": "http"}}
    env = env_of(container(one(docs, "Deployment", "kumulus-operator")))
    assert env["KUMULUS_WEBHOOK_BASE_URL"] == "http://hooks.example.org"


def test_webhook_secret_access_is_bound_only_where_asked() -> None:
    default = render()
    assert not [
        b
        for b in find(default, "RoleBinding") + find(default, "ClusterRoleBinding")
        if b["roleRef"]["name"] == "kumulus-webhook-secrets"
    ]
    docs = render("webhook.secretNamespaces={team-a}")
    (rb,) = find(docs, "RoleBinding", "kumulus-webhook-secrets")
    assert rb["metadata"]["namespace"] == "team-a"
    assert rb["roleRef"]["name"] == "kumulus-webhook-secrets"
    assert rb["subjects"] == [
        {"kind": "ServiceAccount", "name": "kumulus-webhook", "namespace": NAMESPACE}
    ]
    wide = render("webhook.secretsClusterWide=true")
    one(wide, "ClusterRoleBinding", "kumulus-webhook-secrets")


def test_webhook_disabled_removes_its_objects() -> None:
    docs = render("webhook.enabled=false")
    assert not [d for d in docs if d["metadata"]["name"].startswith("kumulus-webhook")]


# --------------------------------------------------------------------------- RBAC


def resources_of(role: Doc) -> set[str]:
    return {r for rule in role["rules"] for r in rule.get("resources", [])}


def load_rbac(name: str) -> list[Doc]:
    path = RBAC / name
    if not path.exists():
        pytest.fail(f"config/rbac/{name} is missing; the chart's rules are compared with it")
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def normalized(rules: list[Doc], names: dict[str, str]) -> list[Doc]:
    """Rules with sorted lists, and resourceNames mapped from config/rbac's to the chart's."""
    out = []
    for rule in rules:
        r = {k: sorted(v) for k, v in rule.items()}
        if "resourceNames" in r:
            r["resourceNames"] = sorted(names.get(n, n) for n in r["resourceNames"])
        out.append(r)
    return sorted(out, key=repr)


#: The config/rbac files with the ClusterRoles the chart renders (same names for the release
#: "kumulus"; another release name prefixes them).
ROLE_FILES = (
    "operator-clusterrole.yaml",
    "runner-clusterrole.yaml",
    "connection-executor-clusterrole.yaml",
    "webhook-role.yaml",
)


@pytest.mark.parametrize("file", ROLE_FILES)
def test_chart_rules_equal_config_rbac(file: str) -> None:
    roles = [d for d in load_rbac(file) if d["kind"] == "ClusterRole"]
    assert roles, f"config/rbac/{file} has no ClusterRole"
    # A release with another name renames the objects, never the rules.
    docs = render(release="other")
    renamed = {"kumulus-runner": "other-kumulus-runner"}
    for config_role in roles:
        name = config_role["metadata"]["name"].replace("kumulus-", "other-kumulus-", 1)
        chart_role = one(docs, "ClusterRole", name)
        assert normalized(chart_role["rules"], {}) == normalized(config_role["rules"], renamed), (
            f"charts/kumulus/templates and config/rbac/{file} disagree on "
            f"{config_role['metadata']['name']}; change both"
        )


def test_every_config_rbac_cluster_role_is_in_the_chart() -> None:
    docs = render()
    chart_roles = {d["metadata"]["name"] for d in find(docs, "ClusterRole")}
    for path in sorted(RBAC.glob("*.yaml")):
        for d in yaml.safe_load_all(path.read_text()):
            if d and d.get("kind") == "ClusterRole":
                assert d["metadata"]["name"] in chart_roles, f"{path.name}: {d['metadata']['name']}"


def test_no_wildcards_anywhere(default: list[Doc]) -> None:
    for role in find(default, "ClusterRole") + find(default, "Role"):
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(key, []), (role["metadata"]["name"], rule)


def test_runner_role_has_no_secrets_no_pods_and_no_deletes(default: list[Doc]) -> None:
    role = one(default, "ClusterRole", "kumulus-runner")
    assert resources_of(role) == {
        "executions",
        "executions/status",
        "flows",
        "connections",
        "configmaps",
        "leases",
    }
    verbs = {v for rule in role["rules"] for v in rule["verbs"]}
    assert "delete" not in verbs
    cm = [r for r in role["rules"] if "configmaps" in r["resources"]]
    # Flow code and settings (system.setting); locks are Leases.
    assert cm == [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "patch"]}
    ]


def test_who_reads_secrets(default: list[Doc]) -> None:
    readers = {
        role["metadata"]["name"]: sorted(
            v for rule in role["rules"] if "secrets" in rule["resources"] for v in rule["verbs"]
        )
        for role in find(default, "ClusterRole")
        if "secrets" in resources_of(role)
    }
    assert readers == {
        # Connections' Secrets, by name only.
        "kumulus-connection-executor": ["get"],
        # Webhook Ready: does the referenced Secret have the key (by name only).
        "kumulus-operator": ["get"],
        # Webhook keys; bound only in the namespaces the admin lists.
        "kumulus-webhook-secrets": ["list", "watch"],
    }


def test_operator_may_bind_only_the_runner_role(default: list[Doc]) -> None:
    role = one(default, "ClusterRole", "kumulus-operator")
    binds = [r for r in role["rules"] if "bind" in r["verbs"]]
    assert binds == [
        {
            "apiGroups": ["rbac.authorization.k8s.io"],
            "resources": ["clusterroles"],
            "verbs": ["bind"],
            "resourceNames": ["kumulus-runner"],
        }
    ]
    env = env_of(container(one(default, "Deployment", "kumulus-operator")))
    assert env["KUMULUS_RUNNER_CLUSTER_ROLE"] == "kumulus-runner"


def test_runner_namespaces_get_service_account_and_role_binding() -> None:
    docs = render("runner.namespaces={team-a,team-b}", "runner.serviceAccountName=flows")
    for ns in ("team-a", "team-b"):
        sa = [d for d in find(docs, "ServiceAccount", "flows") if d["metadata"]["namespace"] == ns]
        assert len(sa) == 1
        (rb,) = [d for d in find(docs, "RoleBinding", "flows") if d["metadata"]["namespace"] == ns]
        assert rb["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "kumulus-runner",
        }
        assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "flows", "namespace": ns}]
    env = env_of(container(one(docs, "Deployment", "kumulus-operator")))
    assert env["KUMULUS_RUNNER_SERVICE_ACCOUNT"] == "flows"


def test_rbac_create_false_leaves_rbac_to_the_admin() -> None:
    docs = render("rbac.create=false")
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "RoleBinding"}


# --------------------------------------------------------------------------- CRDs


def test_crds_are_installed_and_kept_by_default(default: list[Doc]) -> None:
    crds = find(default, "CustomResourceDefinition")
    assert sorted(c["metadata"]["name"] for c in crds) == sorted(
        f"{p}.kumulus.dev" for p in ("flows", "executions", "schedules", "connections", "webhooks")
    )
    for crd in crds:
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        committed = yaml.safe_load((ROOT / "crds" / f"{crd['metadata']['name']}.yaml").read_text())
        assert crd["spec"] == committed["spec"]


def test_crds_enabled_false_drops_the_crds() -> None:
    assert not find(render("crds.enabled=false"), "CustomResourceDefinition")


def test_crds_keep_false_lets_helm_delete_them() -> None:
    for crd in find(render("crds.keep=false"), "CustomResourceDefinition"):
        assert "annotations" not in crd["metadata"]


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("operator.replicass=2", "additional properties 'replicass' not allowed"),
        ("operator.replicas=-1", "/operator/replicas"),
        (
            "operator.settings.podStartDeadlineSeconds=soon",
            "/operator/settings/podStartDeadlineSeconds",
        ),
        (
            "operator.settings.unknownSetting=1",
            "additional properties 'unknownSetting' not allowed",
        ),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("webhook.service.type=Magic", "/webhook/service/type"),
        ("watchNamespaces={Not_A_Namespace}", "/watchNamespaces/0"),
        ("crds.enabled=maybe", "/crds/enabled"),
        ("operator.settings.outputLimitBytes=0", "/operator/settings/outputLimitBytes"),
        ("operator.settings.outputLimitBytes=1048577", "/operator/settings/outputLimitBytes"),
    ],
)
def test_schema_rejects_bad_values(value: str, message: str) -> None:
    proc = helm(
        "template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION, "--set", value, check=False
    )
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_schema_bounds_the_output_limit_as_the_settings_do() -> None:
    # One limit: helm refuses exactly the values the operator's Settings refuse.
    schema = json.loads((CHART / "values.schema.json").read_text())
    prop = schema["properties"]["operator"]["properties"]["settings"]["properties"][
        "outputLimitBytes"
    ]
    low, high = prop["minimum"], prop["maximum"]
    assert (low, high) == (1, outputs.LIMIT_MAX_BYTES)
    for limit in (low, high):
        assert Settings(output_limit_bytes=limit).output_limit_bytes == limit
    for limit in (low - 1, high + 1):
        with pytest.raises(ValueError, match="output_limit_bytes"):
            Settings(output_limit_bytes=limit)
    docs = render(f"operator.settings.outputLimitBytes={high}")
    env = env_of(container(one(docs, "Deployment", "kumulus-operator")))
    assert Settings.from_env(env).output_limit_bytes == high


# --------------------------------------------------------------------------- NOTES.txt


def render_notes(tmp_path: Path, *sets: str) -> str:
    """NOTES.txt rendered as an ordinary template of a copy of the chart."""
    chart = tmp_path / "kumulus"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "NOTES.txt").unlink()
    (chart / "templates" / "_notes-test.tpl").write_text(
        '{{- define "test.notes" -}}\n' + notes + "{{- end -}}\n"
    )
    (chart / "templates" / "notes-test.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ include "test.notes" . | quote }}\n'
    )
    docs = render(*sets, chart=chart)
    text: str = one(docs, "ConfigMap", "notes")["data"]["notes"]
    return text


def test_notes_name_the_webhook_url_and_a_first_command(tmp_path: Path) -> None:
    text = render_notes(tmp_path)
    assert "http://kumulus-webhook.kumulus-system.svc/api/latest/webhook/<name>/call" in text
    assert "port-forward svc/kumulus-webhook 8080:80" in text
    assert "kumulus run hello --input who=Kumulus --wait" in text
    ingress = render_notes(
        tmp_path / "i", "webhook.ingress.enabled=true", "webhook.ingress.host=hooks.example.org"
    )
    assert "http://hooks.example.org/api/latest/webhook/<name>/call" in ingress
    external = render_notes(tmp_path / "e", "webhook.externalUrl=https://k.example.org/")
    assert "https://k.example.org/api/latest/webhook/<name>/call" in external


# --------------------------------------------------------------------------- observability

DASHBOARD = CHART / "dashboards" / "kumulus.json"


def test_metrics_services_select_the_components_that_serve_metrics(default: list[Doc]) -> None:
    op = one(default, "Service", "kumulus-operator-metrics")
    dep = one(default, "Deployment", "kumulus-operator")
    assert op["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert op["spec"]["ports"] == [
        {"name": "metrics", "port": 8000, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert op["metadata"]["labels"]["kumulus.dev/metrics"] == "true"
    # The webhook service answers /metrics on its HTTP port.
    hook = one(default, "Service", "kumulus-webhook-metrics")
    assert hook["spec"]["ports"][0]["targetPort"] == "http"
    assert hook["spec"]["selector"]["app.kubernetes.io/component"] == "webhook"
    assert not find(default, "ServiceMonitor") and not find(default, "ConfigMap")


def test_metrics_disabled_sets_port_zero_and_drops_services() -> None:
    docs = render("metrics.enabled=false", "metrics.serviceMonitor.enabled=true")
    assert not [d for d in find(docs, "Service") if d["metadata"]["name"].endswith("-metrics")]
    assert not find(docs, "ServiceMonitor")
    c = container(one(docs, "Deployment", "kumulus-operator"))
    assert Settings.from_env(env_of(c)).metrics_port == 0
    assert [p["name"] for p in c["ports"]] == ["liveness"]


def test_changed_metrics_values_reach_the_operator() -> None:
    docs = render("metrics.host=127.0.0.1", "metrics.port=9100")
    c = container(one(docs, "Deployment", "kumulus-operator"))
    settings = Settings.from_env(env_of(c))
    assert (settings.metrics_host, settings.metrics_port) == ("127.0.0.1", 9100)
    assert {"name": "metrics", "containerPort": 9100, "protocol": "TCP"} in c["ports"]
    assert one(docs, "Service", "kumulus-operator-metrics")["spec"]["ports"][0]["port"] == 9100


def test_separate_connection_executor_serves_metrics_on_its_own_port() -> None:
    docs = render("connectionExecutor.separate=true", "metrics.connectionExecutorPort=9101")
    c = container(one(docs, "Deployment", "kumulus-connection-executor"))
    assert Settings.from_env(env_of(c)).metrics_port == 9101
    assert {"name": "metrics", "containerPort": 9101, "protocol": "TCP"} in c["ports"]
    svc = one(docs, "Service", "kumulus-connection-executor-metrics")
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "connection-executor"
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"


def test_service_monitor_is_rendered_only_when_enabled() -> None:
    docs = render(
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.interval=15s",
        "metrics.serviceMonitor.labels.release=prometheus",
        "connectionExecutor.separate=true",
    )
    sm = one(docs, "ServiceMonitor", "kumulus")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    # It selects exactly the metrics Services (each has a port named "metrics").
    wanted = sm["spec"]["selector"]["matchLabels"]
    selected = sorted(
        d["metadata"]["name"]
        for d in find(docs, "Service")
        if wanted.items() <= d["metadata"]["labels"].items()
    )
    assert selected == [
        "kumulus-connection-executor-metrics",
        "kumulus-operator-metrics",
        "kumulus-webhook-metrics",
    ]
    for name in selected:
        assert [p["name"] for p in one(docs, "Service", name)["spec"]["ports"]] == ["metrics"]


def test_dashboard_configmap_is_rendered_only_when_enabled() -> None:
    docs = render(
        "metrics.dashboard.enabled=true",
        "metrics.dashboard.namespace=monitoring",
        "metrics.dashboard.annotations.grafana_folder=Kumulus",
    )
    cm = one(docs, "ConfigMap", "kumulus-dashboard")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Kumulus"}
    assert json.loads(cm["data"]["kumulus.json"]) == json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in board["panels"]:
        exprs += [t["expr"] for t in panel.get("targets", [])]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["query"]["query"])
    return exprs


def exposed_names(registry: CollectorRegistry) -> set[str]:
    """Every series name the registry can expose, by metric type (samples or not)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("_count", "_sum", "_created"),
        "gauge": ("",),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in registry.collect():
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


def test_every_metric_the_dashboard_queries_exists_in_the_code() -> None:
    from kumulus.observability import metrics
    from kumulus.webhook.metrics import Metrics

    known = exposed_names(metrics.REGISTRY) | exposed_names(Metrics().registry)
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    used = {m for e in exprs for m in re.findall(r"\b(?:kumulus|process)_[a-z0-9_]+", e)}
    assert used - known == set(), "the dashboard queries metrics the code does not define"
    # Every operator metric is on the dashboard (the process_* ones: CPU and memory only).
    ours = {n for n in exposed_names(metrics.REGISTRY) if n.startswith("kumulus_")}
    shown = {re.sub(r"_(total|bucket|count|sum|created)$", "", n) for n in used}
    missing = {n for n in ours if re.sub(r"_(total|bucket|count|sum|created)$", "", n) not in shown}
    assert missing == set()


def test_dashboard_is_valid_grafana_json() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"] == "Kumulus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            # Balanced brackets: a cheap guard against broken PromQL edits.
            expr = target["expr"]
            for open_, close in ("()", "{}", "[]"):
                assert expr.count(open_) == expr.count(close), expr


def test_log_format_json_reaches_kopf_and_the_settings() -> None:
    default_cmd = container(one(render(), "Deployment", "kumulus-operator"))["command"]
    assert not [a for a in default_cmd if a.startswith("--log-format")]
    docs = render("operator.logFormat=json", "connectionExecutor.separate=true")
    for name in ("kumulus-operator", "kumulus-connection-executor"):
        c = container(one(docs, "Deployment", name))
        assert "--log-format=json" in c["command"]
        assert Settings.from_env(env_of(c)).log_format == "json"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("operator.logFormat=xml", "/operator/logFormat"),
        ("metrics.port=0", "/metrics/port"),
        ("metrics.serviceMonitor.interval=soon", "/metrics/serviceMonitor/interval"),
        ("metrics.dashboard.enabledd=true", "additional properties 'enabledd' not allowed"),
    ],
)
def test_schema_rejects_bad_observability_values(value: str, message: str) -> None:
    proc = helm(
        "template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION, "--set", value, check=False
    )
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
