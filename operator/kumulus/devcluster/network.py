"""The dev cluster's node network: one network namespace per cluster, never routed off the machine.

A real kubelet needs a node address that is not loopback, and Pods need a route to the API
server. Each dev cluster therefore gets a *slot*: a network namespace ``kumulus<slot>`` that
holds its node (containerd, the kubelet, kube-proxy, the CNI bridge and every Pod behind it),
joined to this machine by one veth pair. All addresses come from the documentation ranges
(RFC 5737), which no real network uses; this machine's own uplink sits in 192.0.2.0/24, so
that range is left alone:

=========================  ====================================  =======================
what                       slot ``s`` (0..3)                     example, slot 0
=========================  ====================================  =======================
host end of the veth       ``203.0.113.(64s+33)/30``             ``203.0.113.33``
node end (the Node's IP)   ``203.0.113.(64s+34)/30``             ``203.0.113.34``
Service range              ``203.0.113.(64s)/27``                ``203.0.113.0/27``
Pod range (CNI bridge)     ``198.51.100.(64s)/26``               ``198.51.100.0/26``
=========================  ====================================  =======================

Why nothing can leave the machine: the node namespace has no default route, only the veth's
/30 and its own bridge, so a Pod's packet to any other address is dropped as unreachable inside
the namespace; the host routes only the slot's Pod and Service ranges into the veth, and keeps
``ip_forward`` as it is (off), so it forwards nothing out of the namespace either. kube-proxy's
iptables rules and the bridge live inside the namespace and vanish with it.

A slot is claimed atomically by creating its namespace; an owner file in :data:`RUN_DIR` names
the state directory that holds it, so a cluster whose processes were killed (a session that
ended) is recognised as stale and cleaned by the next ``up`` that needs its slot.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: How many dev clusters may run side by side on one machine.
SLOTS = 4
#: Where slot owner files live (tmpfs: a reboot frees every slot with the namespaces).
RUN_DIR = Path("/run/kumulus")
NETNS_DIR = Path("/run/netns")
_LINK_BASE = ipaddress.IPv4Address("203.0.113.0")
#: Every slot's Pod range lies in this one (a server that Pods of any dev cluster may call
#: allows it, as the PostgreSQL server of the e2e tests does).
ALL_PODS = ipaddress.IPv4Network("198.51.100.0/24")
_POD_BASE = ALL_PODS.network_address


class NetworkError(Exception):
    """The node network could not be set up (no free slot, an ``ip`` command failed)."""


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NetworkError(f"{' '.join(argv)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


@dataclass(frozen=True)
class NodeNetwork:
    """The addresses and names of one slot (pure; :func:`claim` and :func:`setup` act on them)."""

    slot: int

    def _link(self, offset: int) -> ipaddress.IPv4Address:
        return _LINK_BASE + 64 * self.slot + offset

    @property
    def netns(self) -> str:
        return f"kumulus{self.slot}"

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns

    @property
    def host_if(self) -> str:
        return f"kmls{self.slot}h"

    @property
    def node_if(self) -> str:
        return f"kmls{self.slot}n"

    @property
    def bridge(self) -> str:
        return f"kmls{self.slot}br"

    @property
    def host_ip(self) -> str:
        """This machine's end of the veth: the API server and the test servers listen here."""
        return str(self._link(33))

    @property
    def node_ip(self) -> str:
        """The Node's InternalIP (the kubelet's address) inside the namespace."""
        return str(self._link(34))

    @property
    def link_prefix(self) -> int:
        return 30

    @property
    def service_cidr(self) -> str:
        return f"{self._link(0)}/27"

    @property
    def kubernetes_service_ip(self) -> str:
        """The ClusterIP the API server gives the ``kubernetes`` Service (first of the range)."""
        return str(self._link(1))

    @property
    def pod_cidr(self) -> str:
        return f"{_POD_BASE + 64 * self.slot}/26"

    @property
    def pod_gateway(self) -> str:
        return str(_POD_BASE + 64 * self.slot + 1)

    @property
    def owner_file(self) -> Path:
        return RUN_DIR / f"slot{self.slot}.json"

    def nsenter(self) -> list[str]:
        """The prefix that runs a command in the node's network namespace (and only that)."""
        return ["nsenter", f"--net={self.netns_path}", "--"]


