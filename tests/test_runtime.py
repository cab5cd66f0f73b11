"""cniruntime.runtime: libcni semantics with recording fake plugins (no root), then
the reference plugins from /usr/lib/cni inside throwaway node namespaces (root)."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest

from cniruntime import runtime as rtm
from cniruntime.runtime import Runtime
from plugins.core import errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF = "/usr/lib/cni"
HAVE_REF = all(os.access(os.path.join(REF, p), os.X_OK) for p in ("bridge", "host-local", "portmap"))
need_ref = pytest.mark.skipif(not HAVE_REF, reason="reference plugins not in /usr/lib/cni")

FAKE = r'''
import json, os, sys
name = os.path.basename(sys.argv[0])
cmd = os.environ.get("CNI_COMMAND", "")
data = "" if cmd == "VERSION" else sys.stdin.read()
conf = json.loads(data) if data else {}
rec = os.environ.get("FAKE_RECORD")
if rec:
    with open(rec, "a") as f:
        f.write(json.dumps({"plugin": name, "cmd": cmd, "conf": conf,
                            "env": {k: v for k, v in os.environ.items() if k.startswith("CNI_")},
                            "netns": os.readlink("/proc/self/ns/net"), "cwd": os.getcwd()}) + "\n")
if cmd == "VERSION":
    print(json.dumps({"cniVersion": "1.1.0", "supportedVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]}))
    sys.exit(0)
v = conf.get("cniVersion", "1.1.0")
if conf.get("fail") == cmd:
    print(json.dumps({"cniVersion": v, "code": conf.get("code", 100), "msg": name + " refused",
                      "details": "on purpose"}))
    sys.exit(1)
if conf.get("crash") == cmd:
    sys.stderr.write("panic: " + name + " fell over\n")
    sys.exit(2)
if cmd == "ADD":
    prev = conf.get("prevResult")
    if prev is None:
        ip = {"address": "10.9.0.2/24", "gateway": "10.9.0.1"}
        if not v.startswith("1."):
            ip["version"] = "4"
        prev = {"cniVersion": v, "ips": [ip]}
    res = dict(prev)
    res["interfaces"] = list(prev.get("interfaces", [])) + [{"name": name}]
    print(json.dumps(res))
'''


@pytest.fixture
def fakes(tmp_path, monkeypatch):
    """A bin dir with fake plugins fa, fb, fc; their calls land in a record file."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("fa", "fb", "fc"):
        p = bindir / name
        p.write_text(f"#!{sys.executable} -IS\n{FAKE}")
        p.chmod(0o755)
    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("FAKE_RECORD", str(record))

    class F:
        bin = str(bindir)
        cache = str(tmp_path / "cache")
        conf_dir = str(tmp_path / "net.d")
        log = str(tmp_path / "cni.log")

        @staticmethod
        def calls():
            if not record.exists():
                return []
            lines = record.read_text().splitlines()
            record.write_text("")
            return [json.loads(x) for x in lines]

        def runtime(self, **kw):
            kw.setdefault("cache_dir", self.cache)
            kw.setdefault("conf_dir", self.conf_dir)
            return Runtime([self.bin], **kw)
    return F()


def conflist(version="1.1.0", name="net1", **per_plugin):
    plugins = [{"type": "fa", "capabilities": {"portMappings": True, "bandwidth": False}},
               {"type": "fb", "opt": 1},
               {"type": "fc", "capabilities": {"bandwidth": True, "mac": True}}]
    for i, extra in per_plugin.items():
        plugins[int(i[1:])].update(extra)
    return {"cniVersion": version, "name": name, "plugins": plugins}


PORTS = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
CAPS = {"portMappings": PORTS, "bandwidth": {"ingressRate": 1000, "ingressBurst": 100},
        "ips": ["10.0.0.1/24"]}


# ---- ADD -----------------------------------------------------------------------

