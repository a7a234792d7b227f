"""Pure pieces of a container's environment: ``$(VAR)`` expansion, fieldRef, quantities, env.

They are kept free of I/O so they can be unit tested against the Kubernetes rules: the agent
fetches the referenced ConfigMaps and Secrets first and hands their data in.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

JsonDict = dict[str, Any]

_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.*)'\]$")


class EnvError(Exception):
    """A container's environment cannot be built (a kubelet reports CreateContainerConfigError)."""


def expand(text: str, lookup: Callable[[str], str | None]) -> str:
    """Expand ``$(VAR)`` references the way Kubernetes does for env values, command and args.

    ``$$`` is an escaped ``$``; a reference to an undefined variable and an unterminated
    ``$(`` stay as written.
    """
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        char = text[i]
        if char != "$" or i + 1 >= n:
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            close = text.find(")", i + 2)
            if close < 0:
                out.append("$(")
                i += 2
            else:
                name = text[i + 2 : close]
                value = lookup(name)
                out.append(f"$({name})" if value is None else value)
                i = close + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)


_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


def parse_quantity(text: str | int | float) -> Decimal:
    """Parse a Kubernetes resource quantity (``64Mi``, ``500m``, ``1e3``, ``2``)."""
    match = _QUANTITY.match(str(text).strip())
    if not match or match.group(2) not in _SUFFIXES:
        raise ValueError(f"invalid quantity {text!r}")
    try:
        return Decimal(match.group(1)) * _SUFFIXES[match.group(2)]
    except InvalidOperation as exc:
        raise ValueError(f"invalid quantity {text!r}") from exc


def memory_limit_bytes(container: Mapping[str, Any]) -> int | None:
    """The container's memory limit in bytes, or None when it has none."""
    limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
    if limit is None:
        return None
    return math.ceil(parse_quantity(limit))


def resolve_field_ref(pod: Mapping[str, Any], path: str) -> str:
    """The value of a downward-API ``fieldRef.fieldPath`` for a Pod."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    simple: dict[str, Any] = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
        "status.podIP": status.get("podIP") or "127.0.0.1",
        "status.hostIP": status.get("hostIP") or "127.0.0.1",
        "status.podIPs": status.get("podIP") or "127.0.0.1",
        "status.hostIPs": status.get("hostIP") or "127.0.0.1",
    }
    if path in simple:
        return str(simple[path] or "")
    match = _SUBSCRIPT.match(path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise EnvError(f"unsupported fieldPath {path!r}")


def resolve_resource_field_ref(
    container: Mapping[str, Any], ref: Mapping[str, Any], allocatable: Mapping[str, str]
) -> str:
    """The value of a ``resourceFieldRef``; an unset limit falls back to node allocatable."""
    resource = str(ref.get("resource", ""))
    kind, _, name = resource.partition(".")
    if kind not in ("limits", "requests") or name not in ("cpu", "memory", "ephemeral-storage"):
        raise EnvError(f"unsupported resource {resource!r}")
    resources = container.get("resources") or {}
    value = (resources.get(kind) or {}).get(name)
    if value is None and kind == "requests":
        value = (resources.get("limits") or {}).get(name)
    if value is None:
        value = allocatable.get(name, "0") if kind == "limits" else "0"
    divisor = parse_quantity(ref.get("divisor") or "1")
    if divisor == 0:
        raise EnvError(f"divisor of {resource!r} is zero")
    return str(math.ceil(parse_quantity(value) / divisor))


@dataclass(frozen=True)
class ObjectRef:
    """A ConfigMap or Secret a container's environment references."""

    kind: str  # "ConfigMap" or "Secret"
    name: str


def referenced_objects(container: Mapping[str, Any]) -> set[ObjectRef]:
    """Every ConfigMap and Secret the container's ``env`` and ``envFrom`` read."""
    refs: set[ObjectRef] = set()
    for source in container.get("envFrom") or []:
        if source.get("configMapRef"):
            refs.add(ObjectRef("ConfigMap", source["configMapRef"]["name"]))
        if source.get("secretRef"):
            refs.add(ObjectRef("Secret", source["secretRef"]["name"]))
    for var in container.get("env") or []:
        value_from = var.get("valueFrom") or {}
        if value_from.get("configMapKeyRef"):
            refs.add(ObjectRef("ConfigMap", value_from["configMapKeyRef"]["name"]))
        if value_from.get("secretKeyRef"):
            refs.add(ObjectRef("Secret", value_from["secretKeyRef"]["name"]))
    return refs


