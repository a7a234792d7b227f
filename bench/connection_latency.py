"""Connection latency and throughput: a REST call through a Connection vs the same call direct.

Measures, on a fresh dev cluster (or ``--kubeconfig``) with the operator from this checkout and
an aiohttp server started by this script on 127.0.0.1:

1. **Flow call to result**: inside one flow, ``--calls`` sequential
   ``this.connect('api', path=...)`` calls (each a CONNECTION child Execution: created by the
   runner, run by the connection executor, its phase seen by the runner's watch), timed in
   the flow; the baseline is the same number of direct HTTP requests from the same Pod
   (``urllib``), timed in the same flow. Printed: p50/p90/max of each, and the overhead.
2. **Fan-out from a flow**: ``--parallel`` (default 50) ``this.connect(..., wait=False)`` then
   ``this.wait_for(...)``, timed in the flow.
3. **Burst by hand**: ``--parallel`` CONNECTION Executions created at once with the API; time
   until all succeeded and create-to-succeeded p50/p99 (watched), beside the baseline of the
   same number of concurrent direct HTTP requests from this script.

    .venv/bin/python bench/connection_latency.py [--calls 20] [--parallel 50] [--kubeconfig PATH]

The executor's concurrency is the setting ``connection_concurrency`` (default 20); pass
``--operator-env KUMULUS_CONNECTION_CONCURRENCY=50`` to change it.
"""

from __future__ import annotations

import argparse
import asyncio
import textwrap
import threading
import time
from typing import Any

import benchlib as bl
import httpx2 as httpx
from aiohttp import web

Connection: Any = bl.create_namespaced_resource(
    "kumulus.dev", "v1alpha1", "Connection", "connections"
)

FLOW = textwrap.dedent(
    """
    import time
    import urllib.request


    def handler(system, this, inputs):
        url, calls, parallel = inputs['url'], inputs['calls'], inputs['parallel']
        direct, via = [], []
        for i in range(calls):
            t = time.monotonic()
            urllib.request.urlopen(f'{url}/direct/{i}').read()
            direct.append(time.monotonic() - t)
        for i in range(calls):
            t = time.monotonic()
            out = this.connect('api', path=f'/via/{i}').get('output_value')
            via.append(time.monotonic() - t)
            assert out['status_code'] == 200
        t = time.monotonic()
        kids = [this.connect('api', path=f'/fan/{i}', wait=False) for i in range(parallel)]
        this.wait_for(*kids)
        fan = time.monotonic() - t
        this.save(output_value={'direct': direct, 'via': via, 'fan_out_seconds': fan})
    """
)


