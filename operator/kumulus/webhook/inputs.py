"""The flow's ``input_value`` out of an HTTP request.

Parsing and filtering are pure (:func:`kumulus.domain.webhook.parse_body` and
:func:`~kumulus.domain.webhook.build_inputs`); this module feeds them an aiohttp request's
method, sub-path, query pairs and header pairs (repeats kept).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from kumulus.domain import webhook as rules


def query_pairs(request: web.Request) -> list[tuple[str, str]]:
    return [(str(k), str(v)) for k, v in request.rel_url.query.items()]


def flow_inputs(request: web.Request, subpath: str, parsed: rules.ParsedBody) -> dict[str, Any]:
    """``{method, path, query, headers, json}`` (+ ``text``) for the Execution."""
    headers = [(str(k), str(v)) for k, v in request.headers.items()]
    return rules.build_inputs(request.method, subpath, query_pairs(request), headers, parsed)
