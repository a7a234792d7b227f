"""Command line of the dev cluster launcher: ``python -m kumulus.devcluster up|down|status|env``.

``stop-component``, ``start-component`` and ``restart-component NAME`` act on one component of a
running cluster (the fault tests crash the kubelet and restart the API server with them).

The entry point ``make cluster-up`` and friends call; the work happens in
:mod:`kumulus.devcluster.launcher`.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path

from kumulus.devcluster.launcher import ORDER, Launcher, LaunchError, log_tail, status_lines
from kumulus.devcluster.paths import DEFAULT_STATE_DIR


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kumulus.devcluster",
        description="Run a real Kubernetes control plane and a real node (kubelet, containerd).",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="state directory (default: .devcluster in the current directory)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", parents=[common], help="start (or reuse) the dev cluster")
    up.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for readiness (default 300)"
    )
    sub.add_parser("down", parents=[common], help="stop the dev cluster and remove its state")
    sub.add_parser("status", parents=[common], help="show components; exit 1 if not running")
    sub.add_parser("env", parents=[common], help="print the export KUBECONFIG=... line")
    one = argparse.ArgumentParser(add_help=False, parents=[common])
    one.add_argument("component", choices=ORDER, help="which component")
    stopping = argparse.ArgumentParser(add_help=False)
    stopping.add_argument(
        "--signal",
        default="KILL",
        choices=["KILL", "TERM", "INT"],
        help="signal to stop it with (default KILL: a crash)",
    )
    sub.add_parser(
        "stop-component", parents=[one, stopping], help="stop one component (fault tests)"
    )
    sub.add_parser(
        "start-component", parents=[one], help="start a stopped component again, wait until healthy"
    )
    restart = sub.add_parser(
        "restart-component", parents=[one, stopping], help="stop, then start one component"
    )
    restart.add_argument(
        "--down-seconds", type=float, default=0.0, help="how long it stays down (default 0)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    launcher = Launcher(args.state_dir, timeout=getattr(args, "timeout", 300.0))
    if args.command == "up":
        try:
            launcher.up()
        except LaunchError as exc:
            print(f"The dev cluster failed to start: {exc}", file=sys.stderr)
            if exc.component:
                log = launcher.layout.log(exc.component)
                print(f"--- last lines of {log} ---", file=sys.stderr)
                print(log_tail(log), file=sys.stderr)
            return 1
        except subprocess.CalledProcessError as exc:
            print(f"The binary build failed: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "down":
        try:
            if not launcher.down():
                print(f"No dev cluster was running in {launcher.state_dir}.")
        except LaunchError as exc:
            print(str(exc), file=sys.stderr)
            return 1
        return 0
    if args.command in ("stop-component", "start-component", "restart-component"):
        try:
            if args.command == "start-component":
                launcher.start_component(args.component)
            elif args.command == "stop-component":
                launcher.stop_component(args.component, signal.Signals[f"SIG{args.signal}"])
            else:
                launcher.restart_component(
                    args.component, signal.Signals[f"SIG{args.signal}"], args.down_seconds
                )
        except LaunchError as exc:
            print(str(exc), file=sys.stderr)
            return 1
        return 0
    if args.command == "status":
        for line in status_lines(launcher):
            print(line)
        record = launcher.record()
        return 0 if record is not None and launcher.healthy(record) else 1
    # env
    kubeconfig = launcher.layout.admin_kubeconfig
    if not kubeconfig.exists():
        print(f"No dev cluster in {launcher.state_dir}: run `make cluster-up`.", file=sys.stderr)
        return 1
    print(f"export KUBECONFIG={kubeconfig}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
