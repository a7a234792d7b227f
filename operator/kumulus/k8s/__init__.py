"""Kubernetes API adapters of the operator (lightkube, async).

Thin functions over one shared :class:`lightkube.AsyncClient`; each turns the API's objects
into plain dicts for the pure domain layer and maps the expected API errors (``AlreadyExists``,
``NotFound``, ``Conflict``) to return values, so the handlers stay free of HTTP details.
"""
