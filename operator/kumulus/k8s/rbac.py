"""Runner identity per namespace: ServiceAccount ``kumulus-runner`` + RoleBinding.

When ``manage_runner_rbac`` is on, the operator calls :func:`ensure_runner_rbac` before the
first runner Pod of a namespace. The RoleBinding binds the ClusterRole ``kumulus-runner``
(``config/rbac/runner-clusterrole.yaml``) in that namespace only; the operator's own
ClusterRole has ``bind`` on exactly that ClusterRole (by ``resourceNames``).
"""

from __future__ import annotations

import logging

from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.models.rbac_v1 import RoleRef, Subject
from lightkube.resources.core_v1 import ServiceAccount
from lightkube.resources.rbac_authorization_v1 import RoleBinding

from kumulus.k8s.resources import client, status_code

log = logging.getLogger(__name__)

LABELS = {"app.kubernetes.io/managed-by": "kumulus"}


async def ensure_runner_rbac(namespace: str, service_account: str, cluster_role: str) -> None:
    """Create the runner ServiceAccount and its RoleBinding in ``namespace`` if missing."""
    sa = ServiceAccount(
        metadata=ObjectMeta(name=service_account, namespace=namespace, labels=dict(LABELS))
    )
    binding = RoleBinding(
        metadata=ObjectMeta(name=service_account, namespace=namespace, labels=dict(LABELS)),
        roleRef=RoleRef(
            apiGroup="rbac.authorization.k8s.io", kind="ClusterRole", name=cluster_role
        ),
        subjects=[Subject(kind="ServiceAccount", name=service_account, namespace=namespace)],
    )
    for obj, kind in ((sa, "ServiceAccount"), (binding, "RoleBinding")):
        try:
            await client().create(obj)
            log.info("Created %s %s/%s for runner Pods.", kind, namespace, service_account)
        except ApiError as err:
            if status_code(err) != 409:
                raise
