"""containerd (kind's runtime) running a CNI suite through CRI, the way a kubelet drives it.

One private containerd per suite (module scope), started inside a throwaway
node namespace by netlab.cri (own root, state, socket, CRI config; the
offline pause image), with a conflist bridge (+host-local) + portmap +
bandwidth. The same cases run with two suites side by side:

- ``ours``: the executables `netlab cni install` writes (with loopback);
- ``reference``: Debian's Go plugins in /usr/lib/cni.

The conflist is at cniVersion 1.0.0: containerd 1.6's libcni cannot read a
1.1.0 result (test_bad_input_through_cri shows the error it gives).

containerd hands capability args to the plugins through go-cni, whose
structs carry no JSON tags (``HostPort``, ``IngressRate``, ...). Host-port
and bandwidth cases need a suite that reads those keys as Go does; for
``ours`` they are skipped, with that reason, until our plugins do
(``netlab.cri.gocni.ours_read_go_keys`` asks our own config parsers).
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from netlab.cri.gocni import ours_read_go_keys
from tests.conftest import IS_ROOT, NS, unique_name

NEEDED = ("containerd", "ctr", "runc", "containerd-shim-runc-v2", "nsenter", "iperf3")
MISSING = [x for x in NEEDED if shutil.which(x) is None]
pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.e2e]
if MISSING:
    pytestmark.append(pytest.mark.skip(
        reason=f"{', '.join(MISSING)} not installed (make setup installs containerd, iperf3)"))

REFERENCE_DIR = "/usr/lib/cni"
CONF_VERSION = "1.0.0"
NET = "ctdnet"
SUBNET = "10.88.0.0/24"
NODE_IP, NODE_IP2 = "192.168.77.1", "192.168.78.1"
CLIENT_IP, CLIENT_IP2 = "192.168.77.2", "192.168.78.2"
LIMIT = 8_000_000                   # bit/s for the shaping cases
GOOD_CONF = "10-ctdnet.conflist"
BAD_CONF = "05-bad.conflist"        # sorts first: CRI (max_conf_num = 1) loads it instead


def conflist(data_dir: str, name: str = NET, version: str = CONF_VERSION,
             **bridge_extra) -> dict:
    return {"cniVersion": version, "name": name, "plugins": [
        {"type": "bridge", "bridge": "cni0", "isDefaultGateway": True, "ipMasq": False,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": SUBNET}]], "dataDir": data_dir},
         **bridge_extra},
        {"type": "portmap", "capabilities": {"portMappings": True}},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}},
    ]}


def needs_go_keys(node) -> None:
    if node.suite == "ours" and not ours_read_go_keys():
        pytest.skip("our plugins do not read go-cni's untagged capability keys yet "
                    "(HostPort, IngressRate, ...): containerd's port maps and bandwidth need them")


# ---- a node running containerd ---------------------------------------------------------------

class Node:
    def __init__(self, suite: str, ns: NS, client: NS, ctd, data_dir: str) -> None:
        self.suite, self.ns, self.client, self.ctd, self.data_dir = suite, ns, client, ctd, data_dir
        self.cri = ctd.client()
        self.baseline: dict = {}

    def write_conf(self, filename: str, conf: dict) -> None:
        path = os.path.join(self.ctd.conf_dir, filename)
        with open(path + ".tmp", "w") as f:
            json.dump(conf, f)
        os.replace(path + ".tmp", path)

    def status(self, sid: str):
        return self.cri.pod_sandbox_status(sid, verbose=True)

    @contextlib.contextmanager
    def pod(self, spec):
        """RunPodSandbox; the sandbox is stopped and removed however the block ends."""
        from netlab.cri import CRIError
        sid = self.cri.run_pod_sandbox(spec)
        try:
            yield sid, self.status(sid)
        finally:
            with contextlib.suppress(CRIError):
                self.cri.stop_pod_sandbox(sid)
            with contextlib.suppress(CRIError):
                self.cri.remove_pod_sandbox(sid)

    def snapshot(self) -> dict:
        """What a sandbox may leave on the node: links, addresses, nft rules, qdiscs,
        IPAM reservations, sandbox namespaces."""
        links = sorted(x["ifname"] for x in json.loads(self.ns.run("ip", "-j", "link").stdout))
        addrs = sorted(f"{x['ifname']} {a['local']}/{a['prefixlen']}"
                       for x in json.loads(self.ns.run("ip", "-j", "addr").stdout)
                       for a in x.get("addr_info", []))
        rules = re.sub(r"counter packets \d+ bytes \d+", "counter",
                       self.ns.run("nft", "list", "ruleset").stdout)
        qdiscs = sorted(f"{q['dev']} {q['kind']}"
                        for q in json.loads(self.ns.run("tc", "-j", "qdisc", "show").stdout))
        store = os.path.join(self.data_dir, NET)
        ipam = sorted(f for f in _listdir(store) if _is_ip(f))    # one file per reserved IP
        netns = _listdir(os.path.join(self.ctd.paths["state"], "io.containerd.grpc.v1.cri",
                                      "netns"))
        return {"links": links, "addrs": addrs, "nft": rules, "qdiscs": qdiscs, "ipam": ipam,
                "netns": netns}

    def assert_clean(self) -> None:
        assert self.snapshot() == self.baseline

    def in_pod(self, status, *argv: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(["nsenter", f"--net={status.netns_path}", *argv],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                **kw)


def _is_ip(name: str) -> bool:
    import ipaddress
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _listdir(d: str) -> list[str]:
    try:
        return sorted(os.listdir(d))
    except OSError:
        return []


def _wait_line(proc: subprocess.Popen, needle: str, timeout: float = 30) -> None:
    """Read the process's output until it holds ``needle`` (its readiness signal)."""
    import select
    fd, seen = proc.stdout.fileno(), b""
    while needle.encode() not in seen:
        ready, _, _ = select.select([fd], [], [], timeout)
        chunk = os.read(fd, 4096) if ready else b""
        if not chunk:
            proc.kill()
            raise AssertionError(f"no {needle!r} from {proc.args}: {seen[-500:]!r}")
        seen += chunk


