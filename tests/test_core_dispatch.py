"""The dispatcher (plugins.core.skel): env table, validation, version gates,
error objects, internal errors. No root: a fake plugin module is registered."""
from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from plugins.core import errors, skel, version as ver
from plugins.core.types import IPConfig, Result

BASE_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/x",
            "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}


def conf(version="1.1.0", **extra) -> bytes:
    d = {"cniVersion": version, "name": "net1", "type": "fake"}
    d.update(extra)
    return json.dumps(d).encode()


@pytest.fixture
def fake(monkeypatch):
    """Register plugin 'fake' -> a module recording calls; handlers are replaceable."""
    mod = types.ModuleType("fake_cni_plugin")
    mod.calls = []

    def add(call):
        mod.calls.append(("ADD", call))
        return Result(ips=[IPConfig("10.0.0.5/24", "10.0.0.1", 0)])

    def delete(call):
        mod.calls.append(("DEL", call))

    def check(call):
        mod.calls.append(("CHECK", call))

    def gc(call):
        mod.calls.append(("GC", call))

    def status(call):
        mod.calls.append(("STATUS", call))

    mod.add, mod.delete, mod.check, mod.gc, mod.status = add, delete, check, gc, status
    monkeypatch.setitem(sys.modules, "fake_cni_plugin", mod)
    monkeypatch.setitem(skel.PLUGINS, "fake", "fake_cni_plugin")
    return mod


def run(env, stdin=b"", plugin="fake", log=None):
    out, rc = skel.dispatch(plugin, env, stdin, log=log)
    return (json.loads(out) if out else None), rc


def env_with(**kw):
    e = dict(BASE_ENV)
    for k, v in kw.items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    return e


# ---- env table --------------------------------------------------------------

@pytest.mark.parametrize("command,required", [
    ("ADD", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]),
    ("CHECK", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]),
    ("DEL", ["CNI_CONTAINERID", "CNI_IFNAME"]),
    ("GC", ["CNI_PATH"]),
])
def test_all_missing_variables_reported_at_once(fake, command, required):
    out, rc = run({"CNI_COMMAND": command}, conf())
    assert rc == 1 and out["code"] == errors.INVALID_ENV
    for var in required:
        assert var in out["msg"]
    # exactly those, in table order
    listed = out["msg"][out["msg"].index("[") + 1:out["msg"].index("]")].split(",")
    assert listed == required
    assert fake.calls == []


@pytest.mark.parametrize("command,var", [
    ("ADD", "CNI_NETNS"), ("ADD", "CNI_PATH"), ("CHECK", "CNI_IFNAME"),
    ("DEL", "CNI_CONTAINERID"), ("DEL", "CNI_IFNAME"), ("GC", "CNI_PATH")])
def test_each_required_variable(fake, command, var):
    env = env_with(CNI_COMMAND=command, **{var: None})
    out, rc = run(env, conf())
    assert rc == 1 and out["code"] == errors.INVALID_ENV
    assert out["msg"] == f"required env variables [{var}] missing"


def test_del_without_netns_is_fine(fake):
    out, rc = run(env_with(CNI_COMMAND="DEL", CNI_NETNS=None), conf())
    assert (out, rc) == (None, 0)
    assert fake.calls[0][0] == "DEL" and fake.calls[0][1].args.netns == ""


def test_missing_and_unknown_command(fake):
    out, rc = run({}, conf())
    assert rc == 1 and out["code"] == 4 and "CNI_COMMAND" in out["msg"]
    out, rc = run(env_with(CNI_COMMAND="FROB"), conf())
    assert rc == 1 and out["code"] == 4 and "FROB" in out["msg"]


def test_status_needs_only_command(fake):
    out, rc = run({"CNI_COMMAND": "STATUS"}, conf())
    assert rc == 0 and fake.calls[0][0] == "STATUS"


# ---- name validation ----------------------------------------------------------

@pytest.mark.parametrize("cid", ["-abc", ".x", "a b", "a/b", "a\nb", "ä", "a;b"])
def test_bad_container_id(fake, cid):
    out, rc = run(env_with(CNI_CONTAINERID=cid), conf())
    assert rc == 1 and out["code"] == errors.INVALID_ENV and "CNI_CONTAINERID" in out["msg"]
    assert fake.calls == []


