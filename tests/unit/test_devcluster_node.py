"""The dev cluster's node network and configuration: addresses that never leave the machine.

The slots' address plans are pure, so they are checked here for every slot: each range inside
the documentation ranges, never the range of this machine's own uplink, and no two slots
overlapping (two clusters run side by side). The node's configuration files carry the settings
this machine needs (cgroup v1, no CAP_SYS_RESOURCE, nothing pulled, no host DNS for Pods).
"""

from __future__ import annotations

import ipaddress
import itertools
import json
from pathlib import Path

import pytest
import yaml

from kumulus.devcluster import node
from kumulus.devcluster.network import SLOTS, NodeNetwork

pytestmark = pytest.mark.unit

DOCUMENTATION = [ipaddress.IPv4Network(n) for n in ("198.51.100.0/24", "203.0.113.0/24")]
UPLINK = ipaddress.IPv4Network("192.0.2.0/24")


def _ranges(net: NodeNetwork) -> list[ipaddress.IPv4Network]:
    cidrs = (f"{net.host_ip}/{net.link_prefix}", net.service_cidr, net.pod_cidr)
    return [ipaddress.IPv4Network(c, strict=False) for c in cidrs]


@pytest.mark.parametrize("slot", range(SLOTS))
def test_every_range_of_a_slot_is_a_documentation_range(slot: int) -> None:
    net = NodeNetwork(slot)
    for cidr in _ranges(net):
        assert any(cidr.subnet_of(doc) for doc in DOCUMENTATION), cidr
        assert not cidr.overlaps(UPLINK)
    link = ipaddress.ip_network(f"{net.host_ip}/{net.link_prefix}", strict=False)
    assert ipaddress.ip_address(net.node_ip) in link
    assert ipaddress.ip_address(net.kubernetes_service_ip) in ipaddress.ip_network(net.service_cidr)
    assert ipaddress.ip_address(net.pod_gateway) in ipaddress.ip_network(net.pod_cidr)


def test_no_two_slots_share_an_address() -> None:
    for a, b in itertools.combinations(range(SLOTS), 2):
        for x, y in itertools.product(_ranges(NodeNetwork(a)), _ranges(NodeNetwork(b))):
            assert not x.overlaps(y), (a, b, x, y)
    names = [(n.netns, n.host_if, n.node_if, n.bridge) for n in map(NodeNetwork, range(SLOTS))]
    assert len({x for row in names for x in row}) == 4 * SLOTS
    # Linux interface names are at most 15 characters.
    assert all(len(x) <= 15 for row in names for x in row)


def test_the_pod_range_holds_max_pods() -> None:
    usable = ipaddress.ip_network(NodeNetwork(0).pod_cidr).num_addresses - 3  # net, gw, bcast
    assert usable >= node.MAX_PODS


def test_node_configuration_files(tmp_path: Path) -> None:
    net = NodeNetwork(1)
    layout = node.NodeLayout(tmp_path)
    node.write_containerd_config(layout, net, "kumulus.dev/pause:9")
    text = layout.containerd_config.read_text()
    assert 'sandbox_image = "kumulus.dev/pause:9"' in text
    assert "restrict_oom_score_adj = true" in text
    assert "SystemdCgroup = false" in text
    assert f'address = "{layout.containerd_socket}"' in text
    cni = json.loads((layout.cni_conf_dir / "10-kumulus.conflist").read_text())
    (bridge,) = cni["plugins"]
    assert bridge["ipam"]["ranges"] == [[{"subnet": net.pod_cidr, "gateway": net.pod_gateway}]]
    assert bridge["ipMasq"] is False  # nothing is ever masqueraded off the machine

    ca = tmp_path / "ca.crt"
    node.write_kubelet_config(layout, net, tls_cert=ca, tls_key=ca, client_ca=ca)
    kubelet = yaml.safe_load(layout.kubelet_config.read_text())
    assert (kubelet["cgroupDriver"], kubelet["failCgroupV1"]) == ("cgroupfs", False)
    assert kubelet["cgroupRoot"] == f"/{node.cgroup_name(net)}"
    assert kubelet["resolvConf"] == ""
    assert kubelet["authentication"]["anonymous"] == {"enabled": False}
    assert kubelet["authorization"] == {"mode": "Webhook"}
    assert kubelet["address"] == net.node_ip

    node.write_kube_proxy_config(layout, net, kubeconfig=ca, node_name="n")
    proxy = yaml.safe_load(layout.kube_proxy_config.read_text())
    assert (proxy["mode"], proxy["clusterCIDR"]) == ("iptables", net.pod_cidr)
