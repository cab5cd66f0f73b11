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
    for applet in ("sh", "httpd", "ip", "sleep", "cat", "echo", "test", "[", "true"):
        os.symlink("busybox", os.path.join(d, "bin", applet))
    for sub in ("etc", "proc", "sys", "dev", "tmp", "www", "run"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    with open(os.path.join(d, "www", "index.html"), "w") as f:
        f.write("hello from the pod\n")


class Podman:
    """podman with every piece of its state in tmp dirs, run with the node netns as host."""

    def __init__(self, tmp, node, bin_dir: str) -> None:
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
            f'default_network = "{NET}"\n'
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


def http_get(ns, host: str, port: int) -> str:
    code = ("import sys, urllib.request\n"
            "try:\n"
            f"    print(urllib.request.urlopen('http://{host}:{port}/', timeout=2).read().decode())\n"
            "except Exception as e:\n"
            "    print('ERR', e)\n")
    return ns.run(sys.executable, "-c", code, check=False, timeout=30).stdout.strip()


def test_podman_runs_a_container_on_our_plugins(tmp_path, make_netns, request):
    node, client = make_netns("pmnode"), make_netns("pmcli")
    bin_dir = tmp_path / "bin"
    subprocess.run([sys.executable, "-m", "netlab", "cni", "install", str(bin_dir)],
                   check=True, capture_output=True, text=True, timeout=120)
    ipam_dir = tmp_path / "ipam"
    rootfs = tmp_path / "rootfs"
    make_rootfs(str(rootfs))
    short = pathlib.Path(tempfile.mkdtemp(prefix="cnlpm", dir="/tmp"))
    request.addfinalizer(lambda: _remove_tree(short))
    pm = Podman(short, node, str(bin_dir))
    (pm.conf_dir / f"50-{NET}.conflist").write_text(json.dumps(conflist(str(ipam_dir))))
    # an uplink to a client namespace, which reaches the published port from outside
    node.wire(client, "up0", "up0c", (f"{UP_NODE}/24",), (f"{UP_CLIENT}/24",))

    cache_existed = os.path.exists(LIBCNI_CACHE)
    results_existed = os.path.exists(os.path.join(LIBCNI_CACHE, "results"))
    # podman itself must work here, whatever the network: otherwise skip, saying why
    pre = pm.run("run", "--rm", "--network", "none", *RUN_FLAGS, "--rootfs", str(rootfs),
                 "/bin/true")
    if pre.returncode != 0:
        pytest.skip(f"podman cannot run a container on this machine (network none): "
                    f"{pre.stderr.strip()[-600:]}")
    ls = pm.run("network", "ls", "--format", "{{.Name}}")
    assert ls.returncode == 0 and NET in ls.stdout.split(), ls.stderr  # libcni VERSION probes ok
    assert "Error validating CNI config" not in ls.stderr, ls.stderr

    cidfile = tmp_path / "cid"
    stop = rootfs / "tmp" / "stop"
    script = ("ip -4 -o addr show dev eth0; httpd -p 80 -h /www; i=0; "
              "while [ ! -e /tmp/stop ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done")
    proc = pm.popen("run", "--rm", "--cidfile", str(cidfile), "--network", NET,
                    "-p", f"{HOST_PORT}:80", *RUN_FLAGS, "--rootfs", str(rootfs),
                    "/bin/sh", "-c", script)
    try:
        deadline = time.monotonic() + 30
        answer = ""
        while time.monotonic() < deadline and proc.poll() is None:
            answer = http_get(client, UP_NODE, HOST_PORT)
            if answer.startswith("hello"):
                break
            time.sleep(0.3)
        running = {"veths": node_state.links_of_kind(node.name, "veth"),
                   "ifbs": node_state.links_of_kind(node.name, "ifb"),
                   "reservations": node_state.reservations(str(ipam_dir), NET),
                   "rules": node_state.our_rules(node.name)}
        stop.write_text("")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            stop.write_text("")
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
        cid = cidfile.read_text().strip() if cidfile.exists() else ""
        if cid:
            pm.run("rm", "-f", "-t", "0", cid)
            leftover = os.path.join(LIBCNI_CACHE, "results", f"{NET}-{cid}-eth0")
            cache_left = os.path.exists(leftover)
            if cache_left:
                os.unlink(leftover)        # ours, by exact name
        else:
            cache_left = False
        if not results_existed:
            for d in (os.path.join(LIBCNI_CACHE, "results"),) + (() if cache_existed
                                                                 else (LIBCNI_CACHE,)):
                try:
                    os.rmdir(d)            # only if empty: never anyone else's files
                except OSError:
                    pass

    assert proc.returncode == 0, err[-2000:]
    assert cid, "podman wrote no container ID"
    # the container got an address from our IPAM, in our subnet
    addr = next((w for w in out.split() if "/" in w and w[0].isdigit()), "")
    assert addr, out
    ip = addr.split("/")[0]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(SUBNET) and ip != GW
    assert running["reservations"] == {ip: f"{cid}/eth0"}
    # the published port answered from another namespace, through portmap's DNAT
    assert answer == "hello from the pod", answer
    assert len(running["veths"]) == 2 and "up0" in running["veths"]   # up0 + the pod's
    assert len(running["ifbs"]) == 1                                   # bandwidth egress
    assert any(cid in r for r in running["rules"])
    # after the container exited, nothing of it remains
    left = node_state.leftovers(node.name, str(ipam_dir), NET, keep_links=("up0",))
    assert node_state.nothing_left(left), left
    assert not cache_left, "podman left its libcni cache entry"
    assert not http_get(client, UP_NODE, HOST_PORT).startswith("hello")