@pytest.mark.parametrize("cid", ["a", "A9", "abc-def_1.2", "0" * 64])
def test_good_container_id(fake, cid):
    out, rc = run(env_with(CNI_CONTAINERID=cid), conf())
    assert rc == 0, out


@pytest.mark.parametrize("ifname", ["", ".", "..", "a" * 16, "eth/0", "eth:0", "eth 0", "e\t0"])
def test_bad_ifname(fake, ifname):
    env = env_with(CNI_IFNAME=ifname)
    out, rc = run(env, conf())
    assert rc == 1 and out["code"] == errors.INVALID_ENV
    assert fake.calls == []


def test_good_ifnames(fake):
    for ifname in ("eth0", "a" * 15, "net-1.2_x"):
        out, rc = run(env_with(CNI_IFNAME=ifname), conf())
        assert rc == 0, (ifname, out)


@pytest.mark.parametrize("name", ["-net", "a b", "a/b", "", 5, None])
def test_bad_network_name(fake, name):
    d = {"cniVersion": "1.0.0", "type": "fake"}
    if name is not None:
        d["name"] = name
    out, rc = run(dict(BASE_ENV), json.dumps(d).encode())
    assert rc == 1 and out["code"] == errors.INVALID_NETWORK_CONFIG
    assert fake.calls == []


def test_relative_netns_rejected(fake):
    out, rc = run(env_with(CNI_NETNS="var/run/netns/x"), conf())
    assert rc == 1 and out["code"] == errors.INVALID_ENV


def test_malformed_cni_args(fake):
    out, rc = run(env_with(CNI_ARGS="IgnoreUnknown=1;junk"), conf())
    assert rc == 1 and out["code"] == errors.INVALID_ENV and "CNI_ARGS" in out["msg"]


def test_own_netns_refused(fake):
    out, rc = run(env_with(CNI_NETNS="/proc/self/ns/net"), conf())
    assert rc == 1 and out["code"] == errors.NETNS_IS_OWN
    assert fake.calls == []


# ---- stdin / versions --------------------------------------------------------

@pytest.mark.parametrize("stdin,code", [
    (b"", errors.DECODING_FAILURE), (b"   ", errors.DECODING_FAILURE),
    (b"{not json", errors.DECODING_FAILURE), (b"[1,2]", errors.DECODING_FAILURE),
    (b"\xff\xfe", errors.DECODING_FAILURE),
    (json.dumps({"name": "n", "type": "fake"}).encode(), errors.INVALID_NETWORK_CONFIG),
    (json.dumps({"cniVersion": 1, "name": "n"}).encode(), errors.INVALID_NETWORK_CONFIG),
])
def test_bad_stdin(fake, stdin, code):
    out, rc = run(dict(BASE_ENV), stdin)
    assert rc == 1 and out["code"] == code, out
    assert fake.calls == []


@pytest.mark.parametrize("v", ["0.5.0", "2.0.0", "1.2.0", "9"])
def test_unsupported_version(fake, v):
    out, rc = run(dict(BASE_ENV), conf(v))
    assert rc == 1 and out["code"] == errors.INCOMPATIBLE_VERSION
    assert "1.1.0" in out.get("details", "")


def test_malformed_version(fake):
    out, rc = run(dict(BASE_ENV), conf("one.two"))
    assert rc == 1 and out["code"] == errors.INCOMPATIBLE_VERSION


@pytest.mark.parametrize("command,minimum", [("CHECK", "0.4.0"), ("GC", "1.1.0"),
                                             ("STATUS", "1.1.0")])
def test_version_gates(fake, command, minimum):
    env = env_with(CNI_COMMAND=command)
    for v in ver.SUPPORTED:
        fake.calls.clear()
        out, rc = run(env, conf(v))
        if ver.at_least(v, minimum):
            assert rc == 0, (v, out)
            assert fake.calls[0][0] == command
        else:
            assert rc == 1 and out["code"] == errors.INCOMPATIBLE_VERSION, (v, out)
            assert out["cniVersion"] == v           # the error speaks the config's version
            assert fake.calls == []


