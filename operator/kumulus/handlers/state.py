"""The operator process's single :class:`~kumulus.k8s.engine.Engine` (created lazily)."""

from __future__ import annotations

from kumulus.domain.settings import Settings
from kumulus.k8s.engine import Engine

_engine: Engine | None = None


def engine() -> Engine:
    """The engine of this process, configured from ``KUMULUS_*`` environment variables."""
    global _engine
    if _engine is None:
        _engine = Engine(Settings.from_env())
    return _engine
