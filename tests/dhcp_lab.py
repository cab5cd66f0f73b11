"""A DHCP-served bridge segment for root tests: a node namespace with bridge
cni0 (10.40.0.1/24, the pods' gateway), a server namespace on the bridge
running dnsmasq (DHCP only: --port=0, no upstream DNS, its own lease and pid
files), and a dhcp daemon (ours or the reference's) in the node namespace.
Every process is started here and stopped here by its Popen (its PID)."""
from __future__ import annotations

import os
import subprocess
import time

SUBNET_GW = "10.40.0.1"
SERVER = "10.40.0.2"
RANGE = ("10.40.0.50", "10.40.0.99")


def wait_for(pred, what: str, tries: int = 100, step: float = 0.1) -> None:
    for _ in range(tries):
        if pred():
            return
        time.sleep(step)
    raise AssertionError(f"gave up waiting for {what}")


class Segment:
    def __init__(self, node, server, tmp: str) -> None:
        self.node, self.server, self.tmp = node, server, tmp
        self.leases = os.path.join(tmp, "dnsmasq.leases")
        self.procs: list[subprocess.Popen] = []
        node.run("ip", "link", "add", "cni0", "type", "bridge")
        node.run("ip", "addr", "add", f"{SUBNET_GW}/24", "dev", "cni0")
        node.run("ip", "link", "set", "cni0", "up")
        node.wire(server, "dsrv", "d0", (), (f"{SERVER}/24",))
        node.run("ip", "link", "set", "dsrv", "master", "cni0")

    def start_dnsmasq(self, *, silent: bool = False, extra: tuple[str, ...] = ()) -> None:
        """dnsmasq on the server side; ``silent``: it serves no DHCP at all (no range)."""
        argv = ["ip", "netns", "exec", self.server.name, "dnsmasq", "--keep-in-foreground",
                "--conf-file=/dev/null", "--port=0", "--no-resolv", "--no-hosts",
                "--interface=d0", "--bind-interfaces", f"--dhcp-leasefile={self.leases}",
                f"--pid-file={os.path.join(self.tmp, 'dnsmasq.pid')}",
                "--log-dhcp", f"--log-facility={os.path.join(self.tmp, 'dnsmasq.log')}"]
        if not silent:
            argv += [f"--dhcp-range={RANGE[0]},{RANGE[1]},255.255.255.0,2m",
                     f"--dhcp-option=3,{SUBNET_GW}", "--dhcp-authoritative", *extra]
        self.procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))
        wait_for(lambda: os.path.exists(os.path.join(self.tmp, "dnsmasq.pid")), "dnsmasq")

    def start_daemon(self, exe: str, *, timeout: str = "10s") -> str:
        sock = os.path.join(self.tmp, f"dhcp-{len(self.procs)}.sock")
        log = open(os.path.join(self.tmp, f"daemon-{len(self.procs)}.log"), "w")
        p = subprocess.Popen(["ip", "netns", "exec", self.node.name, exe, "daemon",
                              "-socketpath", sock, "-timeout", timeout],
                             stdout=log, stderr=log)
        log.close()
        self.procs.append(p)
        wait_for(lambda: os.path.exists(sock) or p.poll() is not None, "the dhcp daemon's socket")
        assert p.poll() is None, open(log.name).read()
        return sock

    def daemon_log(self, n: int) -> str:
        with open(os.path.join(self.tmp, f"daemon-{n}.log")) as fh:
            return fh.read()

    def leased(self) -> set[str]:
        """Addresses in dnsmasq's lease file (field 3 of each line)."""
        try:
            with open(self.leases) as fh:
                return {l.split()[2] for l in fh if len(l.split()) > 2}
        except FileNotFoundError:
            return set()

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