def test_version_command_ignores_stdin_and_env():
    out, rc = run({"CNI_COMMAND": "VERSION"}, b"garbage", plugin="no-such-plugin")
    assert rc == 0
    assert out == {"cniVersion": "1.1.0", "supportedVersions": list(ver.SUPPORTED)}
    for v in ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"):
        assert v in out["supportedVersions"]


def test_version_json_is_json():
    assert json.loads(skel.version_json()) == ver.version_reply()


# ---- results and handlers -----------------------------------------------------

@pytest.mark.parametrize("v", ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_add_result_in_config_version(fake, v):
    out, rc = run(dict(BASE_ENV), conf(v))
    assert rc == 0 and out["cniVersion"] == v
    assert out["ips"][0]["address"] == "10.0.0.5/24"
    assert ("version" in out["ips"][0]) == (not ver.at_least(v, "1.0.0"))


def test_add_result_020(fake):
    out, rc = run(dict(BASE_ENV), conf("0.2.0"))
    assert rc == 0 and out["ip4"] == {"ip": "10.0.0.5/24", "gateway": "10.0.0.1"}


def test_call_carries_parsed_config(fake):
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.2/24"}]}
    stdin = conf("1.0.0", prevResult=prev, runtimeConfig={"portMappings": []},
                 args={"cni": {"x": 1}}, ipam={"type": "host-local"})
    out, rc = run(env_with(CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=p"), stdin)
    assert rc == 0
    call = fake.calls[0][1]
    assert call.args.command == "ADD" and call.args.container_id == "c1"
    assert call.args.path == ["/opt/cni/bin"]
    assert call.args.cni_args == {"IgnoreUnknown": "1", "K8S_POD_NAME": "p"}
    assert call.conf.name == "net1" and call.conf.cni_version == "1.0.0"
    assert call.conf.prev_result.ips[0].address == "10.1.0.2/24"
    assert call.conf.runtime_config == {"portMappings": []}
    assert call.conf.ipam_type == "host-local"
    assert call.plugin_env["CNI_COMMAND"] == "ADD"


def test_prev_result_in_config_version_when_unversioned(fake):
    stdin = conf("0.4.0", prevResult={"ips": [{"version": "4", "address": "10.1.0.2/24"}]})
    out, rc = run(dict(BASE_ENV), stdin)
    assert rc == 0
    assert fake.calls[0][1].conf.prev_result.cni_version == "0.4.0"


def test_bad_prev_result(fake):
    out, rc = run(dict(BASE_ENV), conf("1.0.0", prevResult={"cniVersion": "1.0.0",
                                                          "ips": [{"address": "nope"}]}))
    assert rc == 1 and out["code"] == errors.DECODING_FAILURE and "prevResult" in out["msg"]


def test_cni_error_passes_through_unwrapped(fake):
    def add(call):
        raise errors.CNIError(errors.POOL_EXHAUSTED, "no addresses left", "range 10.0.0.0/30")
    fake.add = add
    out, rc = run(dict(BASE_ENV), conf("1.0.0"))
    assert rc == 1
    assert out == {"cniVersion": "1.0.0", "code": 103, "msg": "no addresses left",
                   "details": "range 10.0.0.0/30"}


def test_internal_error_is_an_object_and_traceback_goes_to_log(fake):
    def add(call):
        raise ValueError("boom")
    fake.add = add
    logged = []
    out_s, rc = skel.dispatch("fake", dict(BASE_ENV), conf(), log=logged.append)
    assert rc == 1
    assert "Traceback" not in out_s
    out = json.loads(out_s)
    assert out["code"] == errors.INTERNAL and "boom" in out["msg"]
    assert logged and "Traceback" in logged[0] and "ValueError" in logged[0]


def test_oserror_becomes_io_failure(fake):
    def delete(call):
        raise PermissionError(13, "Permission denied")
    fake.delete = delete
    out, rc = run(env_with(CNI_COMMAND="DEL"), conf())
    assert rc == 1 and out["code"] == errors.IO_FAILURE


def test_add_returning_nothing_is_internal(fake):
    fake.add = lambda call: None
    out, rc = run(dict(BASE_ENV), conf())
    assert rc == 1 and out["code"] == errors.INTERNAL


def test_unknown_plugin_and_a_missing_module(monkeypatch):
    out, rc = run(dict(BASE_ENV), conf(), plugin="nope")
    assert rc == 1 and out["code"] == errors.NOT_IMPLEMENTED
    # a listed plugin whose module is missing is a broken install, not "not implemented"
    monkeypatch.setitem(skel.PLUGINS, "ghost", "no_such_module_cnilab_xyz")
    out, rc = run(dict(BASE_ENV), conf(), plugin="ghost")
    assert rc == 1 and out["code"] == errors.INTERNAL and "no_such_module_cnilab_xyz" in out["msg"]


def test_every_listed_plugin_module_imports():
    import importlib
    for plugin, modname in skel.PLUGINS.items():
        assert callable(getattr(importlib.import_module(modname), "add")), plugin


def test_missing_handler(fake):
    del fake.gc
    out, rc = run(env_with(CNI_COMMAND="GC"), conf("1.1.0"))
    assert rc == 1 and out["code"] == errors.NOT_IMPLEMENTED and "GC" in out["msg"]


def test_broken_plugin_module_is_internal_not_hidden(monkeypatch, tmp_path):
    """An import error *inside* a plugin module is a bug, not 'not implemented'."""
    (tmp_path / "cnilab_broken_plug.py").write_text("import cnilab_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(skel.PLUGINS, "broken", "cnilab_broken_plug")
    out, rc = run(dict(BASE_ENV), conf(), plugin="broken")
    assert rc == 1 and out["code"] == errors.INTERNAL
    assert "cnilab_no_such_dependency" in out["msg"]


def test_cmdargs_record_api():
    a = skel.CmdArgs("ADD", container_id="x", args="A=1")
    assert a == skel.CmdArgs(command="ADD", container_id="x", args="A=1")
    assert a.path == [] and a.env == {} and a.cni_args == {"A": "1"}
    assert "container_id='x'" in repr(a)


# ---- the process entry point ---------------------------------------------------

def _main(code: str, env: dict, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], input=stdin, env=env,
                          capture_output=True, timeout=60)


def test_main_internal_error_never_prints_traceback_on_stdout(tmp_path):
    code = ("import sys, types\n"
            "from plugins.core import skel\n"
            "m = types.ModuleType('m'); sys.modules['m'] = m\n"
            "def add(call): raise KeyError('oops')\n"
            "m.add = add; skel.PLUGINS['m'] = 'm'\n"
            "skel.main('m')\n")
    env = dict(BASE_ENV)
    p = _main(code, env, conf())
    assert p.returncode == 1
    assert b"Traceback" not in p.stdout
    obj = json.loads(p.stdout)
    assert obj["code"] == errors.INTERNAL and "oops" in obj["msg"]
    assert b"Traceback" in p.stderr


@pytest.mark.parametrize("env,stdin", [
    ({"CNI_COMMAND": "VERSION"}, b""),
    ({"CNI_COMMAND": "ADD"}, b""),
    (dict(BASE_ENV), b"{bad"),
    (dict(BASE_ENV, CNI_CONTAINERID="-bad"), b"{}"),
    (dict(BASE_ENV), json.dumps({"cniVersion": "7.0.0", "name": "n", "type": "bridge"}).encode()),
])
def test_version_and_input_errors_stay_lean(env, stdin):
    """VERSION and input errors must not import pyroute2, scapy or nftables."""
    code = ("import sys\n"
            "from plugins.core import skel\n"
            f"out, rc = skel.dispatch('bridge', {env!r}, {stdin!r})\n"
            "heavy = sorted(m for m in ('pyroute2', 'scapy', 'nftables', 'plugins.bridge') "
            "if m in sys.modules)\n"
            "print(heavy)\n")
    p = _main(code, {})
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == b"[]"