def test_add_threads_prev_result_and_injects(fakes):
    rt = fakes.runtime()
    res = rt.add(conflist(), "/var/run/netns/pod1", "c1", "eth0", capability_args=CAPS,
                 cni_args="IgnoreUnknown=1;K8S_POD_NAME=web")
    assert [i["name"] for i in res["interfaces"]] == ["fa", "fb", "fc"]
    calls = fakes.calls()
    assert [(c["plugin"], c["cmd"]) for c in calls] == [("fa", "ADD"), ("fb", "ADD"), ("fc", "ADD")]
    for c in calls:
        assert c["conf"]["name"] == "net1" and c["conf"]["cniVersion"] == "1.1.0"
        assert c["env"] == {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1",
                            "CNI_NETNS": "/var/run/netns/pod1", "CNI_IFNAME": "eth0",
                            "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web",
                            "CNI_PATH": fakes.bin}
        assert c["cwd"] == "/"
    assert "prevResult" not in calls[0]["conf"]
    assert [i["name"] for i in calls[1]["conf"]["prevResult"]["interfaces"]] == ["fa"]
    assert [i["name"] for i in calls[2]["conf"]["prevResult"]["interfaces"]] == ["fa", "fb"]
    # runtimeConfig = capabilities (true ones) intersected with what was offered
    assert calls[0]["conf"]["runtimeConfig"] == {"portMappings": PORTS}
    assert "runtimeConfig" not in calls[1]["conf"]
    assert calls[2]["conf"]["runtimeConfig"] == {"bandwidth": CAPS["bandwidth"]}
    # capabilities are passed through untouched, other keys too
    assert calls[0]["conf"]["capabilities"] == {"portMappings": True, "bandwidth": False}
    assert calls[1]["conf"]["opt"] == 1


def test_add_writes_libcni_cache(fakes):
    rt = fakes.runtime()
    net = rt.network(conflist())
    res = rt.add(net, "/var/run/netns/pod1", "c1", "eth1", capability_args=CAPS,
                 cni_args={"K8S_POD_NAME": "web"})
    path = os.path.join(fakes.cache, "results", "net1-c1-eth1")
    info = json.load(open(path))
    assert info["kind"] == "cniCacheV1"
    assert info["containerId"] == "c1" and info["ifName"] == "eth1"
    assert info["networkName"] == "net1" and info["netns"] == "/var/run/netns/pod1"
    assert base64.b64decode(info["config"]) == net.bytes
    assert json.loads(base64.b64decode(info["config"]))["plugins"][0]["type"] == "fa"
    assert info["cniArgs"] == [["K8S_POD_NAME", "web"]]
    assert info["capabilityArgs"] == CAPS
    assert info["result"] == res
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert rt.cached_result(net, "c1", "eth1") == res
    assert rt.cached_result(net, "c1", "eth9") is None
    [att] = rt.cached_attachments()
    assert (att.container_id, att.ifname, att.network) == ("c1", "eth1", "net1")


def test_add_failure_rolls_back_and_caches_nothing(fakes):
    rt = fakes.runtime()
    with pytest.raises(rtm.PluginError) as e:
        rt.add(conflist(p1={"fail": "ADD", "code": 104}), "/var/run/netns/p", "c1")
    err = e.value
    assert err.code == 104 and err.plugin == "fb" and err.command == "ADD"
    assert "fb refused" in str(err) and "fb" in str(err)
    calls = [(c["plugin"], c["cmd"]) for c in fakes.calls()]
    assert calls == [("fa", "ADD"), ("fb", "ADD"), ("fb", "DEL"), ("fa", "DEL")]
    assert not os.path.exists(os.path.join(fakes.cache, "results", "net1-c1-eth0"))


def test_add_failure_without_rollback(fakes):
    rt = fakes.runtime(rollback=False)
    with pytest.raises(rtm.PluginError):
        rt.add(conflist(p2={"fail": "ADD"}), "/var/run/netns/p", "c1")
    assert [c["cmd"] for c in fakes.calls()] == ["ADD", "ADD", "ADD"]


def test_plugin_crash_without_error_object(fakes):
    rt = fakes.runtime(rollback=False)
    with pytest.raises(rtm.PluginError) as e:
        rt.add(conflist(p0={"crash": "ADD"}), "/var/run/netns/p", "c1")
    assert e.value.code == errors.INTERNAL and "fell over" in e.value.details
    assert "status 2" in e.value.msg


