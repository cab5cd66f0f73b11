"""host-local on disk: the byte format, the attachment index, every command
through the dispatcher, interchange with the reference binary both ways, and
one run through an installed executable. Needs no namespaces (host-local never
enters the netns) and always uses a tmp dataDir."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from ipam.store import DiskStore, Owner
from plugins.core.skel import dispatch

REF = "/usr/lib/cni/host-local"
have_ref = pytest.mark.skipif(not os.access(REF, os.X_OK), reason="reference host-local missing")
FAKE_NETNS = "/run/netns/cnilab-ipam-test-none"   # never entered by host-local


def conf(data_dir, version="1.0.0", name="ipamnet", **ipam):
    ipam.setdefault("ranges", [[{"subnet": "10.77.0.0/29"}], [{"subnet": "fd77::/125"}]])
    return {"cniVersion": version, "name": name, "type": "bridge",
            "ipam": dict({"type": "host-local", "dataDir": str(data_dir)}, **ipam)}


def env(cmd, cid="c1", ifname="eth0", args=""):
    e = {"CNI_COMMAND": cmd, "CNI_PATH": "/usr/lib/cni", "CNI_ARGS": args}
    if cmd != "GC":
        e.update(CNI_CONTAINERID=cid, CNI_IFNAME=ifname, CNI_NETNS=FAKE_NETNS)
    return e


def ours(cmd, cfg, **kw):
    out, rc = dispatch("host-local", env(cmd, **kw), json.dumps(cfg).encode())
    return (json.loads(out) if out else None), rc


def ref(cmd, cfg, **kw):
    cfg = dict(cfg, cniVersion=min(cfg["cniVersion"], "1.0.0"))    # Debian's 1.1.1 stops at 1.0.0
    p = subprocess.run([REF], input=json.dumps(cfg).encode(), env=env(cmd, **kw),
                       capture_output=True, timeout=30)
    return (json.loads(p.stdout) if p.stdout.strip() else None), p.returncode


def addrs(result):
    return [i["address"] for i in result["ips"]]


def netdir(tmp_path, name="ipamnet"):
    return tmp_path / name


def test_add_writes_the_reference_format(tmp_path):
    res, rc = ours("ADD", conf(tmp_path, routes=[{"dst": "0.0.0.0/0"}]))
    assert rc == 0, res
    assert res == {"cniVersion": "1.0.0", "routes": [{"dst": "0.0.0.0/0"}],
                   "ips": [{"address": "10.77.0.2/29", "gateway": "10.77.0.1"},
                           {"address": "fd77::2/125", "gateway": "fd77::1"}]}
    d = netdir(tmp_path)
    assert (d / "10.77.0.2").read_bytes() == b"c1\r\neth0"
    assert (d / "fd77::2").read_bytes() == b"c1\r\neth0"
    assert (d / "last_reserved_ip.0").read_bytes() == b"10.77.0.2"
    assert (d / "last_reserved_ip.1").read_bytes() == b"fd77::2"
    assert (d / "lock").exists()
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for f in ("10.77.0.2", "fd77::2", "last_reserved_ip.0", "lock"):
        assert stat.S_IMODE(os.stat(d / f).st_mode) == 0o600, f


def test_a_reservation_appears_complete_or_not_at_all(tmp_path):
    """Written to a staging file and linked into place: a crash can never leave an
    address file without its owner. A staging file a crash left behind (here still
    a second link of a live reservation) is replaced, never written through."""
    from ipam.store import STAGING_NAME
    res, rc = ours("ADD", conf(tmp_path))
    assert rc == 0, res
    d = netdir(tmp_path)
    assert not (d / STAGING_NAME).exists()
    os.link(d / "10.77.0.2", d / STAGING_NAME)           # the state a kill after link() leaves
    res, rc = ours("ADD", conf(tmp_path), cid="c2")
    assert rc == 0, res
    assert (d / "10.77.0.2").read_bytes() == b"c1\r\neth0"
    assert (d / "10.77.0.3").read_bytes() == b"c2\r\neth0"
    assert not (d / STAGING_NAME).exists()


def test_replay_del_check_and_old_versions(tmp_path):
    cfg = conf(tmp_path)
    first, _ = ours("ADD", cfg)
    again, rc = ours("ADD", cfg)
    assert rc == 0 and again == first                       # idempotent replay
    other, _ = ours("ADD", cfg, cid="c2")
    assert addrs(other) == ["10.77.0.3/29", "fd77::3/125"]
    assert ours("CHECK", dict(cfg, prevResult=first))[1] == 0
    bad = dict(cfg, prevResult=other)                        # c2's addresses are not c1's
    res, rc = ours("CHECK", bad)
    assert rc == 1 and res["code"] == 102
    assert ours("DEL", cfg)[1] == 0
    assert ours("DEL", cfg)[1] == 0                          # idempotent
    res, rc = ours("CHECK", cfg)
    assert rc == 1 and res["code"] == 3
    assert sorted(os.listdir(netdir(tmp_path))) == [".cnilab", "10.77.0.3", "fd77::3",
                                                     "last_reserved_ip.0", "last_reserved_ip.1", "lock"]
    # DEL on a network never used creates nothing
    assert ours("DEL", conf(tmp_path, name="never"))[1] == 0
    assert not (tmp_path / "never").exists()
    # 0.2.0 output shape
    res, rc = ours("ADD", conf(tmp_path, version="0.2.0"), cid="c3")
    assert rc == 0 and res["ip4"]["ip"] == "10.77.0.4/29" and res["ip6"]["ip"] == "fd77::4/125"


def test_errors_change_nothing(tmp_path):
    cfg = conf(tmp_path, ranges=[[{"subnet": "10.77.0.0/29", "gateway": "10.78.0.1"}]])
    res, rc = ours("ADD", cfg)
    assert rc == 1 and res["code"] == 7 and "gateway" in res["msg"]
    assert not netdir(tmp_path).exists()
    cfg = conf(tmp_path)
    ours("ADD", cfg, cid="holder", args="IP=fd77::5")
    res, rc = ours("ADD", cfg, args="IP=10.77.0.6,fd77::5")   # v6 taken: v4 rolled back
    assert rc == 1 and res["code"] == 104
    assert not (netdir(tmp_path) / "10.77.0.6").exists()


def test_exhaustion_status_and_gc(tmp_path):
    cfg = conf(tmp_path, cniVersion="1.1.0", ranges=[[{"subnet": "10.77.0.0/29"}]])
    cfg["cniVersion"] = "1.1.0"
    assert ours("STATUS", cfg)[1] == 0                       # no dir yet: fine
    for i in range(5):                                       # .2 - .6
        assert ours("ADD", cfg, cid=f"p{i}")[1] == 0
    res, rc = ours("ADD", cfg, cid="p9")
    assert rc == 1 and res["code"] == 103
    res, rc = ours("STATUS", cfg)
    assert rc == 1 and res["code"] == 50 and "exhausted" in res["msg"]
    gc = dict(cfg, **{"cni.dev/valid-attachments": [{"containerID": "p1", "ifname": "eth0"},
                                                   {"containerID": "p3", "ifname": "eth0"}]})
    assert ours("GC", gc)[1] == 0
    left = sorted(n for n in os.listdir(netdir(tmp_path)) if n[0].isdigit())
    assert left == ["10.77.0.3", "10.77.0.5"]
    assert ours("STATUS", cfg)[1] == 0
    # the older key is accepted; a missing key is refused rather than wiping the pool
    old = dict(cfg, **{"cni.dev/attachments": [{"containerID": "p1", "ifname": "eth0"}]})
    assert ours("GC", old)[1] == 0
    assert ours("GC", cfg)[0]["code"] == 7
    assert sorted(n for n in os.listdir(netdir(tmp_path)) if n[0].isdigit()) == ["10.77.0.3"]
    # after GC the pool serves again, round robin continues
    res, rc = ours("ADD", cfg, cid="new")
    assert rc == 0 and addrs(res) == ["10.77.0.2/29"]


def test_status_data_dir_not_writable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = conf(blocker / "sub")
    cfg["cniVersion"] = "1.1.0"
    res, rc = ours("STATUS", cfg)
    assert rc == 1 and res["code"] == 50 and "not a directory" in res["msg"]


def test_index_follows_foreign_writers(tmp_path):
    """Files created/removed behind our back (the reference, an admin) are seen."""
    cfg = conf(tmp_path, ranges=[[{"subnet": "10.77.0.0/24"}]])
    ours("ADD", cfg, cid="a")
    d = netdir(tmp_path)
    # someone else reserves .50 for c1 and removes a's file
    (d / "10.77.0.50").write_bytes(b"c1\r\neth0")
    os.unlink(d / "10.77.0.2")
    res, rc = ours("ADD", cfg)                      # c1 already holds .50: replay, not a 2nd IP
    assert rc == 0 and addrs(res) == ["10.77.0.50/24"]
    assert ours("CHECK", cfg, cid="a")[0]["code"] == 3
    assert ours("DEL", cfg)[1] == 0 and not (d / "10.77.0.50").exists()
    # a corrupt index bucket is rebuilt, not trusted
    for f in (d / ".cnilab").iterdir():
        if f.name.startswith("idx-"):
            f.write_text("garbage")
    ours("ADD", cfg, cid="b")
    res, rc = ours("ADD", cfg, cid="b")
    assert rc == 0 and len([n for n in os.listdir(d) if n[0].isdigit()]) == 1
    # a deleted bucket is noticed too (the stamp lists the non-empty ones)
    for f in (d / ".cnilab").iterdir():
        if f.name.startswith("idx-"):
            f.unlink()
    res, rc = ours("ADD", cfg, cid="b")
    assert rc == 0 and addrs(res) == [f"10.77.0.{n}/24" for n in (3,)]
    assert len([n for n in os.listdir(d) if n[0].isdigit()]) == 1


def test_index_is_o1_after_first_use(tmp_path):
    st = DiskStore(str(tmp_path), "big")
    os.makedirs(st.dir)
    for i in range(2, 600):
        with open(os.path.join(st.dir, f"10.88.{i // 256}.{i % 256}"), "w") as f:
            f.write(f"x{i}\r\neth0")
    with st:
        assert st.find(Owner("x599", "eth0")) == [__import__("ipaddress").ip_address("10.88.2.87")]
    assert st.rebuilds == 1
    with st:
        assert st.find(Owner("x7", "eth0"))
        assert st.find(Owner("nobody", "eth0")) == []
    assert st.rebuilds == 1                         # the stamp held: no second scan


@have_ref
def test_interchange_reference_then_ours(tmp_path):
    cfg = conf(tmp_path)
    r1, rc = ref("ADD", cfg, cid="r1")
    assert rc == 0, r1
    r2, _ = ref("ADD", cfg, cid="r2")
    # ours sees the reference's reservations: no duplicates, round robin continues
    o1, rc = ours("ADD", cfg, cid="o1")
    assert rc == 0 and addrs(o1) == ["10.77.0.4/29", "fd77::4/125"]
    # replay of a reference-made attachment returns its addresses
    again, _ = ours("ADD", cfg, cid="r1")
    assert addrs(again) == addrs(r1)
    assert ours("CHECK", cfg, cid="r2")[1] == 0
    assert ours("DEL", cfg, cid="r1")[1] == 0
    assert not (netdir(tmp_path) / "10.77.0.2").exists()
    # legacy single-line files (very old writers) are released by container ID
    (netdir(tmp_path) / "10.77.0.6").write_bytes(b"legacy")
    assert ours("DEL", cfg, cid="legacy")[1] == 0
    assert not (netdir(tmp_path) / "10.77.0.6").exists()


@have_ref
def test_interchange_ours_then_reference(tmp_path):
    cfg = conf(tmp_path)
    o1, _ = ours("ADD", cfg, cid="o1")
    o2, _ = ours("ADD", cfg, cid="o2")
    # the reference refuses a duplicate for our attachment, allocates after ours, CHECKs ours
    dup, rc = ref("ADD", cfg, cid="o1")
    assert rc != 0 and "duplicate" in dup["msg"]
    r1, rc = ref("ADD", cfg, cid="r1")
    assert rc == 0 and addrs(r1) == ["10.77.0.4/29", "fd77::4/125"]
    assert ref("CHECK", cfg, cid="o2")[1] == 0
    assert ref("DEL", cfg, cid="o1")[1] == 0
    names = set(os.listdir(netdir(tmp_path)))
    assert "10.77.0.2" not in names and "fd77::2" not in names and "10.77.0.3" in names
    # and back to ours: the reference's DEL and ADD are seen
    o1b, _ = ours("ADD", cfg, cid="o1")
    assert addrs(o1b) == ["10.77.0.5/29", "fd77::5/125"]
    assert addrs(ours("ADD", cfg, cid="r1")[0]) == addrs(r1)


@pytest.mark.e2e
def test_installed_executable(tmp_path, installed_plugins):
    exe = os.path.join(installed_plugins, "host-local")
    cfg = json.dumps(conf(tmp_path)).encode()
    p = subprocess.run([str(exe)], input=cfg, env=env("ADD"), capture_output=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    assert addrs(json.loads(p.stdout)) == ["10.77.0.2/29", "fd77::2/125"]
    p = subprocess.run([str(exe)], input=cfg, env=env("DEL"), capture_output=True, timeout=30)
    assert p.returncode == 0 and p.stdout == b""
    p = subprocess.run([str(exe)], input=b"{", env=env("ADD"), capture_output=True, timeout=30)
    assert p.returncode == 1 and json.loads(p.stdout)["code"] == 6


def test_concurrent_adds_threads_and_processes(tmp_path):
    """Parallel ADDs (threads in one process, as a node agent would run bridge
    in-process, and separate processes) never share an address nor fail."""
    from concurrent.futures import ThreadPoolExecutor
    cfg = conf(tmp_path, ranges=[[{"subnet": "10.77.0.0/24"}]])
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda i: ours("ADD", cfg, cid=f"t{i}"), range(32)))
    assert all(rc == 0 for _, rc in results), results
    exe = tmp_path / "host-local"
    exe.write_text(f"#!{sys.executable}\nfrom cninode.launcher import main; main('host-local')\n")
    exe.chmod(0o755)
    stdin = json.dumps(cfg).encode()
    procs = [subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env=env("ADD", cid=f"p{i}")) for i in range(8)]
    outs = [(p.communicate(stdin, timeout=60)[0], p.wait()) for p in procs]
    assert all(rc == 0 for _, rc in outs), outs
    got = [addrs(r)[0] for r, _ in results] + [addrs(json.loads(o))[0] for o, _ in outs]
    assert len(set(got)) == 40
    files = [n for n in os.listdir(netdir(tmp_path)) if n[0].isdigit()]
    assert len(files) == 40


def test_lock_held_elsewhere_times_out_with_try_again(tmp_path, monkeypatch):
    import fcntl
    from ipam import store as store_mod
    cfg = conf(tmp_path)
    assert ours("ADD", cfg)[1] == 0
    monkeypatch.setattr(store_mod, "LOCK_TIMEOUT", 0.3)
    fd = os.open(netdir(tmp_path) / "lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)           # as the reference would while it works
        res, rc = ours("ADD", cfg, cid="c2")
        assert rc == 1 and res["code"] == 11
    finally:
        os.close(fd)
    assert ours("ADD", cfg, cid="c2")[1] == 0


def test_index_trouble_never_fails_an_operation(tmp_path):
    """The index is a hint: if it cannot be written, ADD/DEL still work (by scan)."""
    cfg = conf(tmp_path, ranges=[[{"subnet": "10.77.0.0/24"}]])
    ours("ADD", cfg, cid="a")
    d = netdir(tmp_path)
    import shutil
    shutil.rmtree(d / ".cnilab")
    (d / ".cnilab").write_text("not a directory")     # index dir unusable
    res, rc = ours("ADD", cfg, cid="b")
    assert rc == 0 and addrs(res) == ["10.77.0.3/24"]
    res, rc = ours("ADD", cfg, cid="a")                # replay still found (by scan)
    assert rc == 0 and addrs(res) == ["10.77.0.2/24"]
    assert ours("DEL", cfg, cid="a")[1] == 0 and not (d / "10.77.0.2").exists()
    (d / ".cnilab").unlink()                           # repaired: index comes back
    assert ours("CHECK", cfg, cid="b")[1] == 0
    assert (d / ".cnilab" / "stamp").exists()