def _reaps(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


@pytest.fixture(scope="module", params=["ours", "reference"])
def node(request, tmp_path_factory, installed_plugins):
    if not IS_ROOT:
        pytest.skip("needs root")
    pytest.importorskip("grpc", reason="grpcio is not installed (make setup installs it)")
    from netlab.base import namespaces as nsutil
    from netlab.cri import Containerd, ContainerdOptions, PodSpec
    suite = request.param
    bin_dir = installed_plugins if suite == "ours" else REFERENCE_DIR
    if suite == "reference" and not os.access(os.path.join(REFERENCE_DIR, "bridge"), os.X_OK):
        pytest.skip(f"no reference plugins in {REFERENCE_DIR} (containernetworking-plugins)")
    work = tmp_path_factory.mktemp(f"ctd-{suite}")
    names = [unique_name("ctd-node"), unique_name("ctd-client")]
    ctd = None
    try:
        for n in names:
            nsutil.create(n)
        ns, client = NS(names[0]), NS(names[1])
        ns.wire(client, "eth0", addrs=(f"{NODE_IP}/24", f"{NODE_IP2}/24"),
                peer_addrs=(f"{CLIENT_IP}/24", f"{CLIENT_IP2}/24"))
        data_dir = str(work / "ipam")
        ctd = Containerd(ContainerdOptions(netns=names[0], workdir=str(work / "containerd"),
                                           cni_bin_dir=bin_dir, cni_conf_dir=str(work / "net.d"),
                                           env={"CNILAB_AGENT": "off"}))
        os.makedirs(ctd.conf_dir)
        node = Node(suite, ns, client, ctd, data_dir)
        node.write_conf(GOOD_CONF, conflist(data_dir))
        ctd.start()
        ctd.import_pause_image()
        # warm-up: the first pod creates what stays for the node's life (the bridge; the
        # reference's shared CNI-HOSTPORT-* chains): the baseline is taken after it
        warm = PodSpec("warm-up")
        if suite == "reference" or ours_read_go_keys():
            from netlab.cri import PortMapping
            warm.port_mappings = [PortMapping(80, 8079)]
        with node.pod(warm):
            pass
        node.baseline = node.snapshot()
        yield node
    finally:
        problems = ctd.stop() if ctd is not None else []
        for n in names:
            nsutil.delete(n)
        leftovers = [n for n in names if nsutil.exists(n)]
        assert not leftovers, leftovers
        assert not problems, problems


# ---- the cases ---------------------------------------------------------------------------------

def test_pod_gets_an_address_dns_and_loopback_and_leaves_nothing(node):
    from netlab.cri import DNSConfig, PodSpec
    dns = DNSConfig(servers=("10.96.0.10",), searches=("default.svc.cluster.local", "svc.local"),
                    options=("ndots:5", "timeout:2"))
    with node.pod(PodSpec("dns-pod", namespace="team", dns=dns)) as (sid, st):
        assert st.state == "SANDBOX_READY" and st.name == "dns-pod"
        # PodSandboxStatus reports the address the plugins gave eth0 in the pod
        out = subprocess.run(["nsenter", f"--net={st.netns_path}", "ip", "-j", "addr"],
                             capture_output=True, text=True, check=True).stdout
        by_dev = {x["ifname"]: x for x in json.loads(out)}
        eth0 = [a["local"] for a in by_dev["eth0"]["addr_info"] if a["family"] == "inet"]
        assert eth0 == [st.ip] and st.ip.startswith("10.88.0.")
        assert "UP" in by_dev["lo"]["flags"]                      # loopback ran
        assert {"127.0.0.1", "::1"} <= {a["local"] for a in by_dev["lo"]["addr_info"]}
        # the DNS config reaches the sandbox's resolv.conf
        resolv = os.path.join(node.ctd.paths["root"], "io.containerd.grpc.v1.cri",
                              "sandboxes", sid, "resolv.conf")
        text = open(resolv).read()
        assert "nameserver 10.96.0.10" in text.splitlines()
        assert "search default.svc.cluster.local svc.local" in text.splitlines()
        assert "options ndots:5 timeout:2" in text.splitlines()
        # and the pod can reach its gateway on the node
        ping = subprocess.run(["nsenter", f"--net={st.netns_path}", "ping", "-c1", "-W2",
                               "10.88.0.1"], capture_output=True, text=True)
        assert ping.returncode == 0, ping.stdout
        assert node.snapshot() != node.baseline                   # the pod left a mark...
    node.assert_clean()                                           # ...and took it away


SERVER = r"""
import socket, sys
proto, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
if proto == "tcp":
    s.listen(8)
print("ready", flush=True)
while True:
    if proto == "tcp":
        c, _ = s.accept(); c.recv(64); c.sendall(token); c.close()
    else:
        _, peer = s.recvfrom(64); s.sendto(token, peer)
"""

CLIENT = r"""
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if proto == "tcp":
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(b"ping"); print(s.recv(64).decode() or "empty")
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
        for _ in range(3):                       # UDP: a lost datagram is retried
            s.sendto(b"ping", (host, port))
            try:
                print(s.recvfrom(64)[0].decode()); break
            except socket.timeout:
                pass
        else:
            print("timeout")
except OSError as e:
    print(type(e).__name__)
"""


def test_host_ports_tcp_udp_and_host_ip_from_another_namespace(node):
    needs_go_keys(node)
    from netlab.cri import PodSpec, PortMapping
    spec = PodSpec("web", port_mappings=[
        PortMapping(80, 8080, "TCP"),
        PortMapping(53, 5353, "UDP", host_ip=NODE_IP),
        PortMapping(81, 8081, "TCP", host_ip=NODE_IP),
    ])
    servers: list[subprocess.Popen] = []
    with node.pod(spec) as (sid, st):
        try:
            for proto, port, token in (("tcp", 80, "tcp80"), ("udp", 53, "udp53"),
                                       ("tcp", 81, "tcp81")):
                p = node.in_pod(st, sys.executable, "-c", SERVER, proto, str(port), token)
                servers.append(p)
                _wait_line(p, "ready")

            def reach(proto: str, host: str, port: int) -> str:
                return node.client.run(sys.executable, "-c", CLIENT, proto, host,
                                       str(port)).stdout.strip()

            assert reach("tcp", NODE_IP, 8080) == "tcp80"
            assert reach("tcp", NODE_IP2, 8080) == "tcp80"        # no hostIP: any address
            assert reach("udp", NODE_IP, 5353) == "udp53"
            assert reach("tcp", NODE_IP, 8081) == "tcp81"
            # hostIP binds the port to that address only: elsewhere nothing is mapped
            assert reach("tcp", NODE_IP2, 8081) == "ConnectionRefusedError"
            assert reach("udp", NODE_IP2, 5353) == "timeout"
        finally:
            _reaps(servers)
    node.assert_clean()


def _iperf(node, st, *, reverse: bool) -> float:
    """Bits/s received in a 3 s iperf3 run between the node and the pod (after 1 s omitted,
    which drains the token bucket's initial burst)."""
    server = node.in_pod(st, "iperf3", "-s", "-1", "-B", st.ip, "-p", "5201", "--forceflush")
    try:
        _wait_line(server, "listening")
        argv = ["iperf3", "-c", st.ip, "-p", "5201", "-t", "3", "-O", "1", "-J"]
        out = node.ns.run(*argv, *(["-R"] if reverse else []), timeout=60).stdout
        rate = json.loads(out)["end"]["sum_received"]["bits_per_second"]
        print(f"iperf3 {st.name} reverse={reverse}: {rate / 1e6:.2f} Mbit/s")
        return rate
    finally:
        _reaps([server])


@pytest.mark.serial     # iperf3 rates: alone, not beside other tests
def test_bandwidth_annotations_shape_both_directions(node):
    needs_go_keys(node)
    from netlab.cri import PodSpec
    shaped = PodSpec("shaped", annotations={"kubernetes.io/ingress-bandwidth": str(LIMIT),
                                            "kubernetes.io/egress-bandwidth": str(LIMIT)})
    rates = {}
    with node.pod(PodSpec("unshaped")) as (_, st):
        rates["unshaped"] = _iperf(node, st, reverse=False)
    with node.pod(shaped) as (_, st):
        rates["ingress"] = _iperf(node, st, reverse=False)        # toward the pod
        rates["egress"] = _iperf(node, st, reverse=True)          # from the pod
    for d in ("ingress", "egress"):
        assert 0.5 * LIMIT < rates[d] < 1.25 * LIMIT, rates
    assert rates["unshaped"] > 20 * LIMIT, rates
    node.assert_clean()


def test_twenty_sandboxes_in_parallel(node):
    from netlab.cri import PodSpec
    specs = [PodSpec(f"par-{i}", labels={"case": "parallel"}) for i in range(20)]
    ids: list[str] = []
    try:
        with cf.ThreadPoolExecutor(20) as pool:
            futures = [pool.submit(node.cri.run_pod_sandbox, s) for s in specs]
            for f in futures:
                ids.append(f.result())
        ips = [node.cri.pod_sandbox_status(i).ip for i in ids]
        assert len(set(ips)) == 20 and all(ip.startswith("10.88.0.") for ip in ips), ips
        assert len(node.snapshot()["ipam"]) == 20
    finally:
        def down(sid: str) -> None:
            node.cri.stop_pod_sandbox(sid)
            node.cri.remove_pod_sandbox(sid)
        with cf.ThreadPoolExecutor(20) as pool:
            list(pool.map(down, ids))
    assert node.cri.list_pod_sandbox({"case": "parallel"}) == []
    node.assert_clean()


def test_containerd_killed_and_restarted_with_sandboxes(node):
    from netlab.cri import PodSpec
    ids = [node.cri.run_pod_sandbox(PodSpec(f"survivor-{i}", labels={"case": "restart"}))
           for i in range(3)]
    try:
        before = {i: node.cri.pod_sandbox_status(i).ip for i in ids}
        old_pid = node.ctd.pid
        node.ctd.kill()                                           # SIGKILL, shims live on
        node.ctd.start()
        assert node.ctd.pid != old_pid
        listed = {s.id: s.state for s in node.cri.list_pod_sandbox({"case": "restart"})}
        assert listed == {i: "SANDBOX_READY" for i in ids}
        assert {i: node.cri.pod_sandbox_status(i).ip for i in ids} == before
    finally:
        for sid in ids:
            node.cri.stop_pod_sandbox(sid)
            node.cri.remove_pod_sandbox(sid)
    assert node.cri.list_pod_sandbox({"case": "restart"}) == []
    node.assert_clean()


@pytest.mark.parametrize("bad,expect", [
    ({"mtu": "big"}, {"ours": "mtu", "reference": "mtu"}),
    ({"cniVersion": "1.1.0"}, {"ours": 'unsupported CNI result version "1.1.0"',
                               "reference": "incompatible CNI versions"}),
], ids=["bad-field", "version-1.1.0"])
def test_bad_input_through_cri(node, bad, expect):
    """A broken conflist: RunPodSandbox fails with the plugin's error, the node is unchanged."""
    from netlab.cri import CRIError, PodSpec
    version = bad.get("cniVersion", CONF_VERSION)
    extra = {k: v for k, v in bad.items() if k != "cniVersion"}
    node.write_conf(BAD_CONF, conflist(node.data_dir, name="badnet", version=version, **extra))
    try:
        node.ctd.wait_cni_network("badnet")
        with pytest.raises(CRIError) as e:
            node.cri.run_pod_sandbox(PodSpec("broken", labels={"case": "bad"}))
        assert 'plugin type="bridge" failed (add)' in e.value.details, e.value.details
        assert expect[node.suite] in e.value.details, e.value.details
        snap = node.snapshot()
        snap.pop("netns")           # containerd keeps the failed sandbox's netns until removal
        assert snap == {k: v for k, v in node.baseline.items() if k != "netns"}
    finally:
        os.unlink(os.path.join(node.ctd.conf_dir, BAD_CONF))
        node.ctd.wait_cni_network(NET)
        for sb in node.cri.list_pod_sandbox({"case": "bad"}):
            node.cri.stop_pod_sandbox(sb.id)
            node.cri.remove_pod_sandbox(sb.id)
    node.assert_clean()