class Server:
    """The REST endpoint every call hits (a tiny JSON answer), on its own thread and loop so
    the benchmark's own watches never delay it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def ok(request: web.Request) -> web.Response:
            return web.json_response({"ok": True, "path": request.path})

        async def start() -> None:
            app = web.Application()
            app.router.add_get("/{tail:.*}", ok)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", 0).start()
            self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

        self.loop.run_until_complete(start())
        self._ready.set()
        self.loop.run_forever()

    def __enter__(self) -> Server:
        self._thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)


def flow_docs(url: str, calls: int, parallel: int) -> list[dict[str, Any]]:
    api = "kumulus.dev/v1alpha1"
    return [
        {
            "apiVersion": api,
            "kind": "Connection",
            "metadata": {"name": "api"},
            "spec": {"type": "REST", "values": {"url": url}},
        },
        {
            "apiVersion": api,
            "kind": "Flow",
            "metadata": {"name": "latency"},
            "spec": {"code": FLOW},
        },
        {
            "apiVersion": api,
            "kind": "Execution",
            "metadata": {"name": "latency-1"},
            "spec": {
                "type": "FLOW",
                "flowRef": {"name": "latency"},
                "inputs": {"url": url, "calls": calls, "parallel": parallel},
            },
        },
    ]


async def from_flow(env: bl.BenchEnv, url: str, calls: int, parallel: int) -> dict[str, Any]:
    namespace = bl.new_namespace(env, "connlat-flow")
    client = env.client()
    docs = flow_docs(url, calls, parallel)
    await client.create(Connection(docs[0]), namespace=namespace)
    await client.create(bl.Flow(docs[1]), namespace=namespace)
    marks = bl.Milestones()
    async with bl.watching(
        bl.follow(client, bl.Execution, namespace, bl.execution_milestones(marks))
    ):
        await client.create(bl.Execution(docs[2]), namespace=namespace)
        await bl.until(lambda: "ended" in marks.times.get("latency-1", {}), 600, poll=0.2)
    obj = await client.get(bl.Execution, "latency-1", namespace=namespace)
    await client.close()
    status = obj.get("status") or {}
    if status.get("phase") != "Succeeded":
        raise RuntimeError(f"the latency flow ended {status.get('phase')}: {status}")
    out = status["outputs"]
    bl.delete_namespace(env, namespace, wait=False)
    return {
        "direct_http": bl.summary(out["direct"]),
        "this_connect": bl.summary(out["via"]),
        "fan_out_parallel": parallel,
        "fan_out_seconds": round(out["fan_out_seconds"], 3),
    }


async def burst(env: bl.BenchEnv, url: str, n: int) -> dict[str, Any]:
    namespace = bl.new_namespace(env, "connlat-burst")
    client = env.client()
    bodies = [
        {
            "apiVersion": "kumulus.dev/v1alpha1",
            "kind": "Execution",
            "metadata": {"name": f"c-{i}"},
            "spec": {
                "type": "CONNECTION",
                "connection": {"type": "REST", "inputs": {"url": f"{url}/burst/{i}"}},
            },
        }
        for i in range(n)
    ]
    marks = bl.Milestones()
    async with bl.watching(
        bl.follow(client, bl.Execution, namespace, bl.execution_milestones(marks))
    ):
        start = time.monotonic()
        await bl.create_all(
            client,
            bl.Execution,
            namespace,
            bodies,
            concurrency=n,
            on_created=lambda name, at: marks.mark(name, "created", at),
        )
        done = await bl.until(lambda: marks.count("ended") >= n, 600, poll=0.1)
    elapsed = marks.last("ended") - start if done else time.monotonic() - start
    await client.close()
    bl.delete_namespace(env, namespace, wait=False)
    return {
        "n": n,
        "all_ended": done,
        "phases": marks.phases(),
        "seconds_until_all_ended": round(elapsed, 3),
        "per_second": round(marks.count("ended") / elapsed, 2) if elapsed else None,
        "create_to_ended": bl.summary(marks.deltas("created", "ended")),
    }


async def direct_burst(url: str, n: int) -> dict[str, Any]:
    """The baseline: ``n`` concurrent requests from this process (one client, a pool)."""
    times: list[float] = []
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(trust_env=False, limits=limits, timeout=60.0) as client:

        async def one(i: int) -> None:
            t = time.monotonic()
            response = await client.get(f"{url}/baseline/{i}")
            response.raise_for_status()
            times.append(time.monotonic() - t)

        start = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(n)))
        elapsed = time.monotonic() - start
    return {"n": n, "seconds": round(elapsed, 4), "request": bl.summary(times)}


async def run(env: bl.BenchEnv, args: argparse.Namespace) -> dict[str, Any]:
    with Server() as server:
        url = server.url
        print(f"REST endpoint {url}; {args.calls} sequential calls, {args.parallel} parallel.")
        flow = await from_flow(env, url, args.calls, args.parallel)
        by_hand = await burst(env, url, args.parallel)
        baseline = await direct_burst(url, args.parallel)
    return {"flow": flow, "burst": by_hand, "direct_burst": baseline}


def show(r: dict[str, Any]) -> None:
    flow, by_hand, base = r["flow"], r["burst"], r["direct_burst"]
    via, direct = flow["this_connect"], flow["direct_http"]
    print("Flow call to result (sequential, timed inside the flow):")
    print(
        f"  this.connect('api')    p50 {bl.ms(via['p50'])}  p90 {bl.ms(via['p90'])}"
        f"  max {bl.ms(via['max'])}"
    )
    print(
        f"  direct HTTP (baseline) p50 {bl.ms(direct['p50'])}  p90 {bl.ms(direct['p90'])}"
        f"  max {bl.ms(direct['max'])}"
    )
    print(f"  overhead p50 {bl.ms(via['p50'] - direct['p50'])}")
    n = flow["fan_out_parallel"]
    seconds = flow["fan_out_seconds"]
    print(f"Fan-out from a flow: {n} this.connect(wait=False) + wait_for in {seconds} s")
    print(
        f"Burst by hand: {by_hand['n']} CONNECTION Executions all ended in "
        f"{by_hand['seconds_until_all_ended']} s = {by_hand['per_second']}/s, create->ended p50 "
        f"{bl.ms(by_hand['create_to_ended']['p50'])} p99 {bl.ms(by_hand['create_to_ended']['p99'])}"
        f"  phases {by_hand['phases']}"
    )
    print(
        f"  baseline: {base['n']} concurrent direct requests in {base['seconds']} s "
        f"(ratio {by_hand['seconds_until_all_ended'] / base['seconds']:.0f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bl.add_common_args(parser)
    parser.add_argument("--calls", type=int, default=20, help="sequential calls (default 20)")
    parser.add_argument("--parallel", type=int, default=50, help="parallel calls (default 50)")
    args = parser.parse_args()
    with bl.BenchEnv("connection-latency", args) as env:
        result = asyncio.run(run(env, args))
        show(result)
        bl.save_results(
            args,
            "connection-latency",
            {
                "calls": args.calls,
                "parallel": args.parallel,
                "operator_env": env.operator_env,
                **result,
            },
        )


if __name__ == "__main__":
    main()
