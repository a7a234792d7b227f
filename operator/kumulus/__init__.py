"""Kumulus: Cloudomation's execution model, native to Kubernetes.

The package is split into layers kept apart by import-linter (see CONTRIBUTING.md):
``api`` (schema) < ``domain`` (pure logic) < ``k8s`` (API adapters) < ``handlers`` (kopf);
``runner`` and the top-level ``flow_api`` run inside execution Pods; ``webhook`` is the
HTTP service; ``devcluster`` is development tooling only.
"""

__version__ = "0.1.0"

GROUP = "kumulus.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
