"""Security properties (docs/security.md):

* no name from input reaches a path or a command unvalidated: network names,
  container IDs, ifnames and IPAM types with ``..`` and ``/`` are refused
  before anything is touched (strace shows no write at all), and an IPAM
  "type" can never run an executable outside CNI_PATH;
* nothing is written outside the data dir: every file-writing syscall of a
  full chain (bridge + host-local + portmap + bandwidth: ADD, DEL, GC) and of
  vxlan is traced and checked against an allow-list (data dir, the node's
  /proc/sys/net, the lock dir $CNILAB_RUN_DIR);
* no shell and no unexpected program is ever executed;
* state files 0600 in 0700 dirs, even when the runtime's umask is 0;
* nftables changes stay in our own tables (a foreign table is untouched);
* the root-namespace guard (tests/rootns_guard.py, autouse in conftest) does
  detect changes: shown on a throwaway stand-in namespace and on synthetic
  snapshots.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess

import pytest

from tests import node_state, rootns_guard

# the interpreter's byte-code cache: the directory, a .pyc, and the temporary
# file a .pyc is written to first (NAME.pyc.<id>) when a source changed
BYTECODE_CACHE = re.compile(r"/__pycache__(/[^/]+\.pyc(\.\d+)?)?$")

HAVE_STRACE = shutil.which("strace") is not None
NET = "secnet"
BR = "cnilab-sec0"
SUBNET = "10.97.0.0/24"
ALLOWED_EXEC = {"nsenter", "conntrack"}     # nsenter: ours, to enter the node
TRACED = ("execve,openat,open,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,"
          "unlinkat,rmdir,chmod,fchmodat,utimensat,truncate,link,linkat,symlink,symlinkat")
_LINE = re.compile(r"^(\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+)")
_WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")


# ---- tracing a plugin exec -------------------------------------------------------------

def RUN_DIR() -> str:
    """The plugins' lock dir: the suite's own (tests/conftest.py), not /run/cnilab."""
    return os.path.realpath(os.environ["CNILAB_RUN_DIR"])


def traced_exec(tmp_path, bin_dir: str, node_path: str, plugin: str, env: dict,
                conf: dict | bytes) -> tuple[int, str, list[tuple[str, str]]]:
    """Run an installed plugin in the node netns under strace; returns (rc, stdout,
    [(syscall, path)] of every successful change to the file system, and every exec)."""
    log = tmp_path / f"strace-{len(os.listdir(tmp_path))}.log"
    stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    full_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNILAB_AGENT": "off",
                "CNILAB_RUN_DIR": RUN_DIR(), **env}
    p = subprocess.run(["strace", "-f", "-qq", "-s", "4096", "-e", f"trace={TRACED}",
                        "-o", str(log), "nsenter", f"--net={node_path}",
                        os.path.join(bin_dir, plugin)],
                       input=stdin, env=full_env, capture_output=True, timeout=120, cwd="/")
    events = []
    for line in log.read_text().splitlines():
        m = _LINE.match(line)
        if not m or int(m.group(4)) < 0:
            continue
        call, args = m.group(2), m.group(3)
        paths = re.findall(r'"((?:[^"\\]|\\.)*)"', args)
        if call == "execve":
            events.append(("execve", paths[0]))
        elif call in ("openat", "open"):
            if any(f in args for f in _WRITE_FLAGS):
                events.append((call, paths[0]))
        elif call == "utimensat" and not paths:
            continue                           # futimens on an open fd: already listed
        else:
            events += [(call, x) for x in paths[:2]]
    return p.returncode, p.stdout.decode(errors="replace"), events


def _outside(events, allowed_prefixes) -> list:
    bad = []
    for call, path in events:
        if call == "execve":
            if os.path.basename(path) not in ALLOWED_EXEC and not path.startswith(
                    allowed_prefixes[0]):
                bad.append((call, path))
            continue
        if not path.startswith("/"):
            bad.append((call, path))          # relative to what? never expected
            continue
        real = os.path.normpath(path)
        if real != path.rstrip("/") and ".." in path:
            bad.append((call, path))
            continue
        if BYTECODE_CACHE.search(real):
            continue                           # the interpreter's byte-code cache
        if call in ("mkdir", "mkdirat", "chmod", "fchmodat") and any(
                a.startswith(real + "/") for a in allowed_prefixes[1:2]):
            continue                           # creating the data dir itself (and parents)
        if not any(real == a.rstrip("/") or real.startswith(a) for a in allowed_prefixes):
            bad.append((call, path))
    return bad


@pytest.fixture
def lab(tmp_path, make_netns, installed_plugins):
    node, pod = make_netns("snode"), make_netns("spod")
    return {"node": node, "pod": pod, "bin": installed_plugins, "tmp": tmp_path}


def env_for(lab, command: str, cid: str = "sec1", ifname: str = "eth0") -> dict:
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": lab["pod"].path,
            "CNI_IFNAME": ifname, "CNI_PATH": lab["bin"]}


def chain(data_dir: str, version: str = "1.1.0") -> list[dict]:
    common = {"cniVersion": version, "name": NET}
    return [dict(common, type="bridge", bridge=BR, isGateway=True, ipMasq=True,
                 ipam={"type": "host-local", "dataDir": data_dir,
                       "ranges": [[{"subnet": SUBNET}]]}),
            dict(common, type="portmap", capabilities={"portMappings": True},
                 runtimeConfig={"portMappings": [
                     {"hostPort": 8443, "containerPort": 443, "protocol": "tcp"},
                     {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}]}),
            dict(common, type="bandwidth", capabilities={"bandwidth": True},
                 runtimeConfig={"bandwidth": {"ingressRate": 8_000_000,
                                              "ingressBurst": 800_000,
                                              "egressRate": 8_000_000,
                                              "egressBurst": 800_000}})]


# ---- names never reach paths or commands unvalidated -----------------------------------

EVIL_MARKER = "evil-ran"


def _evil_plugin(tmp_path) -> str:
    """An executable outside CNI_PATH that would leave a marker if anything ran it."""
    d = tmp_path / "outside"
    d.mkdir()
    exe = d / "evil"
    exe.write_text(f"#!/bin/sh\ntouch {tmp_path / EVIL_MARKER}\n")
    exe.chmod(0o755)
    return str(exe)


@pytest.mark.root
@pytest.mark.skipif(not HAVE_STRACE, reason="strace is not installed")
def test_path_tricks_are_refused_before_anything_is_touched(lab):
    tmp = lab["tmp"]
    data_dir = str(tmp / "data")
    evil = _evil_plugin(tmp)
    base = chain(data_dir)[0]
    rel_evil = os.path.relpath(evil, lab["bin"])            # ../../outside/evil
    tricks = [
        ("network name ../", dict(base, name="../outside"), {}),
        ("network name ..", dict(base, name=".."), {}),
        ("network name /abs", dict(base, name=str(tmp / "outside")), {}),
        ("network name a/../../b", dict(base, name="a/../../b"), {}),
        ("container id ../", base, {"CNI_CONTAINERID": "../../outside"}),
        ("container id ..", base, {"CNI_CONTAINERID": ".."}),
        ("container id /abs", base, {"CNI_CONTAINERID": "/etc/passwd"}),
        ("ifname ../", base, {"CNI_IFNAME": "../x"}),
        ("ifname ..", base, {"CNI_IFNAME": ".."}),
        ("ifname /", base, {"CNI_IFNAME": "a/b"}),
        ("ipam type relative path", dict(base, ipam=dict(base["ipam"], type=rel_evil)),
         {"CNILAB_EXEC_DELEGATES": "1"}),
        ("ipam type absolute path", dict(base, ipam=dict(base["ipam"], type=evil)),
         {"CNILAB_EXEC_DELEGATES": "1"}),
        ("ipam type ..", dict(base, ipam=dict(base["ipam"], type="..")),
         {"CNILAB_EXEC_DELEGATES": "1"}),
        ("dataDir relative", dict(base, ipam=dict(base["ipam"], dataDir="data")), {}),
    ]
    for plugin in ("bridge", "host-local", "vxlan"):
        for label, conf, env_over in tricks:
            conf = dict(conf, type=plugin) if plugin != "host-local" else conf
            if plugin == "vxlan":
                conf = dict(conf, vni=77, underlayInterface="lo")
                conf.pop("bridge", None)
            for command in ("ADD", "DEL"):
                env = dict(env_for(lab, command), **env_over)
                rc, out, events = traced_exec(tmp, lab["bin"], lab["node"].path, plugin,
                                              env, conf)
                assert rc != 0, (plugin, label, command, out)
                err = json.loads(out)
                # vxlan's DEL reports the steps that failed together as code 5
                vx_del = plugin == "vxlan" and command == "DEL" and "dataDir" in label
                assert err["code"] in ((4, 7, 50, 5) if vx_del else (4, 7, 50)), (
                    plugin, label, err)
                writes = [e for e in events if e[0] != "execve"
                          and not BYTECODE_CACHE.search(e[1])]
                if label == "dataDir relative" and plugin != "host-local":
                    # found by the IPAM step, after the main plugin made (and then rolled
                    # back) its links: only their sysctls were written, never a path
                    # derived from the relative dataDir
                    writes = [e for e in writes if not e[1].startswith("/proc/sys/net/")]
                assert writes == [], (plugin, label, command, writes)
                execs = [p for c, p in events if c == "execve"]
                assert execs[1:] == [os.path.join(lab["bin"], plugin)], (label, execs)
    assert not (tmp / EVIL_MARKER).exists()
    assert not os.path.exists(data_dir)


def test_runtime_refuses_plugin_types_with_paths(tmp_path):
    from cniruntime.runtime import conflist_from_dict
    from plugins.core.errors import CNIError
    from plugins.core.invoke import find_plugin
    for t in ("../evil", "/bin/sh", "..", "."):
        with pytest.raises(CNIError) as e:
            conflist_from_dict({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": t}]})
        assert e.value.code == 7
        with pytest.raises(CNIError):
            find_plugin(t, [str(tmp_path)])


# ---- nothing written outside the data dir; no shell; modes ------------------------------

@pytest.mark.root
@pytest.mark.skipif(not HAVE_STRACE, reason="strace is not installed")
def test_chain_writes_only_its_data_dir_runs_no_shell_and_keeps_modes(lab):
    tmp = lab["tmp"]
    data_dir = str(tmp / "state" / "ipam")        # created by the plugin itself
    plugins = chain(data_dir)
    allowed = (lab["bin"], data_dir + "/", "/proc/sys/net/", RUN_DIR() + "/")
    old_umask = os.umask(0)                       # a careless runtime: modes must not care
    try:
        prev = None
        all_events = []
        for conf in plugins:
            conf = dict(conf, prevResult=prev) if prev else conf
            rc, out, events = traced_exec(tmp, lab["bin"], lab["node"].path, conf["type"],
                                          env_for(lab, "ADD"), conf)
            assert rc == 0, out
            prev = json.loads(out)
            all_events += events
        # state files 0600 in 0700 dirs; no directory above them writable by others
        tree = node_state.files(data_dir)
        assert tree, "nothing stored"
        for rel, desc in tree.items():
            want = "d0700" if desc.startswith("d") else "f0600"
            assert desc.startswith(want), (rel, desc)
        for d in (tmp / "state", tmp / "state" / "ipam"):
            mode = stat.S_IMODE(os.stat(d).st_mode)
            assert not mode & 0o022, (str(d), oct(mode))
        for conf in reversed(plugins):
            conf = dict(conf, prevResult=prev)
            rc, out, events = traced_exec(tmp, lab["bin"], lab["node"].path, conf["type"],
                                          env_for(lab, "DEL"), conf)
            assert rc == 0, out
            all_events += events
        for conf in plugins:
            conf = dict(conf, **{"cni.dev/valid-attachments": []})
            rc, out, events = traced_exec(tmp, lab["bin"], lab["node"].path, conf["type"],
                                          {"CNI_COMMAND": "GC", "CNI_PATH": lab["bin"]}, conf)
            assert rc == 0, out
            all_events += events
    finally:
        os.umask(old_umask)
    assert _outside(all_events, allowed) == []
    touched = [p for _, p in all_events]
    assert any(p.startswith(data_dir + "/") for p in touched)         # the trace works
    assert any(p.startswith("/proc/sys/net/") for p in touched)
    execs = [os.path.basename(p) for c, p in all_events if c == "execve"]
    assert not {"sh", "bash", "dash", "env"} & set(execs), execs
    assert "conntrack" in execs or shutil.which("conntrack") is None   # UDP flush ran
    assert node_state.reservations(data_dir, NET) == {}


@pytest.mark.root
@pytest.mark.skipif(not HAVE_STRACE, reason="strace is not installed")
def test_vxlan_writes_only_its_data_dir_and_lock(lab):
    tmp = lab["tmp"]
    node = lab["node"]
    node.run("ip", "link", "add", "ul0", "type", "veth", "peer", "name", "ul0p")
    node.run("ip", "addr", "add", "10.98.0.1/24", "dev", "ul0")
    node.run("ip", "link", "set", "ul0", "up")
    data_dir = str(tmp / "vx")
    conf = {"cniVersion": "1.1.0", "name": "secvx", "type": "vxlan", "vni": 4077,
            "underlayInterface": "ul0", "peers": ["10.98.0.2"],
            "ipam": {"type": "host-local", "dataDir": data_dir,
                     "ranges": [[{"subnet": "10.99.0.0/24"}]]}}
    run_dir = os.path.join(RUN_DIR(), f"sec-{os.getpid()}-{len(os.listdir(RUN_DIR()))}")
    events = []
    for command in ("ADD", "DEL"):
        env = dict(env_for(lab, command), CNILAB_RUN_DIR=run_dir)   # made by the plugin
        rc, out, ev = traced_exec(tmp, lab["bin"], node.path, "vxlan", env, conf)
        assert rc == 0, out
        events += ev
    assert _outside(events, (lab["bin"], data_dir + "/", "/proc/sys/net/",
                             run_dir + "/")) == []
    locks = [path for call, path in events
             if path.startswith(run_dir + "/") and call in ("openat", "open")]
    assert locks
    for path in locks:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700


# ---- nftables: our own tables only ---------------------------------------------------

FOREIGN = """
table inet admin {
    chain input { type filter hook input priority 0; policy accept; tcp dport 22 accept; }
    chain admin_fwd { type filter hook forward priority 0; policy accept; ct state invalid drop; }
}
table ip nat {
    chain POSTROUTING { type nat hook postrouting priority 100; policy accept;
                        oifname "up0" masquerade; }
}
"""


def _tables(ns) -> set[str]:
    return {l.strip() for l in ns.run("nft", "list", "tables").stdout.splitlines() if l.strip()}


def _foreign(ns) -> list[str]:
    return [r for r in node_state.ruleset(ns.name)
            if '"admin"' in r or '"table": "nat"' in r or '"name": "nat"' in r]


@pytest.mark.root
def test_nftables_changes_stay_in_our_tables(lab, tmp_path):
    from cniruntime.runtime import Runtime
    node = lab["node"]
    subprocess.run(["ip", "netns", "exec", node.name, "nft", "-f", "-"], input=FOREIGN,
                   text=True, check=True)
    tables0, foreign0 = _tables(node), _foreign(node)
    assert len(foreign0) >= 5
    data_dir = str(tmp_path / "ipam")
    net = {"cniVersion": "1.1.0", "name": NET, "plugins": [
        {k: v for k, v in p.items() if k not in ("name", "cniVersion", "runtimeConfig")}
        for p in chain(data_dir)]}
    rt = Runtime([lab["bin"]], cache_dir=str(tmp_path / "cache"), host_netns=node.path,
                 env=dict(os.environ, CNILAB_AGENT="off"))
    caps = {"portMappings": [{"hostPort": 8443, "containerPort": 443}],
            "bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 800_000}}
    rt.add(net, lab["pod"].path, "sec1", "eth0", capability_args=caps)
    added = _tables(node) - tables0
    assert added and all(t.split()[-1].startswith("cnilab") for t in added), added
    assert _foreign(node) == foreign0
    rt.check(net, lab["pod"].path, "sec1", "eth0")
    rt.delete(net, lab["pod"].path, "sec1", "eth0")
    rt.gc(net, [])
    assert _foreign(node) == foreign0
    assert _tables(node) - tables0 <= added            # nothing new after DEL and GC
    assert tables0 <= _tables(node)


# ---- the root-namespace guard ----------------------------------------------------------

def test_guard_diff_on_synthetic_snapshots():
    before = {"links": [("lo", 65536, "", "00:00:00:00:00:00")], "addrs": [("lo", "127.0.0.1", 8)],
              "routes": [], "rules": ['{"priority": 0}'], "nft_tables": [""]}
    assert rootns_guard.diff(before, dict(before)) == []
    after = dict(before, links=before["links"] + [("veth0", 1500, "", "aa:bb:cc:dd:ee:ff")],
                 addrs=[], routes=["('-4', '10.0.0.0/8', '', 'veth0', 'main', '')"],
                 nft_tables=["", "table ip evil"])
    changes = rootns_guard.diff(before, after)
    assert any(c.startswith("links: added") and "veth0" in c for c in changes)
    assert any(c.startswith("addrs: removed") and "127.0.0.1" in c for c in changes)
    assert any(c.startswith("routes: added") for c in changes)
    assert any(c.startswith("nft_tables: added") and "evil" in c for c in changes)
    mtu = dict(before, links=[("lo", 1500, "", "00:00:00:00:00:00")])
    assert len(rootns_guard.diff(before, mtu)) == 2      # a changed MTU: removed + added


@pytest.mark.root
def test_guard_detects_changes_in_a_standin_namespace(make_netns):
    """The guard's snapshot taken of a throwaway namespace standing in for the root one:
    each kind of change the suite must never make to the root namespace is reported,
    and undoing it makes the report empty again."""
    ns = make_netns("guard")
    before = rootns_guard.snapshot(ns.name)
    assert any(l[0] == "lo" for l in before["links"])
    changes = [
        (("ip", "link", "add", "gx0", "type", "veth", "peer", "name", "gx1"), "links: added"),
        (("ip", "addr", "add", "10.123.0.1/24", "dev", "lo"), "addrs: added"),
        (("ip", "route", "add", "10.124.0.0/16", "dev", "lo", "table", "77"), "routes: added"),
        (("ip", "rule", "add", "from", "10.125.0.0/16", "lookup", "77"), "rules: added"),
        (("nft", "add", "table", "inet", "guardtest"), "nft_tables: added"),
        (("ip", "link", "set", "lo", "mtu", "1500"), "links: removed"),
    ]
    for argv, kind in changes:
        ns.run(*argv)
        found = rootns_guard.diff(before, rootns_guard.snapshot(ns.name))
        assert any(c.startswith(kind) for c in found), (argv, found)
    for argv in (("ip", "link", "set", "lo", "mtu", "65536"),
                 ("nft", "delete", "table", "inet", "guardtest"),
                 ("ip", "rule", "del", "from", "10.125.0.0/16", "lookup", "77"),
                 ("ip", "route", "del", "10.124.0.0/16", "dev", "lo", "table", "77"),
                 ("ip", "addr", "del", "10.123.0.1/24", "dev", "lo"),
                 ("ip", "link", "del", "gx0")):
        ns.run(*argv)
    assert rootns_guard.diff(before, rootns_guard.snapshot(ns.name)) == []


def test_guard_is_wired_for_the_whole_session(request):
    """The autouse session fixture in conftest.py takes the root snapshot."""
    assert "root_namespace_untouched" in request.fixturenames
    snap = rootns_guard.snapshot()
    assert set(snap) == {"links", "addrs", "routes", "rules", "nft_tables"}
    if os.geteuid() == 0 and shutil.which("ip"):
        assert any(l[0] == "lo" for l in snap["links"])      # it really reads the root ns


def test_installer_and_runtime_cache_dirs_are_never_world_writable(tmp_path):
    """Under umask 0 os.makedirs makes 0777 directories: a world-writable plugin dir
    would let any local user replace what root executes."""
    from plugins.core.fsutil import write_atomic
    from cninode.install import install
    old = os.umask(0)
    try:
        install(str(tmp_path / "opt" / "cni" / "bin"), verify=False)
        write_atomic(tmp_path / "var" / "cache" / "results" / "net-c-eth0", b"{}",
                     mode=0o600, dir_mode=0o700)
    finally:
        os.umask(old)
    for d in ("opt", "opt/cni", "opt/cni/bin", "var", "var/cache", "var/cache/results"):
        mode = stat.S_IMODE(os.stat(tmp_path / d).st_mode)
        assert not mode & 0o022, (d, oct(mode))
    for f in os.listdir(tmp_path / "opt" / "cni" / "bin"):
        mode = stat.S_IMODE(os.stat(tmp_path / "opt" / "cni" / "bin" / f).st_mode)
        assert mode == 0o755, (f, oct(mode))
    assert stat.S_IMODE(os.stat(tmp_path / "var/cache/results/net-c-eth0").st_mode) == 0o600
