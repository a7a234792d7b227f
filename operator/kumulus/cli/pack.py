"""``kumulus flow pack flow.py``: a Flow manifest from a Python file, for GitOps.

Flows live best as ``.py`` files (linted, tested, diffed); the cluster wants a Flow resource.
``pack`` turns one into the other: it checks the file compiles and defines its handler, names
the Flow after the file and takes the description from the module docstring. With
``--config-map`` it emits a ConfigMap holding the source and a Flow reading it through
``spec.codeFrom`` (the form kustomize's ``configMapGenerator`` produces, see docs/gitops.md).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import yaml

from kumulus import API_VERSION
from kumulus.domain.flowcode import check_code

Obj = dict[str, Any]
MAX_NAME = 253


class PackError(Exception):
    """The file cannot be packed (unreadable, does not compile, no handler, bad name)."""


def flow_name(path: Path) -> str:
    """A DNS-1123 name from a file name: ``Send_Report.py`` -> ``send-report``."""
    name = re.sub(r"[^a-z0-9.-]+", "-", path.stem.lower()).strip("-.")
    name = re.sub(r"-{2,}", "-", name)[:MAX_NAME].strip("-.")
    if not name:
        raise PackError(f"Cannot make a Flow name from {path.name}; pass --name.")
    return name


_DNS = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def docstring_summary(code: str) -> str | None:
    """The first paragraph of the module docstring, on one line."""
    try:
        doc = ast.get_docstring(ast.parse(code))
    except SyntaxError:
        return None
    if not doc:
        return None
    first = doc.strip().split("\n\n", 1)[0]
    return " ".join(first.split())[:4096] or None


def pack(
    code: str,
    name: str,
    *,
    handler: str = "handler",
    description: str | None = None,
    namespace: str | None = None,
    config_map: str | None = None,
    filename: str = "flow.py",
) -> list[Obj]:
    """The manifests for one flow: ``[Flow]`` or ``[ConfigMap, Flow]``."""
    if not _DNS.match(name) or len(name) > MAX_NAME:
        raise PackError(f"{name!r} is not a valid Flow name (lowercase letters, digits, '-', '.').")
    check = check_code(code, handler, filename)
    if not check.ok:
        raise PackError(f"{filename}: {check.message}")
    meta: Obj = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    spec: Obj = {}
    desc = description if description is not None else docstring_summary(code)
    if desc:
        spec["description"] = desc
    if handler != "handler":
        spec["handler"] = handler
    docs: list[Obj] = []
    if config_map:
        key = Path(filename).name
        cm_meta: Obj = {"name": config_map}
        if namespace:
            cm_meta["namespace"] = namespace
        docs.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": cm_meta, "data": {key: code}}
        )
        spec["codeFrom"] = {"configMapKeyRef": {"name": config_map, "key": key}}
    else:
        spec["code"] = code
    docs.append({"apiVersion": API_VERSION, "kind": "Flow", "metadata": meta, "spec": spec})
    return docs


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (the flow's code) as literal blocks."""


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(docs: list[Obj]) -> str:
    """The manifests as one YAML stream; code stays readable as a ``|`` block."""
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=4096)


def pack_file(
    path: Path,
    *,
    name: str | None = None,
    handler: str = "handler",
    description: str | None = None,
    namespace: str | None = None,
    config_map: str | None = None,
) -> list[Obj]:
    """Read ``path`` and :func:`pack` it."""
    try:
        code = path.read_text(encoding="utf-8")
    except OSError as err:
        raise PackError(f"Cannot read {path}: {err.strerror}.") from None
    except UnicodeDecodeError:
        raise PackError(f"{path} is not UTF-8 text.") from None
    return pack(
        code,
        name or flow_name(path),
        handler=handler,
        description=description,
        namespace=namespace,
        config_map=config_map,
        filename=path.name,
    )
