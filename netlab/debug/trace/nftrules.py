"""nftables and the probe: which rules it met, which rules drop, what our Services did.

Owns ``NfTrace`` (a short-lived table of our own per namespace that turns on
nftables tracing for packets carrying the probe's token, ``nft monitor
trace`` recording every rule they meet, and the table deleted by name
afterwards), the parsed verdicts of that trace, the netdev-family rules and
drop-policy base chains that silently drop (the nft trace cannot see the
netdev hooks), and ``k8s_notes``: what netlab's Services and NetworkPolicy
tables did to the probe, read from the rules' comments.
"""
from __future__ import annotations

import json
import os
import re
import subprocess

from ...base import namespaces as nsutil
from .netstate import run_ns
from .probe import Probe


class NfTrace:
    """nftables rule tracing of the probe in every namespace.

    A table of our own (``ip cnilab-trace-<token>``, hooks at priority -310,
    before conntrack and NAT) sets ``meta nftrace`` on packets whose payload
    starts with the probe's token; ``nft monitor trace`` then prints every
    rule of every table they traverse, with its verdict. The tables are
    deleted by name afterwards, always."""

    def __init__(self, nss: list[str], probe: Probe) -> None:
        self.nss = nss
        self.probe = probe
        self.table = "cnilab-trace-" + probe.token.decode()[-8:]
        self.made: list[str] = []
        self.monitors: dict[str, subprocess.Popen] = {}
        self.lines: dict[str, list[str]] = {}

    def rule(self) -> str:
        off = {"icmp": 64, "udp": 64, "tcp": 160}[self.probe.proto]
        return f"@th,{off},{len(self.probe.token) * 8} 0x{self.probe.token.hex()} meta nftrace set 1"

    def ruleset(self) -> str:
        r = self.rule()
        return (f"table inet {self.table} {{\n"
                f"  chain pre {{ type filter hook prerouting priority -310; {r}; }}\n"
                f"  chain out {{ type filter hook output priority -310; {r}; }}\n}}\n")

    def start(self) -> None:
        from plugins.core import netns as cns
        text = self.ruleset()
        for ns in self.nss:
            fd = os.open(nsutil.path(ns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                self.made.append(ns)
                p = subprocess.run(["nft", "-f", "-"], input=text, capture_output=True, text=True, timeout=30,
                                   preexec_fn=lambda: cns.setns(fd))
                if p.returncode != 0:
                    self.made.remove(ns)
                    continue
                self.monitors[ns] = subprocess.Popen(["nft", "monitor", "trace"], stdout=subprocess.PIPE,
                                                     stderr=subprocess.DEVNULL, text=True,
                                                     preexec_fn=lambda: cns.setns(fd))
            finally:
                os.close(fd)

    def stop(self) -> None:
        for ns, m in self.monitors.items():
            m.terminate()
            try:
                out, _ = m.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                m.kill()
                out, _ = m.communicate()
            self.lines[ns] = out.splitlines()
        for ns in self.made:
            run_ns(ns, ["nft", "delete", "table", "inet", self.table], timeout=30)
        self.made = []

    def verdicts(self) -> dict[str, list[dict]]:
        """ns -> the rules (of other tables) the probe and its answer hit, in order."""
        out: dict[str, list[dict]] = {}
        for ns, lines in self.lines.items():
            for ln in lines:
                m = re.match(r"trace id (\S+) (\S+) (\S+) (\S+) (.*)$", ln)
                if not m or m.group(3) == self.table:
                    continue
                tid, fam, table, chain, rest = m.groups()
                if rest.startswith("packet:"):
                    continue
                v = re.search(r"\(verdict ([^)]+)\)$", rest)
                if rest.startswith("rule "):
                    text = re.sub(r"\s*\(verdict [^)]+\)$", "", rest[5:])
                    text = re.sub(r' comment "[^"]*"', "", text)
                    out.setdefault(ns, []).append({"id": tid, "table": f"{fam} {table}", "chain": chain,
                                                   "rule": text, "verdict": v.group(1) if v else ""})
                elif rest.startswith("policy ") or rest.startswith("verdict "):
                    out.setdefault(ns, []).append({"id": tid, "table": f"{fam} {table}", "chain": chain,
                                                   "rule": rest.strip(), "verdict": rest.split()[-1]})
        return out


def netdev_drop_rules(ns: str) -> list[str]:
    """Rules of netdev-family tables (ingress/egress hooks) that drop, with their counters;
    netlab's own impairment tables are named as such."""
    return parse_netdev_drops(run_ns(ns, ["nft", "list", "ruleset", "netdev"]).stdout)


def parse_netdev_drops(text: str) -> list[str]:
    """`nft list ruleset netdev` -> 'netdev TABLE CHAIN: RULE' for each rule that drops."""
    out, table, chain = [], "", ""
    for ln in text.splitlines():
        t = ln.strip()
        m = re.match(r"table netdev (\S+) \{", t)
        if m:
            table = m.group(1)
            continue
        m = re.match(r"chain (\S+) \{", t)
        if m:
            chain = m.group(1)
            continue
        if re.search(r"\bdrop\b", t) and not t.startswith("type "):
            rule = re.sub(r' comment "[^"]*"', "", t)
            who = " (a netlab impairment: netlab impair all show)" if table.startswith("cnilab-impair-") else ""
            out.append(f"netdev {table} {chain}: {rule}{who}")
    return out


def chain_policies(ns: str) -> list[dict]:
    """Base chains with a drop policy in *any* table of the namespace (a common silent drop)."""
    p = run_ns(ns, ["nft", "-j", "list", "chains"])
    out = []
    try:
        for it in json.loads(p.stdout or "{}").get("nftables", []):
            c = it.get("chain")
            if c and c.get("policy") == "drop":
                out.append({"table": f"{c['family']} {c['table']}", "chain": c["name"], "hook": c.get("hook")})
    except ValueError:
        pass
    return out



def rule_lines(verdicts: dict[str, list[dict]]) -> dict[str, list[str]]:
    """``NfTrace.verdicts()`` as text: ns -> "TABLE CHAIN: RULE  -> VERDICT"."""
    def line(r: dict) -> str:
        shown = r["verdict"] and not r["rule"].endswith(r["verdict"])
        return f"{r['table']} {r['chain']}: {r['rule']}" + (f"  -> {r['verdict']}" if shown else "")
    return {ns: [line(r) for r in rs] for ns, rs in verdicts.items()}


_K8S_RULE = re.compile(r'trace id \S+ (\S+) (\S+) (\S+) rule (.*?)(?: comment "([^"]*)")? \(verdict ([^)]+)\)$')


def k8s_notes(lines: dict[str, list[str]], label) -> list[str]:
    """What our Services and NetworkPolicy tables (netlab/features/k8s.py) did to the probe,
    from the nft trace: the Service DNAT (VIP -> endpoint), the masquerade, a
    reject for a Service without endpoints, and the policy rule that allowed or
    dropped it (rules carry their meaning in their comments). A drop or reject
    is a cause; the rest are notes (``note: `` prefix)."""
    from ...features.policy import TABLE as POLICY_TABLE
    from ...features.services import TABLE as SERVICES_TABLE
    out: list[str] = []
    for ns, lns in lines.items():
        for ln in lns:
            m = _K8S_RULE.match(ln)
            if not m:
                continue
            fam, table, chain, rule, comment, verdict = m.groups()
            where = label(ns)
            if table == SERVICES_TABLE:
                if " dnat to " in rule:
                    note = f"Service DNAT in {where}: {comment or rule} (chain {chain})"
                elif chain == "masquerading" and " masquerade" in rule:
                    note = f"masquerade in {where}: {comment or rule} (the source becomes {where}'s address)"
                elif "mark-for-masquerade" in rule and comment:
                    note = f"{comment} (marked for masquerade in {where})"
                elif chain in ("reject-chain", "cluster-ips-check", "no-local-endpoints") and verdict == "drop":
                    note = f"Service rule in {where}: {comment or rule} -> {'rejected' if 'reject' in rule else 'dropped'}"
                    if note not in out:
                        out.append(note)
                    continue
                else:
                    continue
            elif table == POLICY_TABLE and comment:
                if verdict == "drop":
                    note = f"NetworkPolicy in {where}: dropped by {chain}: {comment!r}"
                    if note not in out:
                        out.append(note)
                    continue
                note = f"NetworkPolicy in {where}: allowed by {chain}: {comment!r}"
            else:
                continue
            if "note: " + note not in out:
                out.append("note: " + note)
    return out
