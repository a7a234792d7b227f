"""Red team: what flow code can reach of the dev cluster itself (issue 13, item 13).

On the old process-based node agent a runner ran as root on this machine and could read the
cluster's admin kubeconfig. On the real node it is a container of the runner image. As flow code
(the runner's own identity, in its own container), these tests try to:

* read the admin kubeconfig and the cluster's CA key at their paths on this machine;
* list the node's Pods and reach ``exec`` through the kubelet's API with the runner's token,
  which would hand it every other Pod on the node.

Each attempt must fail, and the flow reports how, so the test asserts the refusal itself.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

API = "kumulus.dev/v1alpha1"
TERMINAL = ("Succeeded", "Failed", "Cancelled")

PROBE = """
import json, os, ssl, urllib.error, urllib.request

def _read(path):
    try:
        with open(path, 'rb') as f:
            f.read(1)
        return 'read'
    except OSError as err:
        return type(err).__name__

def _kubelet(url, data=None):
    token = open('/var/run/secrets/kubernetes.io/serviceaccount/token').read()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(
        url, data=data, headers={'Authorization': 'Bearer ' + token}
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError as err:
        return type(err).__name__

def handler(system, this):
    inputs = this.get('input_value')
    node = inputs['node']
    this.save(output_value={
        'uid': os.getuid(),
        'kubeconfig': _read(inputs['kubeconfig']),
        'ca_key': _read(inputs['ca_key']),
        'pods': _kubelet(f'https://{node}:10250/pods'),
        'exec': _kubelet(f'https://{node}:10250/run/kube-system/none/none?cmd=id', b''),
    })
    return this.success('probed')
"""


def test_flow_code_cannot_read_the_cluster_credentials_or_use_the_kubelet(
    operator: Any,
    kubeconfig: Path,
    namespace: str,
    apply: Callable[..., None],
    wait_phase: Callable[..., dict[str, Any]],
    kubectl: Callable[..., Any],
) -> None:
    nodes = json.loads(kubectl("get", "nodes", "-o", "json").stdout)["items"]
    addresses = {a["type"]: a["address"] for a in nodes[0]["status"]["addresses"]}
    state = kubeconfig.resolve().parent
    assert (state / "pki" / "ca.key").is_file(), "the dev cluster's CA key is not where expected"
    apply(
        [
            {
                "apiVersion": API,
                "kind": "Flow",
                "metadata": {"name": "probe"},
                "spec": {"code": textwrap.dedent(PROBE)},
            },
            {
                "apiVersion": API,
                "kind": "Execution",
                "metadata": {"name": "probe-1"},
                "spec": {
                    "type": "FLOW",
                    "flowRef": {"name": "probe"},
                    "inputs": {
                        "node": addresses["InternalIP"],
                        "kubeconfig": str(kubeconfig.resolve()),
                        "ca_key": str(state / "pki" / "ca.key"),
                    },
                },
            },
        ],
        namespace,
    )
    ex = wait_phase("probe-1", namespace, TERMINAL, timeout=120)
    assert ex["status"]["phase"] == "Succeeded", ex["status"]
    out = ex["status"]["outputs"]
    assert out["uid"] == 10001
    # This machine's files are not in the container at all.
    assert out["kubeconfig"] == "FileNotFoundError", out
    assert out["ca_key"] == "FileNotFoundError", out
    # The kubelet authenticates the token but authorizes nothing for it (webhook mode).
    assert out["pods"] == 403, out
    assert out["exec"] == 403, out