def test_missing_plugin(fakes):
    rt = fakes.runtime()
    with pytest.raises(errors.CNIError) as e:
        rt.add({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "nope"}]}, "/x", "c1")
    assert e.value.code == errors.NOT_AVAILABLE and "nope" in e.value.msg


@pytest.mark.parametrize("cid,ifname", [("-bad", "eth0"), ("c1", "eth/0"), ("c1", "x" * 16)])
def test_bad_names_rejected_before_exec(fakes, cid, ifname):
    with pytest.raises(errors.CNIError):
        fakes.runtime().add(conflist(), "/x", cid, ifname)
    assert fakes.calls() == []


# ---- DEL ---------------------------------------------------------------------------

def test_del_reverse_with_cached_result(fakes):
    rt = fakes.runtime()
    res = rt.add(conflist(), "/var/run/netns/p", "c1", capability_args=CAPS, cni_args="A=1")
    fakes.calls()
    rt.delete(conflist(), "/var/run/netns/p", "c1")
    calls = fakes.calls()
    assert [(c["plugin"], c["cmd"]) for c in calls] == [("fc", "DEL"), ("fb", "DEL"), ("fa", "DEL")]
    for c in calls:
        assert c["conf"]["prevResult"] == res
        assert c["env"]["CNI_ARGS"] == "A=1"            # from the cache when not given
    assert calls[2]["conf"]["runtimeConfig"] == {"portMappings": PORTS}
    assert rt.cached_attachments() == []
    # a second DEL: no cache, so no prevResult, still runs every plugin
    rt.delete(conflist(), "", "c1")
    calls = fakes.calls()
    assert len(calls) == 3 and all("prevResult" not in c["conf"] for c in calls)
    assert all("CNI_NETNS" not in c["env"] for c in calls)


def test_del_uses_cached_config_when_the_file_is_gone(fakes):
    path = os.path.join(fakes.conf_dir, "10-x.conflist")
    write(path, conflist())
    rt = fakes.runtime()
    res = rt.add("net1", "/p", "c1")
    os.unlink(path)
    fakes.calls()
    with pytest.raises(errors.CNIError):
        rt.check("net1", "/p", "c1")                      # only DEL falls back
    rt.delete("net1", "/p", "c1")
    calls = fakes.calls()
    assert [(c["plugin"], c["cmd"]) for c in calls] == [("fc", "DEL"), ("fb", "DEL"), ("fa", "DEL")]
    assert calls[0]["conf"]["prevResult"] == res
    assert rt.cached_attachments() == []
    with pytest.raises(errors.CNIError) as e:             # nothing cached any more
        rt.delete("net1", "/p", "c1")
    assert "no network named" in e.value.msg


def test_del_before_040_sends_no_prev_result(fakes):
    rt = fakes.runtime()
    rt.add(conflist("0.3.1"), "/p", "c1")
    fakes.calls()
    rt.delete(conflist("0.3.1"), "/p", "c1")
    assert all("prevResult" not in c["conf"] for c in fakes.calls())


def test_del_with_corrupt_cache(fakes):
    rt = fakes.runtime()
    os.makedirs(os.path.join(fakes.cache, "results"))
    with open(os.path.join(fakes.cache, "results", "net1-c1-eth0"), "w") as f:
        f.write("{not json")
    rt.delete(conflist(), "/p", "c1")
    assert all("prevResult" not in c["conf"] for c in fakes.calls())
    assert not os.path.exists(os.path.join(fakes.cache, "results", "net1-c1-eth0"))


def test_del_failure_keeps_cache(fakes):
    rt = fakes.runtime()
    rt.add(conflist(), "/p", "c1")
    with pytest.raises(rtm.PluginError) as e:
        rt.delete(conflist(p1={"fail": "DEL"}), "/p", "c1")
    assert e.value.plugin == "fb"
    assert rt.cached_result(conflist(), "c1") is not None


# ---- CHECK -------------------------------------------------------------------------

