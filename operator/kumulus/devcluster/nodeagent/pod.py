"""One Pod on the dev node: its containers' lifecycle, identity, status reports and deletion.

The kubelet's pod worker, reduced to what the dev cluster needs: init containers in order, then
the containers side by side with restartPolicy and an exponential back-off, activeDeadlineSeconds,
memory limits, graceful deletion, and status written through ``pods/status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.models.authentication_v1 import BoundObjectReference, TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import (
    ConfigMap,
    Pod,
    PodStatus,
    Secret,
    ServiceAccount,
    ServiceAccountToken,
)
from lightkube.types import PatchType

from kumulus.devcluster.nodeagent.envbuild import (
    EnvError,
    ObjectRef,
    build_env,
    container_argv,
    image_name,
    memory_limit_bytes,
    object_data,
    referenced_objects,
)
from kumulus.devcluster.nodeagent.identity import (
    REFRESH_FRACTION,
    TOKEN_EXPIRATION_SECONDS,
    ClusterEndpoint,
    pod_kubeconfig,
    wants_token,
    write_private,
)
from kumulus.devcluster.nodeagent.process import ContainerProcess, signal_session
from kumulus.devcluster.nodeagent.status import (
    ContainerRecord,
    Running,
    Terminated,
    Waiting,
    build_pod_status,
    now_iso,
    state_from_dict,
)

log = logging.getLogger(__name__)

JsonDict = dict[str, Any]

# Restart back-off: the kubelet uses 10 s doubling to 5 min; the dev node is quicker.
BACKOFF_INITIAL_SECONDS = 2.0
BACKOFF_MAX_SECONDS = 60.0
BACKOFF_RESET_AFTER_SECONDS = 120.0
CONFIG_RETRY_SECONDS = 3.0
DEFAULT_GRACE_SECONDS = 30
AGENT_RESTARTED_MESSAGE = "node agent restarted"


@dataclass
class NodeContext:
    """What every Pod worker needs from the agent."""

    client: AsyncClient
    node_name: str
    state_dir: Path
    endpoint: ClusterEndpoint
    path: str
    image_map: dict[str, list[str]]
    allocatable: dict[str, str]
    emit_event: Callable[[JsonDict, str, str, str, str | None], Awaitable[None]]


class PodStopped(Exception):
    """The Pod is being deleted or has hit its deadline: stop starting containers."""


class PodWorker:
    """Runs one Pod (identified by uid) until it is finished and deleted."""

    def __init__(self, ctx: NodeContext, pod: JsonDict) -> None:
        self.ctx = ctx
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.label = f"{self.namespace}/{self.name}"
        spec = pod.get("spec") or {}
        self.restart_policy: str = spec.get("restartPolicy") or "Always"
        self.dir = ctx.state_dir / "pods" / f"{self.namespace}_{self.name}_{self.uid}"
        inits = spec.get("initContainers") or []
        first_wait = "PodInitializing" if inits else "ContainerCreating"
        self.init_records = [
            ContainerRecord(c["name"], c.get("image") or "", Waiting("PodInitializing"))
            for c in inits
        ]
        self.records = [
            ContainerRecord(c["name"], c.get("image") or "", Waiting(first_wait))
            for c in spec.get("containers") or []
        ]
        self.processes: dict[str, ContainerProcess] = {}
        self.logs: dict[str, list[tuple[Path, asyncio.Event]]] = {}
        self.start_time: str = (pod.get("status") or {}).get("startTime") or now_iso()
        self.conditions: dict[str, JsonDict] = {
            c["type"]: c for c in (pod.get("status") or {}).get("conditions") or []
        }
        self.phase_override: str | None = None
        self.reason: str | None = None
        self.message: str | None = None
        self.kubeconfig_path: Path | None = None
        self.stopping = asyncio.Event()
        self.dirty = asyncio.Event()
        self.gone = False
        self.deleting = False
        self.tasks: list[asyncio.Task[None]] = []
        self.run_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start running the Pod and reporting its status."""
        self.tasks.append(asyncio.create_task(self._status_writer(), name=f"status {self.label}"))
        self.run_task = asyncio.create_task(self._run(), name=f"run {self.label}")
        deadline = (self.pod.get("spec") or {}).get("activeDeadlineSeconds")
        if deadline is not None:
            self.tasks.append(asyncio.create_task(self._deadline(int(deadline))))
        self.update(self.pod)

    def update(self, pod: JsonDict) -> None:
        """A new version of the Pod arrived from the watch."""
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp") and not self.deleting:
            self.deleting = True
            self.tasks.append(asyncio.create_task(self._delete(), name=f"delete {self.label}"))

    def find_log(self, container: str, previous: bool) -> tuple[Path, asyncio.Event] | None:
        """The log of a container's current (or previous) run."""
        runs = self.logs.get(container) or self._logs_on_disk(container)
        index = -2 if previous else -1
        if len(runs) < (2 if previous else 1):
            return None
        return runs[index]

    def _logs_on_disk(self, container: str) -> list[tuple[Path, asyncio.Event]]:
        """Logs a previous agent wrote (after a restart nothing of them is in memory)."""
        directory = self.dir / "logs" / container
        if not directory.is_dir():
            return []
        files = sorted(
            (p for p in directory.glob("*.log") if p.stem.isdigit()), key=lambda p: int(p.stem)
        )
        done = asyncio.Event()
        done.set()
        return [(path, done) for path in files]

    def remove_files(self) -> None:
        """Remove the Pod's directory (logs, kubeconfig, default working dirs)."""
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def finished(self) -> bool:
        """No container runs or will run any more."""
        return self.phase in ("Succeeded", "Failed")

    @property
    def phase(self) -> str:
        """The phase the next status report will carry."""
        status = self._status()
        return str(status["phase"])

    def _status(self) -> JsonDict:
        return build_pod_status(
            restart_policy=self.restart_policy,
            init_containers=self.init_records,
            containers=self.records,
            start_time=self.start_time,
            previous_conditions=self.conditions,
            now=now_iso(),
            phase_override=self.phase_override,
            reason=self.reason,
            message=self.message,
        )

    def changed(self) -> None:
        """Schedule a status report."""
        self.dirty.set()

    async def _status_writer(self) -> None:
        while not self.gone:
            await self.dirty.wait()
            self.dirty.clear()
            await asyncio.sleep(0.05)  # coalesce bursts of changes
            status = self._status()
            try:
                await self.ctx.client.patch(
                    PodStatus,
                    self.name,
                    {"metadata": {"uid": self.uid}, "status": status},
                    namespace=self.namespace,
                    patch_type=PatchType.MERGE,
                )
                self.conditions = {c["type"]: c for c in status["conditions"]}
            except ApiError as exc:
                if exc.status.code in (404, 409):
                    self.gone = True  # deleted, or a new Pod with the same name (uid differs)
                    return
                log.warning("Failed to update the status of Pod %s: %s", self.label, exc)
                await asyncio.sleep(1)
                self.dirty.set()
            except Exception as exc:
                log.warning("Failed to update the status of Pod %s: %s", self.label, exc)
                await asyncio.sleep(1)
                self.dirty.set()

    async def flush_status(self) -> None:
        """Write the current status now (best effort)."""
        with contextlib.suppress(Exception):
            await self.ctx.client.patch(
                PodStatus,
                self.name,
                {"metadata": {"uid": self.uid}, "status": self._status()},
                namespace=self.namespace,
                patch_type=PatchType.MERGE,
            )

    def _adopt(self) -> bool:
        """Take over what a previous agent reported; False when nothing is left to run.

        Processes die with the agent, so a container reported running is now terminated
        (exit code 137, "node agent restarted"); with restartPolicy Never the Pod fails.
        """
        status = self.pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            self.phase_override = status["phase"]
            self.reason = status.get("reason")
            self.message = status.get("message")
            for records, key in (
                (self.init_records, "initContainerStatuses"),
                (self.records, "containerStatuses"),
            ):
                reported = {s["name"]: s for s in status.get(key) or []}
                for record in records:
                    state = state_from_dict((reported.get(record.name) or {}).get("state"))
                    if state is not None:
                        record.state = state
            return False
        interrupted = False
        for records, key in (
            (self.init_records, "initContainerStatuses"),
            (self.records, "containerStatuses"),
        ):
            reported = {s["name"]: s for s in status.get(key) or []}
            for record in records:
                entry = reported.get(record.name)
                if not entry:
                    continue
                record.restart_count = int(entry.get("restartCount") or 0)
                last = state_from_dict(entry.get("lastState"))
                record.last_state = last if isinstance(last, Terminated) else None
                state = state_from_dict(entry.get("state"))
                if isinstance(state, Running):
                    interrupted = True
                    record.started = True
                    container_id = entry.get("containerID")
                    self._kill_leftover(container_id)
                    record.state = Terminated(
                        exit_code=137,
                        reason="Error",
                        finished_at=now_iso(),
                        started_at=state.started_at,
                        message=AGENT_RESTARTED_MESSAGE,
                        container_id=container_id,
                    )
                elif isinstance(state, Terminated):
                    record.started = True
                    record.state = state
        if interrupted:
            log.info("Adopted Pod %s whose processes died with the previous agent.", self.label)
            if self.restart_policy == "Never":
                self.phase_override = "Failed"
                self.message = AGENT_RESTARTED_MESSAGE
                return False
        return True

    def _kill_leftover(self, container_id: str | None) -> None:
        """Kill a process tree a crashed agent left behind, if it is really this Pod's."""
        if not container_id or not container_id.startswith("kumulus://"):
            return
        try:
            pid = int(container_id.removeprefix("kumulus://"))
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (ValueError, OSError):
            return
        if os.getsid(pid) == pid and f"HOSTNAME={self.name}".encode() in environ:
            log.info("Killed leftover process %d of Pod %s.", pid, self.label)
            signal_session(pid, signal.SIGKILL)

    async def _run(self) -> None:
        try:
            if not self._adopt():
                self.changed()
                return
            self.changed()
            await self._prepare_identity()
            for spec, record in zip(
                (self.pod.get("spec") or {}).get("initContainers") or [],
                self.init_records,
                strict=True,
            ):
                if isinstance(record.state, Terminated) and record.state.exit_code == 0:
                    continue
                await self._container_loop(spec, record, init=True)
                if not (isinstance(record.state, Terminated) and record.state.exit_code == 0):
                    return  # restartPolicy Never: the Pod failed
            for record in self.records:
                if isinstance(record.state, Waiting) and record.last_state is None:
                    record.state = Waiting("ContainerCreating")
            self.changed()
            results = await asyncio.gather(
                *(
                    self._container_loop(spec, record, init=False)
                    for spec, record in zip(
                        (self.pod.get("spec") or {}).get("containers") or [],
                        self.records,
                        strict=True,
                    )
                ),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException) and not isinstance(result, PodStopped):
                    log.error("Failed to run a container of Pod %s: %r", self.label, result)
        except PodStopped:
            pass
        except Exception:
            log.exception("Failed to run Pod %s.", self.label)
        finally:
            self.changed()
            if self.finished:
                log.info("Finished Pod %s with phase %s.", self.label, self.phase)

    async def _container_loop(self, spec: JsonDict, record: ContainerRecord, init: bool) -> None:
        backoff = BACKOFF_INITIAL_SECONDS
        if isinstance(record.state, Terminated):
            # Adopted after an agent restart: decide as if it had just ended.
            if not self._should_restart(record.state, init):
                return
            record.last_state = record.state
            record.restart_count += 1
        while True:
            started = time.monotonic()
            term = await self._run_once(spec, record)
            record.state = term
            self.changed()
            if self.stopping.is_set() or not self._should_restart(term, init):
                return
            if time.monotonic() - started > BACKOFF_RESET_AFTER_SECONDS:
                backoff = BACKOFF_INITIAL_SECONDS
            delay = backoff
            backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
            record.last_state = term
            message = (
                f"back-off {delay:g}s restarting failed container={record.name} "
                f"pod={self.name}_{self.namespace}({self.uid})"
            )
            record.state = Waiting("CrashLoopBackOff", message)
            self.changed()
            await self._event("Warning", "BackOff", "Back-off restarting failed container", spec)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=delay)
            if self.stopping.is_set():
                raise PodStopped
            record.restart_count += 1

    def _should_restart(self, term: Terminated, init: bool) -> bool:
        if self.restart_policy == "Never":
            return False
        if init or self.restart_policy == "OnFailure":
            return term.exit_code != 0
        return True

    async def _run_once(self, spec: JsonDict, record: ContainerRecord) -> Terminated:
        """Start one run of a container and wait for it to end."""
        while True:
            if self.stopping.is_set():
                raise PodStopped
            try:
                env = await self._environment(spec)
            except EnvError as exc:
                self._wait_state(record, Waiting("CreateContainerConfigError", str(exc)))
                await self._event("Warning", "Failed", f"Error: {exc}", spec)
                await self._pause(CONFIG_RETRY_SECONDS)
                continue
            argv = container_argv(spec, env, self.ctx.image_map)
            if argv is None:
                image = str(spec.get("image") or "")
                message = (
                    f'the dev node has no command for image "{image_name(image)}": give the '
                    "container a command or map the image in --image-map"
                )
                self._wait_state(record, Waiting("ErrImagePull", message))
                await self._event("Warning", "Failed", f"Failed to pull image: {message}", spec)
                await self._pause(None)
                continue
            break
        await self._event(
            "Normal", "Pulled", f'Container image "{record.image}" already present on machine', spec
        )
        cwd = (
            Path(spec["workingDir"]) if spec.get("workingDir") else self.dir / "work" / record.name
        )
        log_path = self.dir / "logs" / record.name / f"{record.restart_count}.log"
        log_path.unlink(missing_ok=True)
        proc = ContainerProcess(
            label=f"{self.label}/{record.name}",
            argv=argv,
            env=env,
            cwd=cwd,
            log_path=log_path,
            memory_limit=memory_limit_bytes(spec),
        )
        failed = await proc.start()
        self.logs.setdefault(record.name, []).append((log_path, proc.log_closed))
        if failed is not None:
            log.info("Failed to start container %s/%s: %s", self.label, record.name, failed.message)
            await self._event("Warning", "Failed", f"Error: {failed.message}", spec)
            return failed
        self.processes[record.name] = proc
        record.container_id = proc.container_id
        record.started = True
        record.state = Running(proc.started_at)
        self.changed()
        await self._event("Normal", "Created", f"Created container: {record.name}", spec)
        await self._event("Normal", "Started", f"Started container {record.name}", spec)
        try:
            term = await proc.wait()
        finally:
            self.processes.pop(record.name, None)
        log.info(
            "Container %s/%s exited with code %d (%s).",
            self.label,
            record.name,
            term.exit_code,
            term.reason,
        )
        return term

    def _wait_state(self, record: ContainerRecord, state: Waiting) -> None:
        if record.state != state:
            record.state = state
            self.changed()
            log.info(
                "Container %s/%s is waiting: %s: %s",
                self.label,
                record.name,
                state.reason,
                state.message,
            )

    async def _pause(self, seconds: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)
        if self.stopping.is_set():
            raise PodStopped

    # ------------------------------------------------------------------ environment

    async def _environment(self, spec: JsonDict) -> dict[str, str]:
        objects: dict[ObjectRef, dict[str, str] | None] = {}
        for ref in referenced_objects(spec):
            try:
                if ref.kind == "ConfigMap":
                    cm = await self.ctx.client.get(ConfigMap, ref.name, namespace=self.namespace)
                    objects[ref] = object_data(ref.kind, cm.to_dict())
                else:
                    sec = await self.ctx.client.get(Secret, ref.name, namespace=self.namespace)
                    objects[ref] = object_data(ref.kind, sec.to_dict())
            except ApiError as exc:
                if exc.status.code != 404:
                    raise EnvError(
                        f"cannot read {ref.kind} {self.namespace}/{ref.name}: {exc.status.message}"
                    ) from exc
                objects[ref] = None
        base = {"PATH": self.ctx.path, "HOSTNAME": self.name}
        if self.kubeconfig_path is not None:
            base["KUBECONFIG"] = str(self.kubeconfig_path)
        return build_env(self.pod, spec, objects, base, self.ctx.allocatable)

    async def _prepare_identity(self) -> None:
        spec = self.pod.get("spec") or {}
        sa_name = spec.get("serviceAccountName") or "default"
        service_account: JsonDict | None = None
        if spec.get("automountServiceAccountToken") is None:
            with contextlib.suppress(ApiError):
                sa = await self.ctx.client.get(ServiceAccount, sa_name, namespace=self.namespace)
                service_account = sa.to_dict()
        if not wants_token(self.pod, service_account):
            return
        self.kubeconfig_path = self.dir / "kubeconfig"
        delay = 1.0
        while True:
            try:
                lifetime = await self._write_token(sa_name)
                break
            except Exception as exc:
                log.warning(
                    "Failed to request a token for ServiceAccount %s/%s of Pod %s: %s",
                    self.namespace,
                    sa_name,
                    self.label,
                    exc,
                )
                await self._pause(delay)
                delay = min(delay * 2, 30)
        self.tasks.append(asyncio.create_task(self._refresh_token(sa_name, lifetime)))

    async def _write_token(self, sa_name: str) -> float:
        request = ServiceAccountToken(
            metadata=ObjectMeta(name=sa_name, namespace=self.namespace),
            spec=TokenRequestSpec(
                audiences=[],
                expirationSeconds=TOKEN_EXPIRATION_SECONDS,
                boundObjectRef=BoundObjectReference(
                    kind="Pod", apiVersion="v1", name=self.name, uid=self.uid
                ),
            ),
        )
        result = await self.ctx.client.create(request, sa_name, namespace=self.namespace)
        assert result.status is not None and self.kubeconfig_path is not None
        token = str(result.status.token)
        expires = result.status.expirationTimestamp
        write_private(
            self.kubeconfig_path, pod_kubeconfig(self.ctx.endpoint, token, self.namespace)
        )
        lifetime = float(TOKEN_EXPIRATION_SECONDS)
        if isinstance(expires, dt.datetime):
            lifetime = max(60.0, (expires - dt.datetime.now(dt.UTC)).total_seconds())
        log.info(
            "Wrote a token of ServiceAccount %s/%s for Pod %s.", self.namespace, sa_name, self.label
        )
        return lifetime

    async def _refresh_token(self, sa_name: str, lifetime: float) -> None:
        while not self.stopping.is_set():
            await asyncio.sleep(lifetime * REFRESH_FRACTION)
            try:
                lifetime = await self._write_token(sa_name)
            except Exception as exc:
                log.warning("Failed to refresh the token of Pod %s: %s", self.label, exc)
                lifetime = 60.0

    # ------------------------------------------------------------------ stopping

    def _grace_seconds(self) -> int:
        meta = self.pod["metadata"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = (self.pod.get("spec") or {}).get("terminationGracePeriodSeconds")
        return DEFAULT_GRACE_SECONDS if grace is None else int(grace)

    async def _kill_all(self, grace: int, reason: str) -> None:
        """SIGTERM every running container, wait up to ``grace`` seconds, then SIGKILL."""
        self.stopping.set()
        procs = list(self.processes.values())
        for proc in procs:
            await self._event(
                "Normal", "Killing", f"Stopping container {proc.label.rsplit('/', 1)[-1]}", None
            )
            log.info("Sent SIGTERM to container %s (%s).", proc.label, reason)
            proc.signal(signal.SIGTERM)
        if procs and self.run_task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self.run_task), timeout=grace)
        for proc in list(self.processes.values()):
            log.info("Sent SIGKILL to container %s after %d s of grace.", proc.label, grace)
            proc.signal(signal.SIGKILL)
        if self.run_task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self.run_task), timeout=10)

    async def _deadline(self, seconds: int) -> None:
        try:
            started = dt.datetime.fromisoformat(self.start_time.replace("Z", "+00:00"))
        except ValueError:
            started = dt.datetime.now(dt.UTC)
        remaining = seconds - (dt.datetime.now(dt.UTC) - started).total_seconds()
        await asyncio.sleep(max(0.0, remaining))
        if self.finished or self.deleting:
            return
        self.phase_override = "Failed"
        self.reason = "DeadlineExceeded"
        self.message = "Pod was active on the node longer than the specified deadline"
        log.info("Stopped Pod %s: its activeDeadlineSeconds (%d) passed.", self.label, seconds)
        await self._event("Normal", "DeadlineExceeded", self.message, None)
        await self._kill_all(self._grace_seconds(), "deadline exceeded")
        self.changed()

    async def _delete(self) -> None:
        grace = self._grace_seconds()
        log.info("Stopping Pod %s for deletion (grace %d s).", self.label, grace)
        await self._kill_all(grace, "pod deleted")
        await self.flush_status()
        try:
            current = await self.ctx.client.get(Pod, self.name, namespace=self.namespace)
            if current.metadata is not None and current.metadata.uid == self.uid:
                await self.ctx.client.delete(
                    Pod, self.name, namespace=self.namespace, grace_period=0
                )
                log.info("Deleted Pod %s.", self.label)
        except ApiError as exc:
            # The Node authorizer answers 403 for a Pod no longer bound to this node (gone).
            if exc.status.code not in (403, 404):
                log.warning("Failed to delete Pod %s: %s", self.label, exc.status.message)

    async def shutdown(self) -> None:
        """Kill the Pod's processes at once (the agent is exiting or the Pod vanished)."""
        self.stopping.set()
        for proc in list(self.processes.values()):
            proc.signal(signal.SIGKILL)
        tasks = [t for t in [self.run_task, *self.tasks] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _event(self, etype: str, reason: str, message: str, spec: JsonDict | None) -> None:
        field = f"spec.containers{{{spec['name']}}}" if spec else None
        await self.ctx.emit_event(self.pod, etype, reason, message, field)
