"""netlab's per-pod work without per-pod processes (docs/adr/0030): namespaces
made and removed in-process, the offload switch as an ioctl, and plugin calls
handed to the lab's agent by the runtime itself. Each is checked against
what the tool it replaces does, in throwaway namespaces."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from netlab.base import namespaces as nsutil
from tests.conftest import unique_name

pytestmark = pytest.mark.root


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


def test_namespace_made_in_process_is_a_named_netns_with_lo_up():
    first, second = unique_name("fpa"), unique_name("fpb")
    try:
        nsutil.create(first)                 # the mount point exists after this one at the latest
        assert nsutil._netns_dir_mounted()
        nsutil.create(second)                # so this one is made in-process
        assert second in _ip("netns", "list")
        links = json.loads(_ip("-n", second, "-j", "link", "show", "lo"))
        assert "UP" in links[0]["flags"]
        # a namespace of its own, not ours nor the first one's
        own = os.stat("/proc/self/ns/net").st_ino
        assert len({own, os.stat(nsutil.path(first)).st_ino, os.stat(nsutil.path(second)).st_ino}) == 3
        _ip("-n", second, "link", "add", "fpx0", "type", "veth", "peer", "name", "fpx1")
        assert "fpx0" not in _ip("-n", first, "link")
        with pytest.raises(FileExistsError):
            nsutil.create(second)           # an existing name is an error, not reused
    finally:
        nsutil.delete(second)
        nsutil.delete(first)
    assert not nsutil.exists(second) and not nsutil.exists(first)
    assert second not in _ip("netns", "list")
    nsutil.delete(second)                   # already gone: no error


def test_offload_ioctl_matches_ethtool():
    from netlab.base.namespaces import tx_offload_off
    if subprocess.run(["which", "ethtool"], capture_output=True).returncode != 0:
        pytest.skip("ethtool is not installed (make setup installs it)")
    ns = unique_name("fpo")
    nsutil.create(ns)
    try:
        _ip("-n", ns, "link", "add", "fpa", "type", "veth", "peer", "name", "fpb")
        subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-K", "fpb", "tx", "off"],
                       capture_output=True, check=True)
        tx_offload_off(ns, "fpa")

        def features(dev: str) -> list[str]:
            out = subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-k", dev],
                                 capture_output=True, text=True, check=True).stdout
            return out.splitlines()[1:]
        assert features("fpa") == features("fpb")
        assert "tx-checksumming: off" in features("fpa")
        tx_offload_off(ns, "nosuchdev")     # as ethtool before: ignored
    finally:
        nsutil.delete(ns)


def test_runtime_hands_calls_to_the_agent_and_logs_it(tmp_path):
    """agent_direct: the same ADD/DEL, served by the agent (its counter says so),
    no plugin process; the result equals the one of the exec'd path."""
    from cninode.install import install
    from cniruntime.runtime import Runtime
    from cninode.agent import ping
    from cninode.agentctl import start_agent, stop_agent
    node, pod_a, pod_b = unique_name("fpn"), unique_name("fpp"), unique_name("fpq")
    for n in (node, pod_a, pod_b):
        nsutil.create(n)
    bindir = str(tmp_path / "bin")
    install(bindir)
    sock = str(tmp_path / "agent.sock")
    start_agent(sock, log_path=str(tmp_path / "agent.log"), workers=4)
    try:
        conf = {"cniVersion": "1.1.0", "name": "fpnet", "plugins": [
            {"type": "bridge", "bridge": "fpbr0", "isGateway": True,
             "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"),
                      "ranges": [[{"subnet": "10.251.7.0/24"}]]}}]}
        env = {"PATH": os.environ["PATH"], "CNILAB_RUN_DIR": str(tmp_path / "run"),
               "CNILAB_AGENT": "on", "CNILAB_AGENT_SOCKET": sock}
        log = str(tmp_path / "cni.log")
        direct = Runtime([bindir], cache_dir=str(tmp_path / "c1"), host_netns=nsutil.path(node),
                         log_path=log, env=env, agent_direct=True)
        execd = Runtime([bindir], cache_dir=str(tmp_path / "c2"), host_netns=nsutil.path(node),
                        log_path=log, env=dict(env, CNILAB_AGENT="off"), agent_direct=True)
        served0 = ping(sock)["served"]
        ra = direct.add(conf, nsutil.path(pod_a), "fpca", "eth0")
        assert ping(sock)["served"] == served0 + 1
        rb = execd.add(conf, nsutil.path(pod_b), "fpcb", "eth0")
        assert ping(sock)["served"] == served0 + 1          # agent off: exec'd, in-process
        assert sorted(ra) == sorted(rb)
        assert ra["ips"][0]["address"] != rb["ips"][0]["address"]
        assert "eth0" in _ip("-n", pod_a, "link")
        direct.delete(conf, nsutil.path(pod_a), "fpca", "eth0")
        assert ping(sock)["served"] == served0 + 2
        execd.delete(conf, nsutil.path(pod_b), "fpcb", "eth0")
        lines = [json.loads(x) for x in open(log)]
        assert [x.get("via") for x in lines] == ["agent", None, "agent", None]
        assert "eth0" not in _ip("-n", pod_a, "link")
    finally:
        stop_agent(sock)
        for n in (pod_b, pod_a, node):
            nsutil.delete(n)
