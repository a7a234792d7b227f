"""The runner Pod of one Execution attempt, built from the Execution, its Flow and settings.

The shape follows the runner contract (``runner-image/README.md``): deterministic name, owner
reference to the Execution, labels, ``kumulus-runner`` command, the ``KUMULUS_*`` environment,
``activeDeadlineSeconds`` from the timeout and ``restartPolicy: Never``.

Runner Pods run other people's code, so they meet the restricted Pod Security Standard whatever
the Execution asks for: the image's own user and group (10001), no privilege escalation, no
capabilities, seccomp ``RuntimeDefault``, a read-only root file system with an emptyDir at
``/tmp`` as the only writable folder, and default requests and limits from the settings. Only
images the settings allow may run (:func:`image_refusal`), and the operator touches only Pods
its Execution controls (:func:`owned_by`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from kumulus.domain import flowcode, naming
from kumulus.domain.settings import Settings

API_VERSION = "kumulus.dev/v1alpha1"
CONTAINER_NAME = "runner"
RESERVED_ENV = (
    "KUMULUS_EXECUTION",
    "KUMULUS_NAMESPACE",
    "KUMULUS_ATTEMPT",
    "KUMULUS_OUTPUT_LIMIT_BYTES",
    "KUMULUS_CODE_HASH",
)
RUNNER_UID = 10001
"""User and group of the runner image (``runner-image/Dockerfile``: ``USER 10001:10001``)."""
TMP_VOLUME = "tmp"
TMP_PATH = "/tmp"  # noqa: S108 - the Pod's own emptyDir, not a shared host folder
"""The only writable folder of a runner Pod (an emptyDir; the image's working directory)."""
DEFAULT_ENV = {"TMPDIR": TMP_PATH, "HOME": TMP_PATH}
"""Set unless the ``podTemplate`` sets them: temporary files and ``~`` in the writable folder."""


# --------------------------------------------------------------------------- images


def image_of(flow: Mapping[str, Any] | None, settings: Settings) -> str:
    """The image the runner container would run: the Flow's ``image``, else the runner image."""
    image = ((flow or {}).get("spec") or {}).get("image")
    return str(image) if image else settings.runner_image


def image_allowed(image: str, settings: Settings) -> bool:
    """Whether ``image`` is the runner image or matches an entry of ``allowed_images``.

    An entry ending in ``*`` is a prefix; any other entry must equal the image exactly.
    """
    if image == settings.runner_image:
        return True
    for entry in settings.allowed_images:
        if entry.endswith("*"):
            if image.startswith(entry[:-1]):
                return True
        elif image == entry:
            return True
    return False


def image_refusal(flow: Mapping[str, Any] | None, settings: Settings) -> str | None:
    """Why the Flow's image may not run (``None`` when it may)."""
    image = image_of(flow, settings)
    if image_allowed(image, settings):
        return None
    allowed = ", ".join([settings.runner_image, *settings.allowed_images])
    return f"Image {image} is not allowed; the operator allows only: {allowed}."


# --------------------------------------------------------------------------- resources

_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))([eE][+-]?[0-9]+|[a-zA-Z]*)$")
_SUFFIX = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}


def parse_quantity(value: object) -> Decimal | None:
    """A Kubernetes quantity (``50m``, ``64Mi``, ``1.5``, ``1e3``) as a number, else ``None``."""
    match = _QUANTITY.match(str(value).strip())
    if match is None:
        return None
    number, suffix = match.groups()
    try:
        if suffix[:1] in ("e", "E"):
            return Decimal(number + suffix)
        if suffix not in _SUFFIX:
            return None
        return Decimal(number) * _SUFFIX[suffix]
    except InvalidOperation:
        return None


def default_resources(settings: Settings) -> dict[str, dict[str, str]]:
    """The runner container's requests and limits from the settings (empty values left out)."""
    requests = {"cpu": settings.runner_cpu_request, "memory": settings.runner_memory_request}
    limits = {"cpu": settings.runner_cpu_limit, "memory": settings.runner_memory_limit}
    return {
        "requests": {k: v for k, v in requests.items() if v},
        "limits": {k: v for k, v in limits.items() if v},
    }


def merge_resources(
    defaults: Mapping[str, Mapping[str, Any]], override: Mapping[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """``override`` (a Flow's or ``podTemplate``'s ``resources``) over ``defaults``, per resource.

    A default never makes the container invalid: where a given request exceeds a default limit,
    the limit is raised to it; where a given limit is below a default request, the request is
    lowered to it. A request and limit both given are kept as given.
    """
    given_requests = dict((override or {}).get("requests") or {})
    given_limits = dict((override or {}).get("limits") or {})
    requests = {**(defaults.get("requests") or {}), **given_requests}
    limits = {**(defaults.get("limits") or {}), **given_limits}
    for name in sorted(set(requests) & set(limits)):
        request, limit = parse_quantity(requests[name]), parse_quantity(limits[name])
        if request is None or limit is None or request <= limit:
            continue
        if name in given_requests and name not in given_limits:
            limits[name] = requests[name]
        elif name in given_limits and name not in given_requests:
            requests[name] = limits[name]
    out: dict[str, dict[str, Any]] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


# --------------------------------------------------------------------------- security


def pod_security_context() -> dict[str, Any]:
    """The Pod's securityContext (restricted Pod Security Standard)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUNNER_UID,
        "runAsGroup": RUNNER_UID,
        "fsGroup": RUNNER_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """The runner container's securityContext (restricted Pod Security Standard)."""
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def controller_uid(pod: Mapping[str, Any]) -> str:
    """The uid of the Execution that controls ``pod`` by its ownerReferences ("" if none)."""
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "Execution" and ref.get("controller"):
            return str(ref.get("uid") or "")
    return ""


def owned_by(pod: Mapping[str, Any], execution_uid: str) -> bool:
    """Whether the Execution with ``execution_uid`` controls ``pod``: the only Pods the operator
    deletes for it. A Pod named in a status (which flow code can write) may be anyone's."""
    return bool(execution_uid) and controller_uid(pod) == execution_uid


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
    given = {e.get("name") for e in env}
    env += [{"name": k, "value": v} for k, v in DEFAULT_ENV.items() if k not in given]
    env += [
        {"name": "KUMULUS_EXECUTION", "value": name},
        {"name": "KUMULUS_NAMESPACE", "value": namespace},
        {"name": "KUMULUS_ATTEMPT", "value": str(attempt)},
        {"name": "KUMULUS_OUTPUT_LIMIT_BYTES", "value": str(settings.output_limit_bytes)},
    ]
    is_flow = str(spec.get("type") or "FLOW").upper() == "FLOW"
    code_hash = flowcode.checked_hash(flow) if is_flow else None
    if code_hash:  # the runner refuses any other code (CodeChanged)
        env.append({"name": "KUMULUS_CODE_HASH", "value": code_hash})
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": image_of(flow, settings),
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["kumulus-runner"],
        "env": env,
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": TMP_VOLUME, "mountPath": TMP_PATH}],
    }
    resources = merge_resources(
        default_resources(settings), template.get("resources") or flow_spec.get("resources")
    )
    if resources:
        container["resources"] = resources

    tmp: dict[str, Any] = {}
    if settings.runner_tmp_size_limit:
        tmp["sizeLimit"] = settings.runner_tmp_size_limit
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "serviceAccountName": (
            template.get("serviceAccountName")
            or flow_spec.get("serviceAccountName")
            or settings.runner_service_account
        ),
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": [{"name": TMP_VOLUME, "emptyDir": tmp}],
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
