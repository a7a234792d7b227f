"""Runs Kumulus itself on the dev cluster from this checkout: ``make dev-up`` and ``make demo``.

The launcher (``python -m kumulus.devcluster``) only brings up Kubernetes. This module puts
Kumulus on it the way a developer wants while editing code: the CRDs and RBAC applied from the
checkout, and the operator running as a local background process (not a Pod), so a restart
picks up the code at once. Its log goes to ``<state>/logs/operator.log``. The webhook service
runs beside it the same way on a loopback port (log ``<state>/logs/webhook.log``, base URL in
``<state>/webhook-url``).

    python -m kumulus.devcluster.dev up    [--state-dir .devcluster]
    python -m kumulus.devcluster.dev down  [--state-dir .devcluster]
    python -m kumulus.devcluster.dev demo  [--state-dir .devcluster]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class DevPaths:
    """Where the dev processes keep their files inside a dev cluster's state folder."""

    state: Path

    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    @property
    def operator_pid(self) -> Path:
        return self.state / "operator.pid"

    @property
    def operator_log(self) -> Path:
        return self.state / "logs" / "operator.log"

    @property
    def webhook_pid(self) -> Path:
        return self.state / "webhook.pid"

    @property
    def webhook_log(self) -> Path:
        return self.state / "logs" / "webhook.log"

    @property
    def webhook_url(self) -> Path:
        """The webhook service's base URL (``http://127.0.0.1:<port>``), written by dev-up."""
        return self.state / "webhook-url"


def kubectl(kubeconfig: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Runs kubectl against the dev cluster and returns its output."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    done = subprocess.run(["kubectl", *args], env=env, capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)} failed:\n{done.stderr.strip()}")
    return done


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# The cluster-wide RBAC the operator needs before it starts; the per-namespace runner
# ServiceAccount and RoleBinding are created by the operator itself (manage_runner_rbac).
RBAC_MANIFESTS = (
    "runner-clusterrole.yaml",
    "operator-clusterrole.yaml",
    "connection-executor-clusterrole.yaml",
)


def install_kumulus(kubeconfig: Path) -> None:
    """Applies the generated CRDs and the cluster RBAC, and waits until the CRDs are served."""
    kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    kubectl(
        kubeconfig, "wait", "--for=condition=Established", "--timeout=60s", "-f", str(REPO / "crds")
    )
    for name in RBAC_MANIFESTS:
        manifest = REPO / "config" / "rbac" / name
        kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", str(manifest))