def test_check_with_cached_result(fakes):
    rt = fakes.runtime()
    res = rt.add(conflist(), "/p", "c1")
    fakes.calls()
    rt.check(conflist(), "/p", "c1")
    calls = fakes.calls()
    assert [(c["plugin"], c["cmd"]) for c in calls] == [("fa", "CHECK"), ("fb", "CHECK"),
                                                       ("fc", "CHECK")]
    assert all(c["conf"]["prevResult"] == res for c in calls)


def test_check_gates(fakes):
    rt = fakes.runtime()
    with pytest.raises(errors.CNIError) as e:
        rt.check(conflist("0.3.1"), "/p", "c1")
    assert e.value.code == errors.INCOMPATIBLE_VERSION
    with pytest.raises(errors.CNIError) as e:
        rt.check(conflist(), "/p", "c1")                   # nothing cached
    assert e.value.code == errors.UNKNOWN_CONTAINER
    rt.check(dict(conflist(), disableCheck=True), "/p", "c1")
    assert fakes.calls() == []


def test_check_failure(fakes):
    rt = fakes.runtime()
    rt.add(conflist(), "/p", "c1")
    with pytest.raises(rtm.PluginError) as e:
        rt.check(conflist(p2={"fail": "CHECK", "code": 102}), "/p", "c1")
    assert e.value.code == 102 and e.value.plugin == "fc"


def test_prev_result_converted_to_list_version(fakes):
    rt = fakes.runtime()
    rt.add(conflist("1.0.0"), "/p", "c1")
    fakes.calls()
    # the network was re-rendered at 0.4.0 while the attachment lived
    rt.check(conflist("0.4.0"), "/p", "c1")
    prev = fakes.calls()[0]["conf"]["prevResult"]
    assert prev["cniVersion"] == "0.4.0" and prev["ips"][0]["version"] == "4"


# ---- GC and STATUS --------------------------------------------------------------------

def test_gc_deletes_stale_attachments_then_gcs_plugins(fakes):
    rt = fakes.runtime()
    other = conflist(name="net2")
    for cid in ("c1", "c2", "c3"):
        rt.add(conflist(), f"/var/run/netns/{cid}", cid)
    rt.add(other, "/var/run/netns/c2", "c2")
    fakes.calls()
    removed = rt.gc(conflist(), [{"containerID": "c1", "ifname": "eth0"}])
    assert sorted(a.container_id for a in removed) == ["c2", "c3"]
    calls = fakes.calls()
    dels = [c for c in calls if c["cmd"] == "DEL"]
    assert len(dels) == 6
    assert {c["env"]["CNI_CONTAINERID"] for c in dels} == {"c2", "c3"}
    assert {c["env"]["CNI_NETNS"] for c in dels} == {"/var/run/netns/c2", "/var/run/netns/c3"}
    gcs = [c for c in calls if c["cmd"] == "GC"]
    assert [c["plugin"] for c in gcs] == ["fa", "fb", "fc"]
    for c in gcs:
        assert c["conf"]["cni.dev/valid-attachments"] == [{"containerID": "c1", "ifname": "eth0"}]
        assert c["conf"]["cni.dev/attachments"] == [{"containerID": "c1", "ifname": "eth0"}]
        assert c["conf"]["name"] == "net1" and "prevResult" not in c["conf"]
        assert set(c["env"]) == {"CNI_COMMAND", "CNI_PATH"}
    left = sorted((a.network, a.container_id) for a in rt.cached_attachments())
    assert left == [("net1", "c1"), ("net2", "c2")]


def test_gc_before_110_only_deletes(fakes):
    rt = fakes.runtime()
    rt.add(conflist("1.0.0"), "/p", "c1")
    fakes.calls()
    rt.gc(conflist("1.0.0"), [])
    assert [c["cmd"] for c in fakes.calls()] == ["DEL", "DEL", "DEL"]
    assert rt.cached_attachments() == []


def test_gc_keeps_going_past_errors(fakes):
    rt = fakes.runtime()
    rt.add(conflist(), "/p", "c1")
    fakes.calls()
    with pytest.raises(errors.CNIError) as e:
        rt.gc(conflist(p1={"fail": "GC"}, p0={"fail": "DEL"}), [])
    assert isinstance(e.value, rtm.MultiError) and len(e.value.errors) == 2
    calls = [(c["plugin"], c["cmd"]) for c in fakes.calls()]
    assert ("fc", "GC") in calls                   # went on after fb's GC failed
    assert len(rt.cached_attachments()) == 1        # the failed DEL keeps its cache entry


