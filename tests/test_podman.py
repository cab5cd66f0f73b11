"""A real container engine against our installed plugins: Debian's podman (CNI
backend) with runc, in a throwaway node namespace.

podman execs the plugins through libcni (the same library containerd and CRI-O
embed), so this checks the calls real runtimes make: VERSION probes with
CNI_NETNS=dummy, ADD/DEL through a conflist bridge + host-local + portmap +
bandwidth, the portMappings capability, teardown when the container exits.

Everything podman keeps is in tmp dirs (--root, --runroot, tmp_dir, config
dirs); the one exception is libcni's result cache, which podman 4.3 always
keeps in /var/lib/cni/results: we check our entry is gone afterwards and remove
the directories if this test created them.
"""
from __future__ import annotations

import ipaddress
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import pytest

from tests import node_state

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.e2e]

NET = "cnilabpod"
BRIDGE = "cnilab-pod0"
SUBNET = "10.91.7.0/24"
GW = "10.91.7.1"
UP_NODE, UP_CLIENT = "10.92.0.1", "10.92.0.2"
HOST_PORT = 18080
BW = {"ingressRate": 50_000_000, "ingressBurst": 5_000_000,
      "egressRate": 40_000_000, "egressBurst": 4_000_000}
LIBCNI_CACHE = "/var/lib/cni"
PODMAN_FLAGS = ("--runtime", "runc")
RUN_FLAGS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096")

MISSING = [t for t in ("podman", "runc", "nsenter", "conmon") if shutil.which(t) is None]
BUSYBOX = next((p for p in ("/bin/busybox", "/usr/bin/busybox") if os.path.exists(p)), None)


def _skip_reason() -> str | None:
    if MISSING:
        return f"not installed: {', '.join(MISSING)} (Debian packages podman, runc, conmon)"
    if BUSYBOX is None:
        return "busybox-static is not installed"
    return None


pytestmark.append(pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or ""))


def conflist(ipam_dir: str) -> dict:
    return {"cniVersion": "1.0.0", "name": NET, "plugins": [
        {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "hairpinMode": True,
         "ipam": {"type": "host-local", "dataDir": ipam_dir,
                  "ranges": [[{"subnet": SUBNET}]], "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        # podman's CNI backend passes no bandwidth capability: limits set in the config
        dict({"type": "bandwidth", "capabilities": {"bandwidth": True}}, **BW)]}


def make_rootfs(d: str) -> None:
    """A busybox root filesystem (no image pull): /bin/busybox + applets, a web root."""
    os.makedirs(os.path.join(d, "bin"))
    shutil.copy2(BUSYBOX, os.path.join(d, "bin", "busybox"))
    for applet in ("sh", "httpd", "ip", "sleep", "cat", "echo", "test", "[", "true", "nc"):
        os.symlink("busybox", os.path.join(d, "bin", applet))
    for sub in ("etc", "proc", "sys", "dev", "tmp", "www", "run"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    with open(os.path.join(d, "www", "index.html"), "w") as f:
        f.write("hello from the pod\n")


class Podman:
    """podman with every piece of its state in tmp dirs, run with the node netns as host."""

    def __init__(self, tmp, node, bin_dir: str, default_network: str = NET,
                 default_subnet: str = "") -> None:
        self.tmp = tmp          # short: podman refuses a runroot longer than 50 characters
        self.node = node
        self.conf_dir = tmp / "net.d"
        self.conf_dir.mkdir()
        for sub in ("root", "runroot", "tmpdir"):
            (tmp / sub).mkdir()
        conf = tmp / "containers.conf"
        conf.write_text(
            "[network]\n"
            'network_backend = "cni"\n'
            f'default_network = "{default_network}"\n'
            + (f'default_subnet = "{default_subnet}"\n' if default_subnet else "") +
            f'cni_plugin_dirs = ["{bin_dir}"]\n'
            f'network_config_dir = "{self.conf_dir}"\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{tmp}/events.log"\n'
            f'tmp_dir = "{tmp}/tmpdir"\n')
        storage = tmp / "storage.conf"
        storage.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{tmp}/root"\n'
                           f'runroot = "{tmp}/runroot"\n')
        self.env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                    "CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage),
                    "CNILAB_AGENT": "off", "HOME": str(tmp)}

    def argv(self, *args: str) -> list[str]:
        # nsenter, not `ip netns exec`: the latter remounts /sys and hides the cgroup
        # mounts runc needs
        return ["nsenter", f"--net={self.node.path}", "podman",
                "--root", str(self.tmp / "root"), "--runroot", str(self.tmp / "runroot"),
                "--storage-driver", "vfs", *PODMAN_FLAGS, *args]

    def run(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd="/")

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*args), env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd="/")


