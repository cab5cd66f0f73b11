"""The same conflist through `netlab cni add` with our plugins and with the
reference plugins (Debian's containernetworking-plugins in /usr/lib/cni),
each in its own throwaway node namespace; the observable state must match."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.bridge_lab import addrs, links, node_veths, pod_links, reservations, routes

REFERENCE = "/usr/lib/cni"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [pytest.mark.root, pytest.mark.e2e, pytest.mark.slow,
              pytest.mark.skipif(not os.access(os.path.join(REFERENCE, "bridge"), os.X_OK),
                                 reason="reference plugins not installed in /usr/lib/cni")]


VARIANTS = {
    # dual stack, default gateway, masquerade, MTU, hairpin
    "dualstack-masq": {"isDefaultGateway": True, "ipMasq": True, "mtu": 1400, "hairpinMode": True,
                       "ranges": [[{"subnet": "10.33.0.0/24"}], [{"subnet": "fd33::/64"}]]},
    # IPv4 only, gateway without default route, promiscuous bridge, an IPAM route
    # without "gw" (installed via the gateway by both; the reference's CHECK then
    # looks for a gateway-less route and fails: a reference bug we do not share)
    "v4-promisc": {"isGateway": True, "promiscMode": True,
                   "ranges": [[{"subnet": "10.33.0.0/24"}]],
                   "routes": [{"dst": "10.35.0.0/16"}]},
}


REF_CHECK_FAILS = {"v4-promisc"}


def conflist(data_dir: str, variant: str) -> dict:
    v = dict(VARIANTS[variant])
    ipam = {"type": "host-local", "dataDir": data_dir, "ranges": v.pop("ranges")}
    if "routes" in v:
        ipam["routes"] = v.pop("routes")
    return {"cniVersion": "1.0.0", "name": "sbs",
            "plugins": [{"type": "bridge", "bridge": "cni0", **v, "ipam": ipam}]}


def netlab_cni(verb: str, conf_path: str, netns: str | None, *, cni_path: str, cache: str,
               node, cid: str = "") -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "netlab", "cni", verb, conf_path]
    if netns:
        argv.append(netns)
    if cid:
        argv += ["--id", cid]
    argv += ["--cni-path", cni_path, "--cache-dir", cache, "--host-netns", node.path]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)


def with_uplink(node, outside, n: int) -> None:
    node.wire(outside, "up0", "up0o", (f"10.34.{n}.1/24",), (f"10.34.{n}.2/24",))


def reach(ns, addr: str, tries: int = 4) -> bool:
    fam = ["-6"] if ":" in addr else []
    for _ in range(tries):
        if ns.run("ping", *fam, "-c", "1", "-W", "1", addr, check=False).returncode == 0:
            return True
        time.sleep(0.3)
    return False


def observe(node, pods, outside_addr: str, result: dict) -> dict:
    """Everything a user can see of the attachment, with implementation-chosen names removed."""
    host_veths = sorted(node_veths(node) - {"up0"})
    nl = links(node)
    state = {
        "result_ips": result.get("ips"),
        "result_routes": sorted(json.dumps(r, sort_keys=True) for r in result.get("routes", [])),
        "result_if_names": [result["interfaces"][0]["name"], result["interfaces"][2]["name"]],
        "result_sandbox": result["interfaces"][2].get("sandbox") == pods[0].path,
        "bridge_mtu": nl["cni0"]["mtu"],
        "bridge_promisc": "PROMISC" in nl["cni0"]["flags"],
        "bridge_addrs": sorted(addrs(node, "cni0")),
        "n_host_veths": len(host_veths),
        "veths": sorted((nl[v]["mtu"], nl[v].get("master"),
                         nl[v]["linkinfo"]["info_slave_data"]["hairpin"]) for v in host_veths),
        "forwarding": node.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip(),
    }
    for i, p in enumerate(pods):
        pl = links(p)
        state[f"pod{i}"] = {
            "links": sorted(pod_links(p)),
            "mtu": pl["eth0"]["mtu"],
            "up": "UP" in pl["eth0"]["flags"],
            "addrs": sorted(addrs(p, "eth0")),
            "routes4": sorted((r["dst"], r.get("gateway", "")) for r in routes(p, "-4")),
            "routes6": sorted((r["dst"], r.get("gateway", "")) for r in routes(p, "-6")
                              if not r["dst"].startswith("fe80")),
            "arp_notify": p.run("sysctl", "-n", "net.ipv4.conf.eth0.arp_notify").stdout.strip(),
        }
    a1 = [x.split("/")[0] for x in addrs(pods[1], "eth0")]
    v6 = any(":" in a for a in a1)
    state["reach"] = {
        "pod_to_pod": all(reach(pods[0], a) for a in sorted(a1)),
        "gateway4": reach(pods[0], "10.33.0.1"),
        "gateway6": reach(pods[0], "fd33::1") if v6 else None,
        "outside_via_masq": reach(pods[0], outside_addr, tries=1 if not v6 else 4),
    }
    return state


def run_side(kind: str, make_netns, tmp_path, cni_path: str, n: int, variant: str):
    node, outside = make_netns("node"), make_netns("out")
    pods = [make_netns("pod"), make_netns("pod")]
    with_uplink(node, outside, n)
    data, cache = str(tmp_path / f"{kind}-ipam"), str(tmp_path / f"{kind}-cache")
    path = tmp_path / f"{kind}.conflist"
    path.write_text(json.dumps(conflist(data, variant)))
    results = []
    for i, p in enumerate(pods):
        proc = netlab_cni("add", str(path), p.path, cni_path=cni_path, cache=cache, node=node,
                          cid=f"ctr{i}")
        assert proc.returncode == 0, f"{kind} ADD failed: {proc.stderr}"
        results.append(json.loads(proc.stdout))
    before = observe(node, pods, f"10.34.{n}.2", results[0])
    proc = netlab_cni("check", str(path), pods[0].path, cni_path=cni_path, cache=cache,
                      node=node, cid="ctr0")
    before["check_ok"] = proc.returncode == 0
    for i, p in enumerate(pods):
        proc = netlab_cni("del", str(path), p.path, cni_path=cni_path, cache=cache, node=node,
                          cid=f"ctr{i}")
        assert proc.returncode == 0, f"{kind} DEL failed: {proc.stderr}"
    after = {"pod_links": [sorted(pod_links(p)) for p in pods],
             "host_veths": sorted(node_veths(node) - {"up0"}),
             "reservations": reservations(data, "sbs")}
    return before, after


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_same_conflist_same_observable_state(make_netns, tmp_path, installed_plugins, variant):
    ours_before, ours_after = run_side("ours", make_netns, tmp_path, installed_plugins, 1, variant)
    ref_before, ref_after = run_side("ref", make_netns, tmp_path, REFERENCE, 2, variant)
    # the uplink subnets differ by design (10.34.1/10.34.2): nothing observed depends on it
    assert ours_before.pop("check_ok"), "our CHECK failed right after ADD"
    assert ref_before.pop("check_ok") == (variant not in REF_CHECK_FAILS)
    assert ours_before == ref_before
    assert ours_after == ref_after
    masq = VARIANTS[variant].get("ipMasq", False)
    dual = len(VARIANTS[variant]["ranges"]) == 2
    assert ours_before["reach"] == {"pod_to_pod": True, "gateway4": True,
                                    "gateway6": True if dual else None,
                                    "outside_via_masq": masq}
    assert ours_after["pod_links"] == [[], []] and ours_after["host_veths"] == []
    assert ours_after["reservations"] == {}
