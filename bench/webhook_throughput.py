"""Webhook throughput: async calls per second and latency, beside the raw API create rate.

Each async webhook call creates one Execution, so the webhook cannot beat the rate at which
one API client creates Executions directly. That raw rate, measured in the same run at the same
concurrency, is the baseline (the limit; a ratio above 1 is noise of a shared machine), and the
ratio says how much of it the service keeps after HTTP, authentication (a bearer token, checked
in constant time), input building and its limits. Concurrency levels 1, 16 and 64 by default.
Each round also prints the CPU it cost per call (the webhook service, kube-apiserver, etcd and
this process as the load generator) and how busy the machine was, which says what limits it.
No operator runs during the measurement (the benchmark stops the one its environment starts),
so the Executions stay Pending and the figures are about the webhook path only.

    .venv/bin/python bench/webhook_throughput.py                   # a fresh dev cluster
    .venv/bin/python bench/webhook_throughput.py --kubeconfig /tmp/kdc-x/kubeconfig --calls 300
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from benchlib import (
    PYTHON,
    REPO,
    BenchEnv,
    CpuMeter,
    Execution,
    add_common_args,
    delete_namespace,
    new_namespace,
    save_results,
    summary,
)

from kumulus.devcluster.dev import DevPaths, stop_operator

TOKEN = "bench-token-0123456789abcdef"
BROKEN_FLOW = "def handler(system, this):\n    this is not python(\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_webhook(
    kubeconfig: Path, log: Path, max_in_flight: int
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "KUMULUS_WEBHOOK_PORT": str(port),
        "KUMULUS_WEBHOOK_MAX_IN_FLIGHT": str(max_in_flight),
        "KUMULUS_WEBHOOK_LOG_LEVEL": "WARNING",
    }
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [PYTHON, "-m", "kumulus.webhook"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2) as r:
                if r.status == 200:
                    return proc, base
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"the webhook service did not start; see {log}")


async def wait_served(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            async with session.options(url) as resp:
                if resp.status == 405:
                    return
            await asyncio.sleep(0.2)
    raise SystemExit(f"{url} was not served")


async def webhook_round(url: str, calls: int, concurrency: int) -> dict[str, Any]:
    """``calls`` async calls, ``concurrency`` at a time: rate, latency, refused calls."""
    latencies: list[float] = []
    refused = 0
    failed = 0
    queue = iter(range(calls))
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal refused, failed
            for i in queue:
                started = time.monotonic()
                async with session.post(url, data=f'{{"i": {i}}}', headers=headers) as resp:
                    await resp.read()
                    if resp.status == 202:
                        latencies.append(time.monotonic() - started)
                    elif resp.status == 503:
                        refused += 1
                    else:
                        failed += 1

        began = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        took = time.monotonic() - began
    return {
        "concurrency": concurrency,
        "accepted": len(latencies),
        "refused_503": refused,
        "other": failed,
        "seconds": round(took, 2),
        "per_second": round(len(latencies) / took, 1),
        "latency": summary(latencies),
    }


async def raw_round(env: BenchEnv, namespace: str, calls: int, concurrency: int) -> dict[str, Any]:
    """The baseline: one API client creating the same Executions directly."""
    client = env.client()
    latencies: list[float] = []
    queue = iter(range(calls))

    def manifest(i: int) -> Any:
        return Execution.from_dict(
            {
                "apiVersion": "kumulus.dev/v1alpha1",
                "kind": "Execution",
                "metadata": {"generateName": "raw-", "namespace": namespace},
                "spec": {"flowRef": {"name": "broken"}, "inputs": {"json": {"i": i}}},
            }
        )

    async def worker() -> None:
        for i in queue:
            started = time.monotonic()
            await client.create(manifest(i))
            latencies.append(time.monotonic() - started)

    began = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    took = time.monotonic() - began
    await client.close()
    return {
        "concurrency": concurrency,
        "created": len(latencies),
        "seconds": round(took, 2),
        "per_second": round(len(latencies) / took, 1),
        "latency": summary(latencies),
    }


METERED = ("webhook", "kube-apiserver", "etcd")


def metered(
    env: BenchEnv, webhook_pid: int, round_: Coroutine[Any, Any, dict[str, Any]]
) -> dict[str, Any]:
    """Run one round and add the CPU it cost per call: the webhook service, the API server,
    etcd and this process (the load generator), and how busy the whole machine was."""
    meter = CpuMeter(env, {"webhook": webhook_pid})
    client_before = time.process_time()
    result = asyncio.run(round_)
    client = time.process_time() - client_before
    used = meter.used()
    calls = result.get("accepted", result.get("created", 0)) or 1
    cpu = {name: used[name] for name in METERED if name in used}
    cpu["load generator"] = client
    result["cpu_ms_per_call"] = {name: round(v * 1000 / calls, 2) for name, v in cpu.items()}
    cores = os.cpu_count() or 1
    result["machine_busy"] = round(used["machine"] / (result["seconds"] * cores), 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--calls", type=int, default=400, help="calls per concurrency level")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated levels")
    parser.add_argument(
        "--max-in-flight", type=int, default=64, help="the service's admission limit"
    )
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    with BenchEnv("webhook", args) as env:
        if env.operator_pid is not None:
            # No operator: nobody processes the Executions, so neither side of the comparison
            # pays for the other's background work (each Execution stays Pending).
            stop_operator(DevPaths(env.state))
            env.operator_pid = None
        namespace = new_namespace(env, "bench-webhook")
        log = env.state / "logs" / "bench-webhook.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        proc, base = start_webhook(env.kubeconfig, log, args.max_in_flight)
        try:
            docs = [
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": "bench"},
                    "stringData": {"token": TOKEN},
                },
                {
                    "apiVersion": "kumulus.dev/v1alpha1",
                    "kind": "Flow",
                    "metadata": {"name": "broken"},
                    "spec": {"code": BROKEN_FLOW},
                },
                {
                    "apiVersion": "kumulus.dev/v1alpha1",
                    "kind": "Webhook",
                    "metadata": {"name": "bench"},
                    "spec": {
                        "flowRef": {"name": "broken"},
                        "auth": {"bearerTokenSecretRef": {"name": "bench"}},
                        "response": {"mode": "async"},
                    },
                },
            ]
            subprocess.run(
                ["kubectl", "apply", "-n", namespace, "-f", "-"],
                input=yaml.safe_dump_all(docs).encode(),
                env={**os.environ, "KUBECONFIG": str(env.kubeconfig)},
                check=True,
                stdout=subprocess.DEVNULL,
            )
            url = f"{base}/namespaces/{namespace}/webhooks/bench/call"
            asyncio.run(wait_served(url))
            asyncio.run(webhook_round(url, 20, 4))  # warm up both paths
            asyncio.run(raw_round(env, namespace, 20, 4))
            rows: list[dict[str, Any]] = []
            for level in levels:
                hook = metered(env, proc.pid, webhook_round(url, args.calls, level))
                raw = metered(env, proc.pid, raw_round(env, namespace, args.calls, level))
                ratio = (
                    hook["per_second"] / raw["per_second"] if raw["per_second"] else float("nan")
                )
                rows.append({"webhook": hook, "raw_api": raw, "ratio": round(ratio, 2)})
                hl, rl = hook["latency"], raw["latency"]
                print(
                    f"concurrency {level:3d}: webhook {hook['per_second']:7.1f}/s "
                    f"p50 {hl['p50'] * 1000:6.1f} ms p99 {hl['p99'] * 1000:6.1f} ms "
                    f"(503: {hook['refused_503']}, other: {hook['other']}) | raw API create "
                    f"{raw['per_second']:7.1f}/s p50 {rl['p50'] * 1000:6.1f} ms "
                    f"p99 {rl['p99'] * 1000:6.1f} ms | ratio {ratio:.2f}",
                    flush=True,
                )
                for side, result in (("webhook", hook), ("raw API", raw)):
                    per_call = ", ".join(
                        f"{name} {value:.2f}" for name, value in result["cpu_ms_per_call"].items()
                    )
                    print(
                        f"    {side:8s} CPU ms per call: {per_call}; machine busy "
                        f"{result['machine_busy'] * 100:.0f}%",
                        flush=True,
                    )
            save_results(args, "webhook_throughput", {"calls": args.calls, "levels": rows})
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            delete_namespace(env, namespace, wait=False)


if __name__ == "__main__":
    main()