def test_status(fakes):
    rt = fakes.runtime()
    rt.status(conflist())
    assert [(c["plugin"], c["cmd"]) for c in fakes.calls()] == [
        ("fa", "STATUS"), ("fb", "STATUS"), ("fc", "STATUS")]
    with pytest.raises(rtm.PluginError) as e:
        rt.status(conflist(p0={"fail": "STATUS", "code": 50}))
    assert e.value.code == 50
    assert [c["plugin"] for c in fakes.calls()] == ["fa"]          # stops at the first
    rt.status(conflist("1.0.0"))
    assert fakes.calls() == []


def test_version_and_validate(fakes):
    rt = fakes.runtime()
    assert "1.1.0" in rt.version("fa")["supportedVersions"]
    assert rt.validate(conflist()) == ["bandwidth", "mac", "portMappings"]
    assert fakes.calls()[0]["cmd"] == "VERSION"
    with pytest.raises(rtm.MultiError) as e:
        rt.validate({"cniVersion": "0.3.0", "name": "n",
                     "plugins": [{"type": "fa"}, {"type": "missing"}]})
    codes = sorted(x.code for x in e.value.errors)
    assert codes == [errors.INCOMPATIBLE_VERSION, errors.NOT_AVAILABLE]


# ---- configuration loading -----------------------------------------------------------

def write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def test_conf_dir_lookup(fakes):
    d = fakes.conf_dir
    write(os.path.join(d, "20-b.conflist"), conflist(name="same"))
    write(os.path.join(d, "10-a.conflist"), dict(conflist(name="same"), disableCheck=True))
    write(os.path.join(d, "05-single.conf"), {"cniVersion": "0.4.0", "name": "single",
                                              "type": "fa"})
    write(os.path.join(d, "06-j.json"), {"cniVersion": "1.0.0", "name": "js", "type": "fb"})
    write(os.path.join(d, "07-ignored.txt"), {"cniVersion": "1.0.0", "name": "txt", "type": "fb"})
    rt = fakes.runtime()
    net = rt.network("same")
    assert net.source.endswith("10-a.conflist") and net.disable_check   # lexical order
    single = rt.network("single")
    assert single.cni_version == "0.4.0" and [p["type"] for p in single.plugins] == ["fa"]
    assert rt.network("js").plugins[0]["type"] == "fb"
    with pytest.raises(errors.CNIError) as e:
        rt.network("txt")
    assert e.value.code == errors.INVALID_NETWORK_CONFIG
    assert rt.network(os.path.join(d, "20-b.conflist")).source.endswith("20-b.conflist")
    res = rt.add("single", "/p", "c1")
    assert res["cniVersion"] == "0.4.0"


def test_cni_versions_picks_highest_supported():
    net = rtm.conflist_from_dict({"name": "n", "cniVersion": "0.4.0",
                                  "cniVersions": ["1.0.0", "9.9.9", "0.3.1"],
                                  "plugins": [{"type": "x"}]})
    assert net.cni_version == "1.0.0"


@pytest.mark.parametrize("bad", [
    {"cniVersion": "1.0.0", "plugins": [{"type": "x"}]},
    {"name": "n", "plugins": [{"type": "x"}]},
    {"name": "n", "cniVersion": "1.0.0", "plugins": []},
    {"name": "n", "cniVersion": "1.0.0", "plugins": [{"type": "../x"}]},
    {"name": "n", "cniVersion": "1.0.0", "plugins": [{}]},
    {"name": "bad name", "cniVersion": "1.0.0", "plugins": [{"type": "x"}]},
    {"name": "n", "cniVersion": "0.9.9", "plugins": [{"type": "x"}]},
    {"name": "n", "cniVersion": "1.0.0", "disableGC": "maybe", "plugins": [{"type": "x"}]},
    {"name": "n", "cniVersion": "1.0.0", "plugins": [{"type": "x", "capabilities": []}]},
])
def test_bad_conflists(bad):
    with pytest.raises(errors.CNIError):
        rtm.conflist_from_dict(bad)