def _remove_tree(d: pathlib.Path) -> None:
    # conmon's exit command (`podman container cleanup`) may still be writing there
    for _ in range(10):
        shutil.rmtree(d, ignore_errors=True)
        if not d.exists():
            return
        time.sleep(0.5)


def _rmdir_if_empty(d: str) -> None:
    try:
        os.rmdir(d)
    except OSError:
        pass


def http_get(ns, host: str, port: int) -> str:
    code = ("import sys, urllib.request\n"
            "try:\n"
            f"    print(urllib.request.urlopen('http://{host}:{port}/', timeout=2).read().decode())\n"
            "except Exception as e:\n"
            "    print('ERR', e)\n")
    return ns.run(sys.executable, "-c", code, check=False, timeout=30).stdout.strip()


@dataclass
class Run:
    """What one published container run showed: while it ran, and after it exited."""
    returncode: int
    out: str
    err: str
    cid: str
    answer: str
    running: dict
    cache: dict             # libcni's cache entry while running ({} when none)
    cache_left: bool


class Engine:
    """A node and a client namespace, our plugins alone in a bin dir, podman set up."""

    def __init__(self, tmp_path, make_netns, request, **podman_kw) -> None:
        self.tmp_path = tmp_path
        self.node, self.client = make_netns("pmnode"), make_netns("pmcli")
        self.bin_dir = tmp_path / "bin"
        subprocess.run([sys.executable, "-m", "netlab", "cni", "install", str(self.bin_dir)],
                       check=True, capture_output=True, text=True, timeout=120)
        self.rootfs = tmp_path / "rootfs"
        make_rootfs(str(self.rootfs))
        short = pathlib.Path(tempfile.mkdtemp(prefix="cnlpm", dir="/tmp"))
        request.addfinalizer(lambda: _remove_tree(short))
        self.pm = Podman(short, self.node, str(self.bin_dir), **podman_kw)
        # libcni's cache: podman 4.3 always keeps it in /var/lib/cni/results; the dirs
        # this test creates go again if empty (never anyone else's files)
        made = [d for d in (LIBCNI_CACHE, os.path.join(LIBCNI_CACHE, "results"))
                if not os.path.exists(d)]
        request.addfinalizer(lambda: [_rmdir_if_empty(d) for d in reversed(made)])
        if os.environ.get("CNILAB_RUN_DIR"):
            self.pm.env["CNILAB_RUN_DIR"] = os.environ["CNILAB_RUN_DIR"]
        # an uplink to a client namespace, which reaches the published port from outside
        self.node.wire(self.client, "up0", "up0c", (f"{UP_NODE}/24",), (f"{UP_CLIENT}/24",))

    def require_podman(self) -> None:
        """podman itself must work here, whatever the network: otherwise skip, saying why."""
        pre = self.pm.run("run", "--rm", "--network", "none", *RUN_FLAGS, "--rootfs",
                          str(self.rootfs), "/bin/true")
        if pre.returncode != 0:
            pytest.skip(f"podman cannot run a container on this machine (network none): "
                        f"{pre.stderr.strip()[-600:]}")

    def networks(self) -> list[str]:
        ls = self.pm.run("network", "ls", "--format", "{{.Name}}")
        assert ls.returncode == 0, ls.stderr            # libcni VERSION probes ok
        assert "Error validating CNI config" not in ls.stderr, ls.stderr
        return ls.stdout.split()

    def serve(self, network: str, ipam_dir: str, tag: str = "cid") -> Run:
        """Run a busybox httpd on ``network`` with HOST_PORT published; stop it; collect."""
        cidfile = self.tmp_path / tag
        stop = self.rootfs / "tmp" / "stop"
        if stop.exists():
            stop.unlink()
        script = ("ip -4 -o addr show dev eth0; httpd -p 80 -h /www; i=0; "
                  "while [ ! -e /tmp/stop ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done")
        proc = self.pm.popen("run", "--rm", "--cidfile", str(cidfile), "--network", network,
                             "-p", f"{HOST_PORT}:80", *RUN_FLAGS, "--rootfs", str(self.rootfs),
                             "/bin/sh", "-c", script)
        cache: dict = {}
        running: dict = {}
        answer = out = err = ""
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and proc.poll() is None:
                answer = http_get(self.client, UP_NODE, HOST_PORT)
                if answer.startswith("hello"):
                    break
                time.sleep(0.3)
            running = {"veths": node_state.links_of_kind(self.node.name, "veth"),
                       "ifbs": node_state.links_of_kind(self.node.name, "ifb"),
                       "reservations": node_state.reservations(ipam_dir, network),
                       "rules": node_state.our_rules(self.node.name)}
            cid = cidfile.read_text().strip() if cidfile.exists() else ""
            entry = os.path.join(LIBCNI_CACHE, "results", f"{network}-{cid}-eth0")
            if cid and os.path.exists(entry):
                with open(entry) as f:
                    cache = json.load(f)
            stop.write_text("")
            out, err = proc.communicate(timeout=60)
        finally:
            cid = self.finish(proc, cidfile)
            cache_left = False
            if cid:
                leftover = os.path.join(LIBCNI_CACHE, "results", f"{network}-{cid}-eth0")
                cache_left = os.path.exists(leftover)
                if cache_left:
                    os.unlink(leftover)        # ours, by exact name
        return Run(proc.returncode, out, err, cid, answer, running, cache, cache_left)

    def finish(self, proc: subprocess.Popen, cidfile: pathlib.Path) -> str:
        """Stop a container of ours (the stop file), wait for podman, remove it;
        returns its ID ('' when podman wrote none)."""
        if proc.poll() is None:
            (self.rootfs / "tmp" / "stop").write_text("")
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
        cid = cidfile.read_text().strip() if cidfile.exists() else ""
        if cid:
            self.pm.run("rm", "-f", "-t", "0", cid)
        return cid

    def reach_across(self, client_net: str, server_net: str) -> bool:
        """Does a container on ``client_net`` get the page of an httpd container on
        ``server_net``? Both run on the shared busybox root filesystem."""
        tmp = self.rootfs / "tmp"
        for marker in ("stop", "ready"):
            if (tmp / marker).exists():
                (tmp / marker).unlink()
        cidfile = self.tmp_path / f"srv-{server_net}"
        srv = self.pm.popen("run", "--rm", "--cidfile", str(cidfile), "--network", server_net,
                            *RUN_FLAGS, "--rootfs", str(self.rootfs), "/bin/sh", "-c",
                            "httpd -p 80 -h /www && echo > /tmp/ready; i=0; "
                            "while [ ! -e /tmp/stop ] && [ $i -lt 300 ]; do sleep 0.1; "
                            "i=$((i+1)); done")
        try:
            deadline = time.monotonic() + 90      # a wait, not a timing: a busy machine is slow
            while time.monotonic() < deadline and srv.poll() is None \
                    and not (tmp / "ready").exists():
                time.sleep(0.1)
            ips = node_state.reservations(HOST_LOCAL_DEFAULT, server_net)
            assert (tmp / "ready").exists() and len(ips) == 1, (ips, srv.poll())
            cli = self.pm.run("run", "--rm", "--network", client_net, *RUN_FLAGS, "--rootfs",
                              str(self.rootfs), "/bin/sh", "-c",
                              # busybox's wget segfaults in Debian 12's static build: nc
                              f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {next(iter(ips))} 80"
                              " || echo UNREACHABLE")
            assert cli.returncode == 0, cli.stderr[-1000:]
            return "hello from the pod" in cli.stdout
        finally:
            self.finish(srv, cidfile)

    def assert_served(self, run: Run, network: str, subnet: str, ipam_dir: str) -> str:
        """The container got our address and answered on the published port; returns it."""
        assert run.returncode == 0, run.err[-2000:]
        assert run.cid, "podman wrote no container ID"
        addr = next((w for w in run.out.split() if "/" in w and w[0].isdigit()), "")
        assert addr, run.out
        ip = addr.split("/")[0]
        net = ipaddress.ip_network(subnet)
        assert ipaddress.ip_address(ip) in net and ip != str(net.network_address + 1)
        assert run.running["reservations"] == {ip: f"{run.cid}/eth0"}
        # the published port answered from another namespace, through portmap's DNAT
        assert run.answer == "hello from the pod", run.answer
        assert any(run.cid in r for r in run.running["rules"])
        return ip

    def assert_nothing_left(self, run: Run, network: str, ipam_dir: str) -> None:
        left = node_state.leftovers(self.node.name, ipam_dir, network, keep_links=("up0",))
        assert node_state.nothing_left(left), left
        assert not run.cache_left, "podman left its libcni cache entry"
        assert not http_get(self.client, UP_NODE, HOST_PORT).startswith("hello")


