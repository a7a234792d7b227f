"""The runner Pod of one Execution attempt, built from the Execution, its Flow and settings.

The shape follows the runner contract (``runner-image/README.md``): deterministic name, owner
reference to the Execution, labels, ``kumulus-runner`` command, the ``KUMULUS_*`` environment,
``activeDeadlineSeconds`` from the timeout and ``restartPolicy: Never``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kumulus.domain import naming
from kumulus.domain.settings import Settings

API_VERSION = "kumulus.dev/v1alpha1"
CONTAINER_NAME = "runner"
RESERVED_ENV = (
    "KUMULUS_EXECUTION",
    "KUMULUS_NAMESPACE",
    "KUMULUS_ATTEMPT",
    "KUMULUS_OUTPUT_LIMIT_BYTES",
)


def timeout_seconds(execution: Mapping[str, Any], flow: Mapping[str, Any] | None) -> int | None:
    """The attempt timeout: the Execution's ``timeoutSeconds``, else the Flow's, else none."""
    spec = execution.get("spec") or {}
    value = spec.get("timeoutSeconds")
    if value is None and flow is not None:
        value = (flow.get("spec") or {}).get("timeoutSeconds")
    return int(value) if value else None


def build_pod(
    execution: Mapping[str, Any],
    flow: Mapping[str, Any] | None,
    attempt: int,
    settings: Settings,
) -> dict[str, Any]:
    """The Pod manifest for ``attempt`` (from 1) of ``execution``."""
    meta = execution.get("metadata") or {}
    spec = execution.get("spec") or {}
    template = spec.get("podTemplate") or {}
    flow_spec = (flow or {}).get("spec") or {}
    name = str(meta["name"])
    namespace = str(meta.get("namespace") or "default")

    env: list[dict[str, Any]] = [
        e for e in template.get("env") or [] if e.get("name") not in RESERVED_ENV
    ]
    env += [
        {"name": "KUMULUS_EXECUTION", "value": name},
        {"name": "KUMULUS_NAMESPACE", "value": namespace},
        {"name": "KUMULUS_ATTEMPT", "value": str(attempt)},
        {"name": "KUMULUS_OUTPUT_LIMIT_BYTES", "value": str(settings.output_limit_bytes)},
    ]
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": flow_spec.get("image") or settings.runner_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["kumulus-runner"],
        "env": env,
    }
    resources = template.get("resources") or flow_spec.get("resources")
    if resources:
        container["resources"] = dict(resources)

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "serviceAccountName": (
            template.get("serviceAccountName")
            or flow_spec.get("serviceAccountName")
            or settings.runner_service_account
        ),
        "containers": [container],
    }
    deadline = timeout_seconds(execution, flow)
    if deadline:
        pod_spec["activeDeadlineSeconds"] = deadline
    if template.get("nodeSelector"):
        pod_spec["nodeSelector"] = dict(template["nodeSelector"])
    if template.get("tolerations"):
        pod_spec["tolerations"] = list(template["tolerations"])

    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": naming.pod_name(name, attempt),
            "namespace": namespace,
            "labels": {
                naming.LABEL_EXECUTION: naming.execution_label_value(name),
                naming.LABEL_ATTEMPT: str(attempt),
                naming.LABEL_MANAGED_BY: naming.MANAGED_BY,
            },
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "Execution",
                    "name": name,
                    "uid": str(meta.get("uid") or ""),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": pod_spec,
    }


def owner_execution(pod: Mapping[str, Any]) -> str | None:
    """Name of the Execution that controls ``pod`` (from its ownerReferences), if any."""
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "Execution" and ref.get("controller"):
            return str(ref.get("name"))
    return None
