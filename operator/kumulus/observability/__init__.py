"""Observability of the operator processes: Prometheus metrics, their HTTP endpoint, JSON logs.

A package of its own so the API adapters (:mod:`kumulus.k8s`) can record metrics and the kopf
layer can serve them without either owning the definitions; it imports no API client and no
other Kumulus layer than the pure :mod:`kumulus.domain` (import-linter checks this).

* :mod:`kumulus.observability.metrics`: every metric of the operator and the connection
  executor, and the few functions that record them;
* :mod:`kumulus.observability.server`: ``GET /metrics`` on ``KUMULUS_METRICS_HOST:PORT``;
* :mod:`kumulus.observability.logs`: one JSON object per log line (``KUMULUS_LOG_FORMAT=json``).
"""