def test_podman_runs_a_container_on_our_plugins(tmp_path, make_netns, request):
    eng = Engine(tmp_path, make_netns, request)
    ipam_dir = str(tmp_path / "ipam")
    (eng.pm.conf_dir / f"50-{NET}.conflist").write_text(json.dumps(conflist(ipam_dir)))
    eng.require_podman()
    assert NET in eng.networks()
    run = eng.serve(NET, ipam_dir)
    eng.assert_served(run, NET, SUBNET, ipam_dir)
    assert len(run.running["veths"]) == 2 and "up0" in run.running["veths"]  # up0 + the pod's
    assert len(run.running["ifbs"]) == 1                                     # bandwidth egress
    eng.assert_nothing_left(run, NET, ipam_dir)


# ---- conflists podman writes itself: bridge, portmap, firewall, tuning at 0.4.0 -------

HOST_LOCAL_DEFAULT = "/var/lib/cni/networks"     # no dataDir in podman's conflists


@pytest.fixture
def default_store(request):
    """host-local's default store, used by podman's own conflists: the test removes
    its network's directory (unique name) and the parents it created."""
    made = [d for d in ("/var/lib/cni", HOST_LOCAL_DEFAULT) if not os.path.exists(d)]
    names: list[str] = []
    yield names
    for n in names:                      # unique to this test: the whole store goes
        shutil.rmtree(os.path.join(HOST_LOCAL_DEFAULT, n), ignore_errors=True)
    for d in reversed(made):
        try:
            os.rmdir(d)
        except OSError:
            pass


