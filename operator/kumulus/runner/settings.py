"""``system.setting(name)``: key/value records that double as locks between executions.

Cloudomation's settings hold any JSON value and can be acquired as locks. Kumulus keeps them in
the execution's namespace with plain Kubernetes objects, so they need no database and are
visible with ``kubectl``:

* the value lives in a ConfigMap ``kumulus-setting-<slug>-<hash>`` (key ``value``, compact
  JSON), labelled ``app.kubernetes.io/managed-by: kumulus`` and ``kumulus.dev/setting: "true"``,
  with the original name in the annotation ``kumulus.dev/setting-name`` (names are derived
  deterministically, so any string is a valid setting name);
* the lock is a ``coordination.k8s.io`` Lease ``kumulus-lock-<slug>-<hash>`` (label
  ``kumulus.dev/lock: "true"``) whose ``holderIdentity`` is the name of the Execution holding
  it. Acquiring creates the Lease or takes it over when it is free or expired (an update guarded
  by ``resourceVersion``, so exactly one contender wins); the runner renews held Leases in the
  background and releases them when the flow ends in any way. When the runner cannot (the Pod
  was killed, OOM, SIGKILL after a cancel's grace period), the operator releases the Leases of
  an Execution that reaches a terminal phase; the runner marks its Execution with the
  annotation ``kumulus.dev/uses-locks: "true"`` before its first acquire so the operator only
  looks when there is something to release. A Lease nobody renews expires after
  ``LEASE_SECONDS`` as a last resort.

A lock belongs to the execution, not to the Python object: acquiring a lock the execution holds
already returns at once, and ``release()`` on any ``system.setting(name)`` object releases it.
Waiting for a lock reads the Lease at most once per ``POLL_MAX_SECONDS`` (lightkube's
synchronous watch reconnects forever and cannot end at a deadline or at the holder's expiry).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from kumulus.runner.client import AlreadyExistsError, ApiClient, ConflictError, Obj
from kumulus.runner.errors import (
    EngineException,
    InvalidInputError,
    LockTimeoutError,
    ResourceNotFoundError,
)

if TYPE_CHECKING:
    from types import TracebackType

log = logging.getLogger("kumulus.runner")

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
SETTING_LABEL = "kumulus.dev/setting"
LOCK_LABEL = "kumulus.dev/lock"
NAME_ANNOTATION = "kumulus.dev/setting-name"
USES_LOCKS_ANNOTATION = "kumulus.dev/uses-locks"
"""Set on an Execution before its first lock; the operator reads the same string."""
VALUE_KEY = "value"
SETTING_PREFIX = "kumulus-setting-"
LOCK_PREFIX = "kumulus-lock-"
MAX_NAME = 63
LEASE_SECONDS = 30
"""``leaseDurationSeconds`` of a held lock; renewed every third of it."""
POLL_MIN_SECONDS = 0.2
POLL_MAX_SECONDS = 1.0
_HASH_LEN = 10


# --------------------------------------------------------------------------- names


def object_name(prefix: str, setting: str) -> str:
    """The DNS-1123 name of the object holding ``setting`` (deterministic, collision-safe).

    ``<prefix><slug>-<10 hex of sha256(setting)>``: the slug keeps the name readable, the hash
    keeps ``Deploy Lock`` and ``deploy-lock`` apart.
    """
    digest = hashlib.sha256(setting.encode()).hexdigest()[:_HASH_LEN]
    slug = re.sub(r"[^a-z0-9]+", "-", setting.lower()).strip("-")
    room = MAX_NAME - len(prefix) - len(digest) - 1
    slug = slug[:room].strip("-")
    return f"{prefix}{slug}-{digest}" if slug else f"{prefix}{digest}"


def configmap_name(setting: str) -> str:
    """Name of the ConfigMap holding the value of ``setting``."""
    return object_name(SETTING_PREFIX, setting)


def lease_name(setting: str) -> str:
    """Name of the Lease that is the lock of ``setting``."""
    return object_name(LOCK_PREFIX, setting)


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidInputError(f"A setting name must be a non-empty string, not {name!r}.")
    return name


# --------------------------------------------------------------------------- time


def format_micro_time(when: datetime) -> str:
    """A Kubernetes MicroTime: RFC 3339 with microseconds, UTC."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> datetime | None:
    """A Kubernetes Time or MicroTime (``None`` if absent or malformed)."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def lease_expired(lease: Obj, now: datetime) -> bool:
    """Whether the holder stopped renewing: ``renewTime + leaseDurationSeconds`` is past."""
    spec = lease.get("spec") or {}
    renewed = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime"))
    if renewed is None:
        return True
    duration = int(spec.get("leaseDurationSeconds") or LEASE_SECONDS)
    return now >= renewed + timedelta(seconds=duration)


# --------------------------------------------------------------------------- locks


class Locks:
    """The locks of one running execution: acquire, renew in the background, release.

    ``holder`` is the Execution's name (the Leases' ``holderIdentity``). Thread-safe.
    """

    def __init__(
        self,
        client: ApiClient,
        holder: str,
        *,
        lease_seconds: int = LEASE_SECONDS,
        clock: Any = None,
    ) -> None:
        self.client = client
        self.holder = holder
        self.lease_seconds = lease_seconds
        self._now = clock or (lambda: datetime.now(UTC))
        self._held: dict[str, str] = {}  # lease name -> setting name
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._marked = False

    # -- queries ----------------------------------------------------------------------------

    def holds(self, setting: str) -> bool:
        """Whether this execution holds the lock of ``setting`` (as far as it knows)."""
        with self._lock:
            return lease_name(setting) in self._held

    def held(self) -> list[str]:
        """Names of the settings whose locks this execution holds."""
        with self._lock:
            return sorted(self._held.values())

    # -- acquire ----------------------------------------------------------------------------

    def acquire(self, setting: str, timeout: float | None = None) -> None:
        """Hold the lock of ``setting``; wait for it, at most ``timeout`` seconds if given."""
        if timeout is not None and timeout < 0:
            raise InvalidInputError(f"timeout must be at least 0, not {timeout!r}.")
        name = lease_name(setting)
        self._mark_execution()
        deadline = None if timeout is None else time.monotonic() + timeout
        poll = POLL_MIN_SECONDS
        seen: tuple[str | None, float] = (None, time.monotonic())  # (resourceVersion, since)
        announced = False
        while True:
            lease = self._try_take(name, setting, seen)
            if lease is None:
                self._held_now(name, setting)
                log.info(
                    "Acquired lock %r (Lease %s/%s) for Execution %s.",
                    setting,
                    self.client.namespace,
                    name,
                    self.holder,
                )
                return
            rv = (lease.get("metadata") or {}).get("resourceVersion")
            if rv != seen[0]:
                seen = (rv, time.monotonic())
            holder = (lease.get("spec") or {}).get("holderIdentity")
            if not announced:
                log.info(
                    "Waiting for lock %r held by Execution %s (Execution %s).",
                    setting,
                    holder,
                    self.holder,
                )
                announced = True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise LockTimeoutError(
                    f"Lock {setting!r} is held by Execution {holder}; Execution {self.holder} "
                    f"gave up waiting after {timeout:g} s."
                )
            time.sleep(poll if remaining is None else min(poll, remaining))
            poll = min(poll * 1.5, POLL_MAX_SECONDS)

    def _try_take(self, name: str, setting: str, seen: tuple[str | None, float]) -> Obj | None:
        """Take the Lease if possible: ``None`` when held now, else the Lease as read."""
        try:
            lease = self.client.get_lease(name)
        except ResourceNotFoundError:
            try:
                self.client.create_lease(self._new_lease(name, setting))
            except AlreadyExistsError:
                return self.client.get_lease(name)
            return None
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        now = self._now()
        rv = (lease.get("metadata") or {}).get("resourceVersion")
        # Expired by the holder's clock, or unchanged for longer than its duration by ours
        # (a holder whose clock runs ahead must not keep a lock it stopped renewing).
        stale = rv == seen[0] and time.monotonic() - seen[1] > int(
            spec.get("leaseDurationSeconds") or self.lease_seconds
        )
        if holder and holder != self.holder and not (lease_expired(lease, now) or stale):
            return lease
        body = copy.deepcopy(lease)
        body_spec = body.setdefault("spec", {})
        if holder != self.holder:
            body_spec["acquireTime"] = format_micro_time(now)
            body_spec["leaseTransitions"] = int(body_spec.get("leaseTransitions") or 0) + 1
            if holder:
                log.info("Took over expired lock %r from Execution %s.", setting, holder)
        body_spec["holderIdentity"] = self.holder
        body_spec["renewTime"] = format_micro_time(now)
        body_spec["leaseDurationSeconds"] = self.lease_seconds
        try:
            self.client.replace_lease(name, body)
        except ConflictError:
            return self.client.get_lease(name)  # someone else won this round
        return None

    def _new_lease(self, name: str, setting: str) -> Obj:
        now = format_micro_time(self._now())
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": self.client.namespace,
                "labels": {MANAGED_BY_LABEL: "kumulus", LOCK_LABEL: "true"},
                "annotations": {NAME_ANNOTATION: setting},
            },
            "spec": {
                "holderIdentity": self.holder,
                "leaseDurationSeconds": self.lease_seconds,
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }

    def _mark_execution(self) -> None:
        """Annotate our Execution so the operator releases our Leases if we cannot."""
        if self._marked:
            return
        self.client.patch_execution(
            self.holder, {"metadata": {"annotations": {USES_LOCKS_ANNOTATION: "true"}}}
        )
        self._marked = True

    def _held_now(self, name: str, setting: str) -> None:
        with self._lock:
            self._held[name] = setting
            if self._renewer is None:
                self._renewer = threading.Thread(
                    target=self._renew_loop, name="renew-locks", daemon=True
                )
                self._renewer.start()

    # -- renew ------------------------------------------------------------------------------

    def _renew_loop(self) -> None:
        interval = max(self.lease_seconds / 3, 0.5)
        while not self._stop.wait(interval):
            self.renew()

    def renew(self) -> None:
        """Renew every held Lease once (the background thread calls this)."""
        with self._lock:
            held = dict(self._held)
        for name, setting in held.items():
            try:
                lease = self.client.get_lease(name)
                if (lease.get("spec") or {}).get("holderIdentity") != self.holder:
                    log.warning(
                        "Lost lock %r of Execution %s: the Lease has another holder.",
                        setting,
                        self.holder,
                    )
                    with self._lock:
                        self._held.pop(name, None)
                    continue
                lease["spec"]["renewTime"] = format_micro_time(self._now())
                self.client.replace_lease(name, lease)
            except ResourceNotFoundError:
                log.warning(
                    "Lost lock %r of Execution %s: the Lease was deleted.", setting, self.holder
                )
                with self._lock:
                    self._held.pop(name, None)
            except Exception as exc:  # retried at the next interval; the lease outlives 2 misses
                log.warning(
                    "Failed to renew lock %r of Execution %s: %s", setting, self.holder, exc
                )

    # -- release ----------------------------------------------------------------------------

    def release(self, setting: str) -> bool:
        """Release the lock of ``setting`` if this execution holds it; ``True`` if it did."""
        name = lease_name(setting)
        with self._lock:
            self._held.pop(name, None)
        for _ in range(5):
            try:
                lease = self.client.get_lease(name)
            except ResourceNotFoundError:
                return False
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.holder:
                return False
            spec.pop("holderIdentity", None)
            spec["renewTime"] = format_micro_time(self._now())
            lease["spec"] = spec
            try:
                self.client.replace_lease(name, lease)
            except ConflictError:
                continue  # renewed or changed meanwhile: read again
            log.info("Released lock %r of Execution %s.", setting, self.holder)
            return True
        raise EngineException(f"Failed to release lock {setting!r}: the Lease kept changing.")

    def release_all(self) -> None:
        """Release every held lock and stop renewing (the runner calls this at exit)."""
        self._stop.set()
        for setting in self.held():
            try:
                self.release(setting)
            except Exception as exc:  # the operator releases what is left at the end
                log.warning(
                    "Failed to release lock %r of Execution %s: %s", setting, self.holder, exc
                )


# --------------------------------------------------------------------------- settings


_UNSET: Any = object()


class Setting:
    """A setting as ``system.setting(name)`` returns it (read on first use)."""

    kind = "Setting"
    fields = ("name", "value")

    def __init__(self, client: ApiClient, name: str, locks: Locks | None = None) -> None:
        self._client = client
        self.name = _check_name(name)
        self._locks = locks
        self._obj: Obj | None = None

    def __repr__(self) -> str:
        return f"Setting({self.name!r})"

    @property
    def configmap(self) -> str:
        """Name of the ConfigMap that stores the value."""
        return configmap_name(self.name)

    # -- read -------------------------------------------------------------------------------

    def _read(self) -> Obj:
        try:
            obj = self._client.get_configmap(self.configmap)
        except ResourceNotFoundError:
            raise ResourceNotFoundError(
                f"Setting {self.name!r} does not exist (ConfigMap "
                f"{self._client.namespace}/{self.configmap})."
            ) from None
        data = obj.get("data") or {}
        if VALUE_KEY not in data:
            raise ResourceNotFoundError(
                f"Setting {self.name!r}: ConfigMap {self.configmap} has no key {VALUE_KEY!r}."
            )
        return obj

    def _load(self) -> Obj:
        if self._obj is None:
            self._obj = self._read()
        return self._obj

    def exists(self) -> bool:
        """Whether the setting exists (re-read every time)."""
        self._obj = None
        try:
            self._load()
        except ResourceNotFoundError:
            return False
        return True

    def _field(self, obj: Obj, field: str) -> Any:
        if field == "name":
            return self.name
        raw = (obj.get("data") or {})[VALUE_KEY]
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise EngineException(
                f"Setting {self.name!r} holds invalid JSON in ConfigMap {self.configmap}."
            ) from None

    def get(self, *fields: str) -> Any:
        """``get('value')`` gives the value; several fields give a dict."""
        if not fields:
            raise InvalidInputError(f"Name at least one field: {', '.join(self.fields)}.")
        for f in fields:
            if f not in self.fields:
                raise InvalidInputError(
                    f"Unknown field {f!r} of Setting {self.name!r}; known: "
                    f"{', '.join(self.fields)}."
                )
        obj = self._load()
        if len(fields) == 1:
            return self._field(obj, fields[0])
        return {f: self._field(obj, f) for f in fields}

    def load(self, *fields: str) -> Any:
        """Re-read the setting, then return fields like ``get``."""
        self._obj = None
        return self.get(*fields)

    # -- write ------------------------------------------------------------------------------

    def save(self, value: Any = _UNSET, **fields: Any) -> None:
        """``save(value=...)``: store any JSON value (creates the setting if needed)."""
        if fields:
            raise InvalidInputError(
                f"Setting {self.name!r} has no writable field(s) {', '.join(sorted(fields))}; "
                "use save(value=...)."
            )
        if value is _UNSET:
            raise InvalidInputError(
                f"Give the value to save: setting.save(value=...) ({self.name!r})."
            )
        try:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(
                f"The value of Setting {self.name!r} must be JSON: {exc}."
            ) from None
        meta = {
            "labels": {MANAGED_BY_LABEL: "kumulus", SETTING_LABEL: "true"},
            "annotations": {NAME_ANNOTATION: self.name},
        }
        try:
            obj = self._client.patch_configmap(
                self.configmap, {"metadata": meta, "data": {VALUE_KEY: text}}
            )
        except ResourceNotFoundError:
            body: Obj = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": self.configmap, "namespace": self._client.namespace, **meta},
                "data": {VALUE_KEY: text},
            }
            try:
                obj = self._client.create_configmap(body)
            except AlreadyExistsError:  # created meanwhile by another execution
                obj = self._client.patch_configmap(
                    self.configmap, {"metadata": meta, "data": {VALUE_KEY: text}}
                )
        self._obj = obj
        log.info("Saved Setting %r (ConfigMap %s).", self.name, self.configmap)

    # -- lock -------------------------------------------------------------------------------

    def _require_locks(self) -> Locks:
        if self._locks is None:
            raise EngineException("Locks need a running execution (no lock holder).")
        return self._locks

    def acquire(self, timeout: float | None = None) -> Setting:
        """Hold this setting's lock; wait for it (``LockTimeoutError`` after ``timeout`` s)."""
        self._require_locks().acquire(self.name, timeout)
        return self

    def release(self) -> None:
        """Release this setting's lock (no-op if this execution does not hold it)."""
        self._require_locks().release(self.name)

    def __enter__(self) -> Setting:
        locks = self._require_locks()
        if not locks.holds(self.name):
            locks.acquire(self.name)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
