"""Kumulus installed by its Helm chart on the dev cluster: install, run, upgrade, uninstall.

The chart's operator, webhook service and connection executor run as real Pods of the image
``make images`` built (imported into the dev node's containerd), each with its own
ServiceAccount token, so this exercises the chart's image and RBAC for real: the installation
runs every example (01 to 06) with nothing but the chart's RBAC; example 03's connection calls
run in the connection executor's own Deployment and reach the test's servers on the host end
of the node's veth. The test reaches the Pods as anything on the cluster's network would: the
operator's health and metrics at its Pod IP, the webhook service through its ClusterIP
Service (this machine routes the slot's Pod and Service ranges into the node).

The session ``operator`` fixture must not reconcile the same objects meanwhile:
``session_operator_stopped`` stops it for this test (if the session runs it) and restarts it
afterwards. The CRDs may already exist (applied by ``kubectl`` for the session operator); the
test hands them over to the release the way a user adopts existing objects (Helm's ownership
annotations) and ``crds.keep`` leaves them in place on uninstall.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.e2e import example_03
from tests.local_servers import HttpServer
from tests.polling import eventually

from kumulus.devcluster.paths import bin_cache_dir, read_versions

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kumulus"
EXAMPLE = REPO / "examples" / "01-hello-flow"
RELEASE = "khelm"
TERMINAL = ("Succeeded", "Failed", "Cancelled")
CRDS = ("flows", "executions", "schedules", "connections", "webhooks")
Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def helm_binary() -> Path:
    explicit = os.environ.get("HELM")
    path = (
        Path(explicit)
        if explicit
        else bin_cache_dir() / f"helm-{read_versions()['HELM_VERSION']}" / "helm"
    )
    if not os.access(path, os.X_OK):
        pytest.fail(f"no helm at {path}: run `make binaries` (or set HELM)")
    return path


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:  # only the dev cluster's addresses
            return bool(r.status == 200)
    except OSError:
        return False


def test_helm_install_run_upgrade_uninstall(
    kubeconfig: Path,
    kubectl: Kubectl,
    namespace: str,
    session_operator_stopped: None,
    wait_phase: Callable[..., dict[str, Any]],
    http: HttpServer,
    postgres_server: Any,
) -> None:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

    def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(helm_binary()), *args, "-n", namespace],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        if check and proc.returncode != 0:
            pytest.fail(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def pods(component: str | None = None) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/instance={RELEASE}"
        if component:
            selector += f",app.kubernetes.io/component={component}"
        out = kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout
        items: list[dict[str, Any]] = json.loads(out)["items"]
        return items

    def condition(connection: str, kind: str) -> str | None:
        out = kubectl("get", "connection", connection, "-n", namespace, "-o", "json").stdout
        found = json.loads(out).get("status", {}).get("conditions", [])
        return next((c["status"] for c in found if c["type"] == kind), None)

    def running(component: str, env_name: str, value: str) -> dict[str, Any] | None:
        """The component's only Pod once it runs with ``env_name=value`` (old Pods gone)."""
        found = pods(component)
        if len(found) != 1 or found[0]["status"].get("phase") != "Running":
            return None
        env_vars = {e["name"]: e.get("value") for e in found[0]["spec"]["containers"][0]["env"]}
        return found[0] if env_vars.get(env_name) == value else None

    # Adopt CRDs that exist already (kubectl-applied) into the release; none is also fine.
    for plural in CRDS:
        crd = f"crd/{plural}.kumulus.dev"
        if kubectl("get", crd, check=False).returncode == 0:
            kubectl(
                "annotate", crd, "--overwrite",
                f"meta.helm.sh/release-name={RELEASE}",
                f"meta.helm.sh/release-namespace={namespace}",
            )  # fmt: skip
            kubectl("label", crd, "--overwrite", "app.kubernetes.io/managed-by=Helm")

    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    op_port = chart_values["operator"]["liveness"]["port"]
    metrics_port = chart_values["metrics"]["port"]
    ce_port = chart_values["connectionExecutor"]["liveness"]["port"]
    values = [
        "--set", f"webhook.secretNamespaces={{{namespace}}}",
        "--set", "operator.settings.podStartDeadlineSeconds=60",
    ]  # fmt: skip

    def pod_url(pod: dict[str, Any], port: int, path: str) -> str:
        return f"http://{pod['status']['podIP']}:{port}{path}"

    installed = False
    try:
        out = helm("install", RELEASE, str(CHART), *values, "--wait", "--timeout", "2m").stdout
        installed = True
        # NOTES.txt: the webhook URL and a first command.
        assert f"http://{RELEASE}-kumulus-webhook.{namespace}.svc/api/latest/webhook/" in out
        assert "kumulus run hello --input who=Kumulus --wait" in out
        kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            *[f"crd/{p}.kumulus.dev" for p in CRDS],
        )  # fmt: skip

        # The operator and the webhook service run as the chart's ServiceAccounts.
        op_pod = eventually(
            "the operator Pod",
            lambda: running("operator", "KUMULUS_POD_START_DEADLINE_SECONDS", "60"),
        )
        assert op_pod["spec"]["serviceAccountName"] == f"{RELEASE}-kumulus-operator"
        # A real container of the built image, running as the image's user and group.
        (op_container,) = op_pod["status"]["containerStatuses"]
        assert op_container["containerID"].startswith("containerd://"), op_container
        assert op_container["imageID"], op_container
        eventually("the operator's /healthz", lambda: http_ok(pod_url(op_pod, op_port, "/healthz")))
        eventually(
            "the operator's /metrics", lambda: http_ok(pod_url(op_pod, metrics_port, "/metrics"))
        )
        # The webhook service answers 200 only once it listed Webhooks and Flows cluster-wide
        # with its own ClusterRole; the test calls it through its Service, as a user would.
        service = json.loads(
            kubectl("get", "service", f"{RELEASE}-kumulus-webhook", "-n", namespace,
                    "-o", "json").stdout
        )  # fmt: skip
        webhook = f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}"
        eventually("the webhook service's /healthz", lambda: http_ok(f"{webhook}/healthz"))

        # Examples 01 and 02 (a parent creating five children with the runner's RBAC from the
        # chart) through this installation.
        kubectl("apply", "-n", namespace, "-f", str(EXAMPLE / "flow.yaml"))
        kubectl("apply", "-n", namespace, "-f", str(EXAMPLE / "execution.yaml"))
        kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / "02-parallel-children"))
        done = wait_phase("hello-world", namespace, ("Succeeded", "Failed", "Cancelled"), 120)
        assert done["status"]["phase"] == "Succeeded", done["status"]
        assert done["status"]["outputs"] == {"greeting": "Hello, Kumulus!"}
        fan = wait_phase("sum-of-squares-1", namespace, ("Succeeded", "Failed", "Cancelled"), 120)
        assert fan["status"]["phase"] == "Succeeded", fan["status"]
        assert fan["status"]["outputs"] == {"children": 5, "sum": 55}
        assert [c["phase"] for c in fan["status"]["children"]] == ["Succeeded"] * 5

        # Example 04 (a Schedule every 10 s) and example 06 (kustomize, codeFrom) as well.
        kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / "04-schedule"))
        kubectl("apply", "-n", namespace, "-k", str(REPO / "examples" / "06-gitops"))
        made = kubectl(
            "create", "-n", namespace, "-o", "name",
            "-f", str(REPO / "examples" / "06-gitops" / "execution.yaml"),
        )  # fmt: skip
        counted = made.stdout.strip().split("/")[-1]
        done = wait_phase(counted, namespace, ("Succeeded", "Failed", "Cancelled"), 120)
        assert done["status"]["phase"] == "Succeeded", done["status"]

        def scheduled_run_succeeded() -> bool:
            out = kubectl(
                "get", "executions", "-n", namespace, "-l", "kumulus.dev/schedule=heartbeat",
                "-o", "json",
            ).stdout  # fmt: skip
            phases = [(i.get("status") or {}).get("phase") for i in json.loads(out)["items"]]
            return "Succeeded" in phases

        eventually("a run of the heartbeat Schedule", scheduled_run_succeeded)
        kubectl("delete", "-n", namespace, "-f", str(REPO / "examples" / "04-schedule"))

        # Example 05: a sync call through the chart's webhook service, which reads the
        # example's Secret through the RoleBinding that webhook.secretNamespaces made.
        kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / "05-webhook"))
        call = f"{webhook}/namespaces/{namespace}/webhooks/webhook-echo/call?key=demo-key"

        def webhook_answer() -> dict[str, Any] | None:
            request = urllib.request.Request(
                call, data=b'{"name": "Ada"}', headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as r:  # the Service's ClusterIP
                    answer: dict[str, Any] = json.loads(r.read())
                    return answer if r.status == 200 else None
            except OSError:
                return None  # 404 until the service's cache has the Webhook and its Secret

        answer = eventually("a sync answer of the example webhook", webhook_answer)
        assert answer["phase"] == "Succeeded", answer
        assert answer["outputs"]["greeting"] == "Hello, Ada!"
        # The operator made the runner identity, bound to the release's runner ClusterRole.
        binding = json.loads(
            kubectl("get", "rolebinding", "kumulus-runner", "-n", namespace, "-o", "json").stdout
        )
        assert binding["roleRef"]["name"] == f"{RELEASE}-kumulus-runner"

        # Upgrade with a changed value: the operator Pod is replaced by one with the new env,
        # and that operator runs flows too.
        helm(
            "upgrade", RELEASE, str(CHART), "--reuse-values",
            "--set", "operator.settings.podStartDeadlineSeconds=75",
            "--wait", "--timeout", "2m",
        )  # fmt: skip
        op_pod = eventually(
            "the upgraded operator Pod",
            lambda: running("operator", "KUMULUS_POD_START_DEADLINE_SECONDS", "75"),
        )
        eventually("the operator's /healthz", lambda: http_ok(pod_url(op_pod, op_port, "/healthz")))
        second = yaml.safe_load((EXAMPLE / "execution.yaml").read_text())
        second["metadata"]["name"] = "hello-after-upgrade"
        kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(second))
        done = wait_phase(
            "hello-after-upgrade", namespace, ("Succeeded", "Failed", "Cancelled"), 120
        )
        assert done["status"]["phase"] == "Succeeded", done["status"]

        # The connection executor moves out of the operator into a Deployment of its own,
        # running as its own ServiceAccount with the connection executor's ClusterRole.
        helm(
            "upgrade", RELEASE, str(CHART), "--reuse-values",
            "--set", "connectionExecutor.separate=true",
        )  # fmt: skip
        eventually(
            "the operator Pod without the connection executor",
            lambda: running("operator", "KUMULUS_CONNECTION_EXECUTOR_INLINE", "false"),
        )
        ce_pod = eventually(
            "the connection executor Pod",
            lambda: running("connection-executor", "KUMULUS_CONNECTION_EXECUTOR_INLINE", "false"),
        )
        assert ce_pod["spec"]["serviceAccountName"] == f"{RELEASE}-kumulus-connection-executor"
        eventually(
            "the connection executor's /healthz",
            lambda: http_ok(pod_url(ce_pod, ce_port, "/healthz")),
            timeout=60,
        )

        # Example 03 (REST and PostgreSQL connections): the CONNECTION executions run in that
        # Deployment, which reads the example's Secrets with its own ClusterRole.
        kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(
            example_03.manifests(http, postgres_server)
        ))  # fmt: skip
        for connection in ("demo-api", "demo-db"):
            eventually(
                f"Connection {connection} Ready",
                lambda connection=connection: condition(connection, "Ready") == "True",
            )
        done = wait_phase(example_03.EXECUTION, namespace, TERMINAL, 180)
        example_03.check_outputs(done, http, postgres_server, kubectl, namespace)
        ce_log = kubectl("logs", "-n", namespace, ce_pod["metadata"]["name"]).stdout
        assert f"Finished CONNECTION Execution {namespace}/" in ce_log, ce_log[-2000:]

        # Uninstall leaves no Kumulus Pods behind (and keeps the CRDs: crds.keep).
        helm("uninstall", RELEASE, "--wait", "--timeout", "2m")
        installed = False
        eventually("the release's Pods to go", lambda: not pods(), timeout=60)
        assert kubectl("get", "deployments", "-n", namespace, "-o", "name").stdout.strip() == ""
        roles = kubectl("get", "clusterroles", "-o", "name").stdout.split()
        assert not [r for r in roles if f"/{RELEASE}-kumulus" in r]
        for plural in CRDS:
            kubectl("get", f"crd/{plural}.kumulus.dev")
    finally:
        if installed:
            helm("uninstall", RELEASE, "--wait", "--timeout", "1m", check=False)