def object_data(kind: str, obj: Mapping[str, Any]) -> dict[str, str]:
    """The string data of a ConfigMap or Secret (Secret values are base64-decoded)."""
    data: dict[str, str] = {}
    if kind == "Secret":
        for key, value in (obj.get("data") or {}).items():
            data[key] = base64.b64decode(value).decode("utf-8", errors="replace")
        for key, value in (obj.get("stringData") or {}).items():
            data[key] = str(value)
    else:
        for key, value in (obj.get("binaryData") or {}).items():
            data[key] = base64.b64decode(value).decode("utf-8", errors="replace")
        data.update({k: str(v) for k, v in (obj.get("data") or {}).items()})
    return data


def _lookup_key(
    objects: Mapping[ObjectRef, Mapping[str, str] | None],
    kind: str,
    ref: Mapping[str, Any],
) -> str | None:
    name = ref.get("name", "")
    key = ref.get("key", "")
    optional = bool(ref.get("optional"))
    data = objects.get(ObjectRef(kind, name))
    label = "configmap" if kind == "ConfigMap" else "secret"
    if data is None:
        if optional:
            return None
        raise EnvError(f'{label} "{name}" not found')
    if key not in data:
        if optional:
            return None
        raise EnvError(f"couldn't find key {key} in {kind} {name}")
    return data[key]


def build_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    objects: Mapping[ObjectRef, Mapping[str, str] | None],
    base: Mapping[str, str],
    allocatable: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The complete, clean environment of one container process.

    ``base`` holds what the node gives every process (PATH, HOSTNAME, KUBECONFIG). ``envFrom``
    comes first, then ``env`` in order, each value expanded against the variables the Pod
    defined before it. Nothing else of the agent's environment is passed on, and no
    ``KUBERNETES_SERVICE_*`` variables are injected.
    """
    defined: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix") or ""
        for kind, field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            ref = source.get(field)
            if not ref:
                continue
            data = objects.get(ObjectRef(kind, ref.get("name", "")))
            if data is None:
                if ref.get("optional"):
                    continue
                label = "configmap" if kind == "ConfigMap" else "secret"
                raise EnvError(f'{label} "{ref.get("name", "")}" not found')
            for key, text in data.items():
                if _ENV_NAME.match(prefix + key):
                    defined[prefix + key] = text
    for var in container.get("env") or []:
        name = var["name"]
        value_from = var.get("valueFrom")
        value: str | None
        if not value_from:
            value = expand(str(var.get("value") or ""), defined.get)
        elif value_from.get("fieldRef"):
            value = resolve_field_ref(pod, value_from["fieldRef"]["fieldPath"])
        elif value_from.get("resourceFieldRef"):
            value = resolve_resource_field_ref(
                container, value_from["resourceFieldRef"], allocatable or {}
            )
        elif value_from.get("configMapKeyRef"):
            value = _lookup_key(objects, "ConfigMap", value_from["configMapKeyRef"])
        elif value_from.get("secretKeyRef"):
            value = _lookup_key(objects, "Secret", value_from["secretKeyRef"])
        else:
            raise EnvError(f"env {name}: unsupported valueFrom")
        if value is not None:
            defined[name] = value
    env = dict(base)
    env.update(defined)
    return env


def container_argv(
    container: Mapping[str, Any],
    env: Mapping[str, str],
    image_map: Mapping[str, list[str]],
) -> list[str] | None:
    """The expanded argv of a container, or None when the dev node cannot run its image.

    With a ``command`` the image is ignored. Without one the image (tag and digest stripped)
    is looked up in the image map; ``args`` are appended either way.
    """
    command: list[str] | None = container.get("command")
    if not command:
        mapped = image_map.get(image_name(str(container.get("image") or "")))
        if mapped is None:
            return None
        command = list(mapped)
    args: Iterable[str] = container.get("args") or []
    return [expand(str(part), env.get) for part in [*command, *args]]


def image_name(image: str) -> str:
    """An image reference without tag or digest (``reg:5000/a/b:1.2`` → ``reg:5000/a/b``)."""
    name = image.split("@", 1)[0]
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash:
        name = name[:colon]
    return name