def test_cni_args_forms():
    assert rtm.normalize_cni_args("A=1;B=x=y") == [("A", "1"), ("B", "x=y")]
    assert rtm.normalize_cni_args({"A": 1}) == [("A", "1")]
    assert rtm.normalize_cni_args([("A", "1")]) == [("A", "1")]
    for bad in ("A", [("A;B", "1")]):
        with pytest.raises(errors.CNIError):
            rtm.normalize_cni_args(bad)


def test_log_lines(fakes):
    rt = fakes.runtime(log_path=fakes.log)
    rt.add(conflist(), "/var/run/netns/p", "c1", cni_args="A=1")
    with pytest.raises(rtm.PluginError):
        rt.delete(conflist(p0={"fail": "DEL"}), "/var/run/netns/p", "c1")
    lines = [json.loads(x) for x in open(fakes.log)]
    assert [(x["plugin"], x["command"]) for x in lines] == [
        ("fa", "ADD"), ("fb", "ADD"), ("fc", "ADD"), ("fc", "DEL"), ("fb", "DEL"), ("fa", "DEL")]
    first = lines[0]
    assert first["container_id"] == "c1" and first["ifname"] == "eth0"
    assert first["network"] == "net1" and first["netns"] == "/var/run/netns/p"
    assert first["env"]["CNI_ARGS"] == "A=1" and "FAKE_RECORD" not in first["env"]
    assert first["stdin"]["name"] == "net1"
    assert json.loads(first["stdout"])["interfaces"] == [{"name": "fa"}]
    assert first["exit_status"] == 0 and first["duration_ms"] > 0
    assert first["path"] == os.path.join(fakes.bin, "fa")
    assert lines[-1]["exit_status"] == 1 and json.loads(lines[-1]["stdout"])["code"] == 100


# ---- CLI -------------------------------------------------------------------------------

def cli(*argv, env=None, check=True):
    p = subprocess.run([sys.executable, "-m", "netlab", *argv], capture_output=True, text=True,
                       env=env, timeout=120, cwd=REPO)
    if check and p.returncode != 0:
        raise AssertionError(f"netlab {' '.join(argv)} failed: {p.stdout}\n{p.stderr}")
    return p


def test_cli_fake_add_check_del_gc_status(fakes):
    write(os.path.join(fakes.conf_dir, "10.conflist"), conflist())
    common = ["--conf-dir", fakes.conf_dir, "--cni-path", fakes.bin, "--cache-dir", fakes.cache]
    p = cli("cni", "add", "net1", "podx", "--id", "c9", "--ifname", "net0", *common,
            "--cap", json.dumps({"portMappings": PORTS}), "--args", "IgnoreUnknown=1")
    res = json.loads(p.stdout)
    assert [i["name"] for i in res["interfaces"]] == ["fa", "fb", "fc"]
    calls = fakes.calls()
    assert calls[0]["env"]["CNI_NETNS"] == "/var/run/netns/podx"
    assert calls[0]["env"]["CNI_IFNAME"] == "net0"
    assert calls[0]["conf"]["runtimeConfig"] == {"portMappings": PORTS}
    cli("cni", "check", "net1", "podx", "--id", "c9", "--ifname", "net0", *common)
    cli("cni", "status", "net1", *common)
    cli("cni", "del", "net1", "podx", "--id", "c9", "--ifname", "net0", *common)
    fakes.calls()
    # default container ID: a hash of the netns path, stable between calls
    cli("cni", "add", "net1", "/var/run/netns/q", *common)
    cid = fakes.calls()[0]["env"]["CNI_CONTAINERID"]
    assert cid.startswith("cnitool-")
    p = cli("cni", "gc", "net1", *common, "--valid", "keep:eth0")
    assert f"deleted stale attachment {cid} eth0" in p.stdout
    p = cli("cni", "add", "net1", "podx", "--id=-bad", *common, check=False)
    assert p.returncode == 1 and "CNI_CONTAINERID" in p.stderr and p.stdout == ""
    p = cli("cni", "add", "nonet", "podx", *common, check=False)
    assert p.returncode == 1 and "no network named 'nonet'" in p.stderr
    p = cli("cni", "add", "net1", "podx", *common, "--cap", "[1]", check=False)
    assert p.returncode == 1 and "--cap" in p.stderr