@dataclass(frozen=True)
class BackgroundProcess:
    """A dev process of this checkout (operator, webhook service): pid file, log, health."""

    title: str
    pid_file: Path
    log_file: Path

    def running_pid(self) -> int | None:
        """The pid of this process if the state folder has it running."""
        if self.pid_file.exists():
            pid = int(self.pid_file.read_text())
            if _alive(pid):
                return pid
        return None

    def start(self, argv: list[str], env: dict[str, str], health_url: str) -> int:
        """Starts ``argv`` in its own session and waits until ``health_url`` answers 200."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                argv,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=REPO,
            )
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-3000:]
                raise SystemExit(f"The {self.title} exited with code {proc.returncode}:\n{tail}")
            try:
                # health_url is always http://127.0.0.1:<port>/healthz, built by this module.
                with urllib.request.urlopen(health_url, timeout=2) as r:  # noqa: S310
                    if r.status == 200:
                        return proc.pid
            except OSError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"The {self.title} did not become healthy in 60 s; see {self.log_file}.")

    def stop(self) -> None:
        """SIGTERM to its process group, SIGKILL after 10 s; forgets the pid."""
        pid = self.running_pid()
        if pid is not None:
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)
            print(f"Stopped the {self.title} (pid {pid}).")
        self.pid_file.unlink(missing_ok=True)


def _operator(paths: DevPaths) -> BackgroundProcess:
    return BackgroundProcess("operator", paths.operator_pid, paths.operator_log)


def _webhook(paths: DevPaths) -> BackgroundProcess:
    return BackgroundProcess("webhook service", paths.webhook_pid, paths.webhook_log)


def start_operator(paths: DevPaths, extra_env: dict[str, str] | None = None) -> int:
    """Starts ``kopf run -m kumulus.handlers`` in the background; returns its pid.

    Reuses an operator that this state folder already runs.
    """
    process = _operator(paths)
    pid = process.running_pid()
    if pid is not None:
        print(f"Reused the running operator (pid {pid}).")
        return pid
    port = _free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(paths.kubeconfig),
        "KUMULUS_LOG_FORMAT": os.environ.get("KUMULUS_LOG_FORMAT", "plain"),
        **(extra_env or {}),
    }
    health = f"http://127.0.0.1:{port}/healthz"
    argv = [sys.executable, "-m", "kopf", "run", "-m", "kumulus.handlers"]
    argv += ["--all-namespaces", "--standalone", f"--liveness={health}"]
    pid = process.start(argv, env, health)
    print(f"Started the operator (pid {pid}), log {paths.operator_log}.")
    return pid


def stop_operator(paths: DevPaths) -> None:
    """Stops the background operator (SIGTERM, then SIGKILL after 10 s)."""
    _operator(paths).stop()


def start_webhook(paths: DevPaths, extra_env: dict[str, str] | None = None) -> str:
    """Starts the webhook service (``python -m kumulus.webhook``) on a loopback port.

    Writes its base URL to ``<state>/webhook-url`` and returns it; reuses a running one.
    """
    process = _webhook(paths)
    pid = process.running_pid()
    if pid is not None and paths.webhook_url.exists():
        url = paths.webhook_url.read_text().strip()
        print(f"Reused the running webhook service (pid {pid}) at {url}.")
        return url
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "KUBECONFIG": str(paths.kubeconfig),
        "KUMULUS_WEBHOOK_HOST": "127.0.0.1",
        "KUMULUS_WEBHOOK_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    pid = process.start([sys.executable, "-m", "kumulus.webhook"], env, f"{url}/healthz")
    paths.webhook_url.write_text(url + "\n")
    print(f"Started the webhook service (pid {pid}) at {url}.")
    return url


def stop_webhook(paths: DevPaths) -> None:
    """Stops the background webhook service (SIGTERM, then SIGKILL after 10 s)."""
    _webhook(paths).stop()
    paths.webhook_url.unlink(missing_ok=True)


def demo(paths: DevPaths) -> int:
    """Runs examples/01-hello-flow and prints the execution's phase and outputs."""
    example = REPO / "examples" / "01-hello-flow"
    kubectl(paths.kubeconfig, "apply", "-f", str(example / "flow.yaml"))
    # A demo run is a fresh execution each time: remove the previous one first.
    kubectl(
        paths.kubeconfig,
        "delete",
        "--ignore-not-found",
        "--wait=true",
        "-f",
        str(example / "execution.yaml"),
    )
    created = time.monotonic()
    out = kubectl(paths.kubeconfig, "create", "-f", str(example / "execution.yaml"), "-o", "json")
    meta = json.loads(out.stdout)["metadata"]
    name, ns = meta["name"], meta.get("namespace", "default")
    print(f"Created Execution {ns}/{name}; waiting for it to end ...")
    status: dict[str, object] = {}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        got = kubectl(paths.kubeconfig, "get", "execution", name, "-n", ns, "-o", "json")
        status = json.loads(got.stdout).get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed", "Cancelled"):
            break
        time.sleep(0.5)
    took = time.monotonic() - created
    print(kubectl(paths.kubeconfig, "get", "execution", name, "-n", ns).stdout)
    print(f"phase:   {status.get('phase')}  (ended {took:.1f} s after kubectl create)")
    print(f"message: {status.get('message')}")
    print("outputs: " + json.dumps(status.get("outputs"), indent=2, sort_keys=True))
    _print_container(paths, ns, status.get("podName"))
    if status.get("phase") != "Succeeded":
        print(f"statusMessage: {status.get('statusMessage')}")
        print(f"The demo failed; see {paths.operator_log}.")
        return 1
    return 0


def _print_container(paths: DevPaths, namespace: str, pod_name: object) -> None:
    """Where the flow ran: its Pod's container, image and the node's runtime."""
    if not isinstance(pod_name, str):
        return
    got = kubectl(paths.kubeconfig, "get", "pod", pod_name, "-n", namespace, "-o", "json")
    pod = json.loads(got.stdout)
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        print(f"ran in:  container {container.get('containerID')} of Pod {namespace}/{pod_name}")
        print(f"image:   {container.get('image')} ({container.get('imageID')})")
    node_name = (pod.get("spec") or {}).get("nodeName")
    if node_name:
        node = json.loads(kubectl(paths.kubeconfig, "get", "node", node_name, "-o", "json").stdout)
        info = node["status"]["nodeInfo"]
        print(
            f"node:    {node_name}, kubelet {info['kubeletVersion']}, "
            f"{info['containerRuntimeVersion']}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kumulus.devcluster.dev", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "demo"])
    parser.add_argument("--state-dir", default=".devcluster", type=Path)
    args = parser.parse_args(argv)
    paths = DevPaths(args.state_dir.resolve())
    if args.command == "down":
        stop_operator(paths)
        stop_webhook(paths)
        return 0
    if not paths.kubeconfig.exists():
        print(f"No dev cluster at {paths.state}: run `make cluster-up` first.", file=sys.stderr)
        return 1
    if args.command == "up":
        install_kumulus(paths.kubeconfig)
        webhook_url = start_webhook(paths)
        start_operator(paths, {"KUMULUS_WEBHOOK_BASE_URL": webhook_url})
        return 0
    return demo(paths)


if __name__ == "__main__":
    raise SystemExit(main())
