"""Flood: far more concurrent calls than the service admits at once.

A service of its own with ``KUMULUS_WEBHOOK_MAX_IN_FLIGHT=2`` gets 240 async calls, 60 at a
time. Properties: some calls are refused with 503 and ``Retry-After`` (overload is answered,
not queued), every answer is 202 or 503, the process stays up and healthy, every 202 names an
Execution that exists, and no Execution exists without its 202. The Flow has a syntax error
so its Executions end at once without a Pod: the flood loads the service and the API server,
not the node. The service's resident memory before and after is printed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from tests.e2e.webhook_service import (
    WebhookService,
    call,
    count_executions,
    install_webhook_rbac,
    sa_kubeconfig,
    start_service,
    wait_served,
)

pytestmark = pytest.mark.e2e

CALLS = 240
CONCURRENCY = 60


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.fixture(scope="module")
def small_service(
    kubeconfig: Path, kubectl: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebhookService]:
    from kumulus.devcluster.dev import install_kumulus

    install_kumulus(kubeconfig)
    install_webhook_rbac(kubectl)
    home = tmp_path_factory.mktemp("flood")
    service = start_service(
        sa_kubeconfig(kubectl, kubeconfig, home / "kubeconfig"),
        "default",
        home / "webhook.log",
        {"KUMULUS_WEBHOOK_MAX_IN_FLIGHT": "2", "KUMULUS_WEBHOOK_RETRY_AFTER_SECONDS": "2"},
    )
    yield service
    service.stop()


async def flood(url: str) -> list[tuple[int, dict[str, Any] | None, str | None]]:
    limit = asyncio.Semaphore(CONCURRENCY)
    connector = aiohttp.TCPConnector(limit=CONCURRENCY, force_close=True)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(i: int) -> tuple[int, dict[str, Any] | None, str | None]:
            async with limit, session.post(url, json={"i": i}) as resp:
                body = await resp.json(content_type=None)
                return resp.status, body, resp.headers.get("Retry-After")

        return await asyncio.gather(*(one(i) for i in range(CALLS)))


def test_flood_is_answered_with_503_and_every_202_has_its_execution(
    small_service: WebhookService, kubectl: Any
) -> None:
    namespace = f"kt-flood-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", namespace)
    try:
        docs = [
            {
                "apiVersion": "kumulus.dev/v1alpha1",
                "kind": "Flow",
                "metadata": {"name": "cheap"},
                "spec": {"code": "def handler(system, this):\n    this is not python(\n"},
            },
            {
                "apiVersion": "kumulus.dev/v1alpha1",
                "kind": "Webhook",
                "metadata": {"name": "flooded"},
                "spec": {
                    "flowRef": {"name": "cheap"},
                    "auth": {"allowUnauthenticated": True},
                    "response": {"mode": "async"},
                },
            },
        ]
        kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(docs))
        url = small_service.url(namespace, "flooded")
        wait_served(url)
        assert small_service.proc is not None
        before = rss_kib(small_service.proc.pid)

        results = asyncio.run(flood(url))

        after = rss_kib(small_service.proc.pid)
        codes = [status for status, _, _ in results]
        accepted = sorted(
            str(body["name"]) for status, body, _ in results if status == 202 and body
        )
        print(
            f"\n{codes.count(202)} accepted, {codes.count(503)} refused with 503 of {CALLS} "
            f"(concurrency {CONCURRENCY}, max in flight 2); RSS {before} KiB -> {after} KiB"
        )
        assert set(codes) <= {202, 503}, sorted(set(codes))
        assert codes.count(503) > 0
        assert codes.count(202) > 0
        assert {retry for status, _, retry in results if status == 503} == {"2"}
        assert small_service.alive()
        assert call("GET", f"{small_service.base}/healthz").status == 200
        assert len(set(accepted)) == len(accepted)
        assert count_executions(kubectl, namespace, "flooded") == accepted
    finally:
        kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)