def test_cli_help_and_hook():
    p = cli("--help")
    assert "cni" in p.stdout
    p = cli("cni", "--help")
    for verb in ("add", "del", "check", "gc", "status", "install"):
        assert verb in p.stdout
    from netlab.cli import main as cli_mod, cmd_cni
    parser = cli_mod.build_parser(("netlab.cli.cmd_cni",))
    extra = cmd_cni.add_cni_command("frob", help="test hook")
    extra.set_defaults(func=lambda a: 7)
    args = parser.parse_args(["cni", "frob"])
    assert args.func(args) == 7


def test_cli_command_modules_are_never_optional(tmp_path, monkeypatch):
    from netlab.cli import main as cli_mod
    # a missing command module and an import error inside one are both errors, never a missing verb
    with pytest.raises(ModuleNotFoundError) as e:
        cli_mod.build_parser(("netlab.cli.cmd_cni", "netlab.cmd_cnilab_absent"))
    assert e.value.name == "netlab.cmd_cnilab_absent"
    (tmp_path / "cnilab_cmd_broken.py").write_text("import cnilab_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as e:
        cli_mod.build_parser(("netlab.cli.cmd_cni", "cnilab_cmd_broken"))
    assert e.value.name == "cnilab_missing_dependency"


# ---- root: host netns, reference plugins ---------------------------------------------

def ns_inode(path):
    return os.stat(path).st_ino


@pytest.mark.root
def test_host_netns_runs_plugins_in_the_node(fakes, node):
    rt = fakes.runtime(host_netns=node.path)
    rt.status(conflist())
    calls = fakes.calls()
    assert calls and all(c["netns"] == f"net:[{ns_inode(node.path)}]" for c in calls)
    assert calls[0]["netns"] != os.readlink("/proc/self/ns/net")
    with pytest.raises(errors.CNIError) as e:
        fakes.runtime(host_netns="/var/run/netns/cnilab-no-such-ns").status(conflist())
    assert e.value.code == errors.UNKNOWN_CONTAINER


def ref_bridge_conflist(tmp_path, name="refnet", subnet="10.87.0.0/24", extra=()):
    return {"cniVersion": "1.0.0", "name": name, "plugins": [
        {"type": "bridge", "bridge": "cnilab-br0", "isGateway": True, "ipMasq": False,
         "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"),
                  "ranges": [[{"subnet": subnet}]],
                  "routes": [{"dst": "0.0.0.0/0"}]}},
        *extra]}


def veths(ns):
    out = ns.run("ip", "-o", "link", "show", "type", "veth").stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


