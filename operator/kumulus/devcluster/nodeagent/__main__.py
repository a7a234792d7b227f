"""Command line of the dev node agent (started by ``python -m kumulus.devcluster up``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

from kumulus.devcluster.nodeagent.agent import AgentConfig, NodeAgent


def default_path() -> str:
    """The venv's bin directory first (kumulus-runner, kopf), then the agent's own PATH."""
    parts = [os.path.dirname(sys.executable), *os.environ.get("PATH", "").split(os.pathsep)]
    seen: list[str] = []
    for part in parts:
        if part and part not in seen:
            seen.append(part)
    return os.pathsep.join(seen)


def parse_args(argv: list[str] | None = None) -> AgentConfig:
    """Parse the fixed command line the launcher uses."""
    parser = argparse.ArgumentParser(
        prog="python -m kumulus.devcluster.nodeagent",
        description="Kubelet stand-in for the kumulus dev cluster: runs Pods as local processes.",
    )
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--node-name", default="kumulus-dev")
    parser.add_argument("--kubelet-port", type=int, required=True)
    parser.add_argument("--tls-cert", type=Path, required=True)
    parser.add_argument("--tls-key", type=Path, required=True)
    parser.add_argument("--client-ca", type=Path, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument(
        "--image-map", type=Path, help="JSON file: image name without tag -> command list"
    )
    parser.add_argument("--path", help="PATH of Pod processes (default: venv bin + own PATH)")
    args = parser.parse_args(argv)
    image_map: dict[str, list[str]] = {}
    if args.image_map is not None:
        loaded = json.loads(args.image_map.read_text())
        image_map = {str(k): [str(part) for part in v] for k, v in loaded.items()}
    return AgentConfig(
        kubeconfig=args.kubeconfig,
        node_name=args.node_name,
        kubelet_port=args.kubelet_port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        client_ca=args.client_ca,
        state_dir=args.state_dir.resolve(),
        image_map=image_map,
        path=args.path or default_path(),
    )


async def _main(config: AgentConfig) -> None:
    agent = NodeAgent(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop)
    await agent.run()


def main(argv: list[str] | None = None) -> None:
    """Run the node agent until SIGTERM/SIGINT."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "httpx2", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    config = parse_args(argv)
    asyncio.run(_main(config))


if __name__ == "__main__":
    main()