def _plugins_of(cache: dict) -> tuple[str, list[str]]:
    """(cniVersion, plugin types) of the conflist libcni ran, from its cache entry."""
    import base64
    conf = json.loads(base64.b64decode(cache["config"]))
    return conf["cniVersion"], [p["type"] for p in conf["plugins"]]


def test_podman_default_network_runs_on_our_suite_alone(tmp_path, make_netns, request,
                                                        default_store):
    """podman's own default network (generated in memory by podman 4.3, as it would
    write 87-podman-bridge.conflist: bridge, portmap, firewall, tuning at 0.4.0)."""
    from tests.conftest import unique_name
    name = unique_name("pmdef").replace("-", "")
    subnet = "10.91.8.0/24"
    eng = Engine(tmp_path, make_netns, request, default_network=name, default_subnet=subnet)
    eng.require_podman()
    assert name in eng.networks()
    default_store.append(name)
    store = HOST_LOCAL_DEFAULT
    run = eng.serve(name, store)
    eng.assert_served(run, name, subnet, store)
    assert _plugins_of(run.cache) == ("0.4.0", ["bridge", "portmap", "firewall", "tuning"])
    fw = [r for r in run.running["rules"] if "cnilab-firewall" in r]
    assert any(f"c:{run.cid}" in r for r in fw), run.running["rules"]
    eng.assert_nothing_left(run, name, store)


def test_podman_network_create_runs_on_our_suite_alone(tmp_path, make_netns, request,
                                                       default_store):
    """`podman network create` writes a conflist (CNI backend) into our tmp config dir;
    a container on it runs on our plugins alone."""
    from tests.conftest import unique_name
    name = unique_name("pmnew").replace("-", "")
    subnet = "10.91.9.0/24"
    eng = Engine(tmp_path, make_netns, request)
    eng.require_podman()
    made = eng.pm.run("network", "create", "--subnet", subnet, name)
    assert made.returncode == 0, made.stderr
    default_store.append(name)
    written = json.loads((eng.pm.conf_dir / f"{name}.conflist").read_text())
    assert written["cniVersion"] == "0.4.0"
    assert [p["type"] for p in written["plugins"]] == ["bridge", "portmap", "firewall", "tuning"]
    assert name in eng.networks()
    store = HOST_LOCAL_DEFAULT
    run = eng.serve(name, store)
    eng.assert_served(run, name, subnet, store)
    assert _plugins_of(run.cache) == ("0.4.0", ["bridge", "portmap", "firewall", "tuning"])
    eng.assert_nothing_left(run, name, store)
    assert eng.pm.run("network", "rm", name).returncode == 0


def test_podman_isolated_networks_keep_apart(tmp_path, make_netns, request, default_store):
    """`podman network create -o isolate=true` writes firewall ingressPolicy
    "same-bridge": a container on one isolated network cannot reach one on another,
    where the same two networks without the option can (the control)."""
    from tests.conftest import unique_name
    eng = Engine(tmp_path, make_netns, request)
    eng.require_podman()
    reached = {}
    for isolate, subnets in ((False, ("10.91.12.0/24", "10.91.13.0/24")),
                             (True, ("10.91.14.0/24", "10.91.15.0/24"))):
        names = []
        for subnet in subnets:
            name = unique_name("pmiso").replace("-", "")
            opts = ("-o", "isolate=true") if isolate else ()
            made = eng.pm.run("network", "create", *opts, "--subnet", subnet, name)
            assert made.returncode == 0, made.stderr
            default_store.append(name)
            names.append(name)
        policy = json.loads((eng.pm.conf_dir / f"{names[0]}.conflist").read_text())[
            "plugins"][2].get("ingressPolicy")
        assert policy == ("same-bridge" if isolate else None)
        reached[isolate] = eng.reach_across(names[0], names[1])
    assert reached == {False: True, True: False}