@pytest.mark.root
@need_ref
def test_reference_bridge_via_cli_attach_detach(tmp_path, node, pod):
    """The done-when proof: `netlab cni add/del` (a subprocess) drives the reference
    bridge + host-local inside a throwaway node namespace, attaching a pod."""
    confdir = tmp_path / "net.d"
    confdir.mkdir()
    (confdir / "10-ref.conflist").write_text(json.dumps(ref_bridge_conflist(tmp_path)))
    log = tmp_path / "cni.log"
    common = ["--conf-dir", str(confdir), "--cni-path", REF, "--cache-dir", str(tmp_path / "cache"),
              "--host-netns", node.name, "--log", str(log)]
    p = cli("cni", "add", "refnet", pod.name, "--id", "refpod1", *common)
    res = json.loads(p.stdout)
    assert res["ips"][0]["address"] == "10.87.0.2/24"
    addrs = pod.run("ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
    assert "10.87.0.2/24" in addrs
    routes = pod.run("ip", "-4", "route").stdout
    assert "default via 10.87.0.1" in routes
    assert len(veths(node)) == 1
    node_addrs = node.run("ip", "-o", "-4", "addr", "show", "dev", "cnilab-br0").stdout
    assert "10.87.0.1/24" in node_addrs
    pod.run("ping", "-c1", "-W2", "10.87.0.1")                        # the pod reaches its node
    assert (tmp_path / "ipam" / "refnet" / "10.87.0.2").exists()
    cli("cni", "check", "refnet", pod.name, "--id", "refpod1", *common)
    cli("cni", "del", "refnet", pod.name, "--id", "refpod1", *common)
    assert veths(node) == []
    assert "eth0" not in pod.run("ip", "-o", "link").stdout
    assert not (tmp_path / "ipam" / "refnet" / "10.87.0.2").exists()
    assert not os.listdir(tmp_path / "cache" / "results")
    # a second DEL (nothing left) succeeds, as DEL must
    cli("cni", "del", "refnet", pod.name, "--id", "refpod1", *common)
    cmds = [json.loads(x)["command"] for x in open(log)]
    assert cmds == ["ADD", "CHECK", "DEL", "DEL"]


@pytest.mark.root
@need_ref
def test_reference_chain_bridge_tuning_check_gc(tmp_path, node, make_netns):
    """Chaining with a capability (mac -> reference tuning), CHECK, GC."""
    tuning = {"type": "tuning", "capabilities": {"mac": True},
              "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}}
    net = ref_bridge_conflist(tmp_path, name="refchain", subnet="10.88.0.0/24", extra=[tuning])
    rt = Runtime([REF], cache_dir=str(tmp_path / "cache"), host_netns=node.path,
                 conf_dir=str(tmp_path))
    pods = [make_netns("pod") for _ in range(2)]
    mac = "0a:58:0a:58:00:77"
    r1 = rt.add(net, pods[0].path, "chain1", "eth0", capability_args={"mac": mac})
    r2 = rt.add(net, pods[1].path, "chain2", "eth0")
    assert r1["ips"][0]["address"] == "10.88.0.2/24" and r2["ips"][0]["address"] == "10.88.0.3/24"
    assert mac in pods[0].run("ip", "link", "show", "eth0").stdout     # runtimeConfig.mac applied
    assert pods[0].run("sysctl", "-n", "net.ipv4.conf.eth0.arp_notify").stdout.strip() == "1"
    rt.check(net, pods[0].path, "chain1", "eth0")
    # CHECK notices a broken attachment: remove the pod's address
    pods[1].run("ip", "addr", "flush", "dev", "eth0")
    with pytest.raises(rtm.PluginError) as e:
        rt.check(net, pods[1].path, "chain2", "eth0")
    assert e.value.plugin == "bridge"
    # GC: only chain1 is still valid -> chain2 is deleted (veth, IP, cache)
    removed = rt.gc(net, [("chain1", "eth0")])
    assert [a.container_id for a in removed] == ["chain2"]
    assert len(veths(node)) == 1
    assert not (tmp_path / "ipam" / "refchain" / "10.88.0.3").exists()
    assert (tmp_path / "ipam" / "refchain" / "10.88.0.2").exists()
    assert [a.container_id for a in rt.cached_attachments()] == ["chain1"]
    rt.delete(net, pods[0].path, "chain1", "eth0")
    assert veths(node) == []


@pytest.mark.root
@need_ref
def test_reference_chain_bridge_portmap(tmp_path, node, pod):
    """runtimeConfig.portMappings reaches the reference portmap; DEL removes its rules.
    (No CHECK: the reference portmap's CHECK fails without IPv6 NAT chains.)"""
    pm = {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}
    net = ref_bridge_conflist(tmp_path, name="refpm", subnet="10.89.0.0/24", extra=[pm])
    rt = Runtime([REF], cache_dir=str(tmp_path / "cache"), host_netns=node.path)
    caps = {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]}
    rt.add(net, pod.path, "pm1", "eth0", capability_args=caps)
    nat = node.run("iptables-nft", "-t", "nat", "-S").stdout
    assert "--dport 18080" in nat and "10.89.0.2:80" in nat
    rt.delete(net, pod.path, "pm1", "eth0")
    assert "10.89.0.2:80" not in node.run("iptables-nft", "-t", "nat", "-S").stdout
    assert veths(node) == []