def _read_owner(net: NodeNetwork) -> dict[str, object] | None:
    try:
        data = json.loads(net.owner_file.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def owner_state_dir(net: NodeNetwork) -> Path | None:
    """The state directory that claimed the slot, if it says so."""
    owner = _read_owner(net)
    if owner and isinstance(owner.get("state_dir"), str):
        return Path(str(owner["state_dir"]))
    return None


def claim(
    state_dir: Path,
    in_use: Callable[[NodeNetwork, Path | None], bool],
    reclaim: Callable[[NodeNetwork, Path | None], None],
) -> NodeNetwork:
    """Claim a slot for ``state_dir``: its own, else a free one, else a stale one.

    ``in_use(net, owner)`` tells whether a slot whose namespace exists still belongs to a live
    cluster. A slot that does not (its cluster's processes were killed) is stale: it is
    handed to ``reclaim(net, owner)`` to be cleaned, then taken, when no slot is free.
    """
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    stale: list[NodeNetwork] = []
    for slot in range(SLOTS):
        net = NodeNetwork(slot)
        owner = owner_state_dir(net)
        if owner == state_dir:
            reclaim(net, owner)  # our own leftovers from a run that was killed
            _write_owner(net, state_dir)
            return net
        if net.netns_path.exists() or net.owner_file.exists():
            if not in_use(net, owner):
                stale.append(net)
            continue
        if _run(["ip", "netns", "add", net.netns], check=False).returncode != 0:
            continue  # somebody else won the race for it
        _write_owner(net, state_dir)
        return net
    if stale:
        net = stale[0]
        reclaim(net, owner_state_dir(net))
        _write_owner(net, state_dir)
        return net
    raise NetworkError(
        f"All {SLOTS} dev cluster slots are in use (namespaces kumulus0..kumulus{SLOTS - 1}); "
        "stop one with `make cluster-down` (or `python -m kumulus.devcluster down`)."
    )


def _write_owner(net: NodeNetwork, state_dir: Path) -> None:
    tmp = net.owner_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"state_dir": str(state_dir), "pid": os.getpid()}) + "\n")
    tmp.replace(net.owner_file)


def _sysctl(net: NodeNetwork, key: str, value: str) -> None:
    _run([*net.nsenter(), "sysctl", "-q", "-w", f"{key}={value}"])


def setup(net: NodeNetwork) -> None:
    """Create (or complete) the namespace, the veth pair and the host's routes into it."""
    if not net.netns_path.exists():
        _run(["ip", "netns", "add", net.netns])
    inside = ["ip", "-n", net.netns]
    _run([*inside, "link", "set", "lo", "up"])
    if _run(["ip", "link", "show", net.host_if], check=False).returncode != 0:
        _run(
            [
                "ip", "link", "add", net.host_if, "type", "veth",
                "peer", "name", net.node_if, "netns", net.netns,
            ]
        )  # fmt: skip
    _run(["ip", "addr", "replace", f"{net.host_ip}/{net.link_prefix}", "dev", net.host_if])
    _run(["ip", "link", "set", net.host_if, "up"])
    _run([*inside, "addr", "replace", f"{net.node_ip}/{net.link_prefix}", "dev", net.node_if])
    _run([*inside, "link", "set", net.node_if, "up"])
    for cidr in (net.pod_cidr, net.service_cidr):
        _run(["ip", "route", "replace", cidr, "via", net.node_ip, "dev", net.host_if])
    # Inside the namespace only: forward between the veth and the Pods' bridge, and let
    # kube-proxy's rules see bridged traffic (Pod -> Service -> Pod on the same bridge).
    _sysctl(net, "net.ipv4.ip_forward", "1")
    with contextlib.suppress(NetworkError):  # br_netfilter may be absent: no hairpin then
        _sysctl(net, "net.bridge.bridge-nf-call-iptables", "1")


def teardown(net: NodeNetwork) -> None:
    """Delete the namespace (its bridge, veths and iptables go with it), routes and owner file."""
    for cidr in (net.pod_cidr, net.service_cidr):
        _run(["ip", "route", "del", cidr], check=False)
    if net.netns_path.exists():
        _run(["ip", "netns", "del", net.netns], check=False)
    _run(["ip", "link", "del", net.host_if], check=False)
    with contextlib.suppress(FileNotFoundError):
        net.owner_file.unlink()


def netns_inode(net: NodeNetwork) -> int | None:
    try:
        return net.netns_path.stat().st_ino
    except OSError:
        return None
