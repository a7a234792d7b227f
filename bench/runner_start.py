"""What a runner container costs to start on the real node, step by step, in milliseconds.

Bare Pods of the runner image (no controller, see :func:`benchlib.bare_pod`), one at a time,
each running a shell that prints the wall clock as its first act and then starts the bare
runner command's imports in Python, timing itself. The container shares this machine's clock,
so the Pod's own prints and this client's watch line up:

* created -> container's first process (``date`` in the container): the API server, the
  scheduler, the kubelet, containerd (sandbox, network, the container) until the image's code
  runs;
* interpreter start: the first process -> Python's first line (the interpreter and ``site``);
* runner imports: ``import kumulus.runner.main, kumulus.runner.client, lightkube`` as the image
  ships it (no ``.pyc`` of the installed packages: ``pip install --no-compile`` and
  ``PYTHONDONTWRITEBYTECODE``), and the same imports again in the same container once their
  bytecode exists (``PYTHONPYCACHEPREFIX`` in the container's ``/tmp``): what compiling costs;
* exit (the end of the last import run) -> the Pod seen Succeeded by a watch: the kubelet
  noticing the end (it relists containers every second), the status update.

One more Pod runs ``python3 -X importtime`` of the same imports and the benchmark prints the
heaviest top-level modules. The runner's own first status patch from inside its container
(created -> Execution phase Running) is in ``bench/latency.py``.

    .venv/bin/python bench/runner_start.py [--samples 10] [--kubeconfig PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from typing import Any

import benchlib as bl

IMPORTS = "import kumulus.runner.main, kumulus.runner.client, lightkube"
TIMED = f"import time; t0 = time.time(); {IMPORTS}; print('py', t0, time.time())"
# The first line is the container's first process; the second the imports as shipped; the
# third writes their bytecode to /tmp (quietly); the fourth imports with that bytecode.
SCRIPT = (
    "date +start%s.%N; "
    f'python3 -c "{TIMED}"; '
    f'env -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX=/tmp/pyc python3 -c "{IMPORTS}"; '
    f'PYTHONPYCACHEPREFIX=/tmp/pyc python3 -c "{TIMED}"'
)
_IMPORTTIME = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)$")


async def run_pod(
    env: bl.BenchEnv, client: Any, namespace: str, name: str, command: list[str], within: float
) -> tuple[float, float, str]:
    """Create one bare Pod; return (created, seen ended) in wall-clock seconds and its log."""
    ended: dict[str, float] = {}

    def on_event(event: str, pod: dict[str, Any]) -> None:
        if (pod.get("metadata") or {}).get("name") != name:
            return
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            ended.setdefault("at", time.time())
            ended.setdefault("ok", phase == "Succeeded")

    async with bl.watching(bl.follow(client, bl.Pod, namespace, on_event)):
        created = time.time()
        await client.create(bl.Pod(bl.bare_pod(name, command)), namespace=namespace)
        if not await bl.until(lambda: "at" in ended, within, poll=0.01):
            raise RuntimeError(f"Pod {name} did not end in {within:.0f} s.")
    log = env.kubectl("logs", "-n", namespace, name)
    if not ended["ok"]:
        raise RuntimeError(f"Pod {name} failed: {log[-2000:]}")
    return created, ended["at"], log


def parse_timed(created: float, ended: float, log: str) -> dict[str, float]:
    """The steps of one sample, in seconds, from the Pod's prints and the client's times."""
    start = next(float(x[5:]) for x in log.split() if x.startswith("start"))
    runs = [line.split()[1:] for line in log.splitlines() if line.startswith("py ")]
    (t0, t1), (c0, c1) = ([float(v) for v in r] for r in runs[:2])
    return {
        "create_to_first_process": start - created,
        "interpreter_start": t0 - start,
        "runner_imports": t1 - t0,
        "runner_imports_with_bytecode": c1 - c0,
        "exit_to_seen_ended": ended - c1,
    }


def heaviest_imports(log: str, top: int) -> list[tuple[str, float]]:
    """Top-level modules of ``-X importtime`` by cumulative milliseconds."""
    found = []
    for line in log.splitlines():
        match = _IMPORTTIME.match(line)
        if match and not match[3]:  # no indent: imported by the command itself
            found.append((match[4], int(match[2]) / 1000))
    return sorted(found, key=lambda kv: -kv[1])[:top]


async def run(env: bl.BenchEnv, args: argparse.Namespace) -> dict[str, Any]:
    namespace = bl.new_namespace(env, "runner-start")
    await bl.wait_service_account(env, namespace)
    client = env.client()
    samples: list[dict[str, float]] = []
    for i in range(args.samples + 1):  # the first one is a warm-up (page cache, image)
        created, ended, log = await run_pod(
            env, client, namespace, f"start-{i}", ["sh", "-c", SCRIPT], args.timeout
        )
        if i > 0:
            samples.append(parse_timed(created, ended, log))
        await asyncio.sleep(args.gap)
    _, _, log = await run_pod(
        env,
        client,
        namespace,
        "importtime",
        ["python3", "-X", "importtime", "-c", IMPORTS],
        args.timeout,
    )
    await client.close()
    bl.delete_namespace(env, namespace, wait=False)
    steps = {key: bl.summary([s[key] for s in samples]) for key in samples[0]}
    return {
        "samples": args.samples,
        "image": bl.RUNNER_IMAGE,
        "steps": steps,
        "heaviest_imports_ms": heaviest_imports(log, args.top),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bl.add_common_args(parser)
    parser.add_argument("--samples", type=int, default=10, help="Pods measured, one at a time")
    parser.add_argument("--gap", type=float, default=0.5, help="seconds between Pods")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per Pod")
    parser.add_argument("--top", type=int, default=10, help="heaviest imports to print")
    args = parser.parse_args()
    with bl.BenchEnv("runner-start", args) as env:
        result = asyncio.run(run(env, args))
    print(f"Runner container start ({args.samples} bare Pods of {result['image']}, one at a time)")
    print(f"{'step':<32}{'p50':>10}{'p90':>10}{'p99':>10}")
    for key, s in result["steps"].items():
        print(f"{key:<32}{bl.ms(s['p50']):>10}{bl.ms(s['p90']):>10}{bl.ms(s['p99']):>10}")
    print("Heaviest top-level imports (python3 -X importtime, as shipped, cumulative):")
    for module, took in result["heaviest_imports_ms"]:
        print(f"  {module:<40}{took:8.1f} ms")
    bl.save_results(args, "runner_start", result)


if __name__ == "__main__":
    main()
