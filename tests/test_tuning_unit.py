"""tuning without root: config merging, sysctl key checks, the allow-list, state paths."""
from __future__ import annotations

import json
import os

import pytest

from plugins import tuning
from plugins.core.config import parse_netconf
from plugins.core.errors import CNIError
from plugins.core.skel import Call, CmdArgs, dispatch

PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "br"}, {"name": "veth1"},
                                              {"name": "eth0", "sandbox": "/x"}],
        "ips": [{"address": "10.1.0.5/24", "interface": 2}]}


def call(cni_args="", env=None, **extra):
    raw = {"cniVersion": "1.0.0", "name": "net1", "type": "tuning", **extra}
    stdin = json.dumps(raw).encode()
    a = CmdArgs("ADD", container_id="cid1", netns="/x", ifname="eth0", args=cni_args,
                stdin=stdin, env=env or {})
    return Call(a, parse_netconf(raw))


def code_of(fn, *a):
    with pytest.raises(CNIError) as e:
        fn(*a)
    return e.value.code, e.value.msg + " " + (e.value.details or "")


# ---- config -------------------------------------------------------------------------

def test_empty_config_changes_nothing():
    c = tuning.parse_config(call())
    assert c.is_empty() and c.allmulti is None and c.txqlen is None and not c.promisc


def test_every_field_is_read():
    c = tuning.parse_config(call(sysctl={"net.core.somaxconn": "500"}, mac="C2:00:00:00:00:01",
                                 mtu=1400, promisc=True, allmulti=False, txQLen=0))
    assert c.sysctl == {"net.core.somaxconn": "500"}
    assert c.mac == "c2:00:00:00:00:01" and c.mtu == 1400 and c.promisc is True
    assert c.allmulti is False and c.txqlen == 0          # explicit false / 0 are settings
    assert tuning.wanted_link_values(c) == {"mac": "c2:00:00:00:00:01", "promisc": True,
                                            "mtu": 1400, "allmulti": False, "txQLen": 0}


def test_mac_sources_in_the_reference_order():
    """config < CNI_ARGS MAC < runtimeConfig.mac < args.cni.mac"""
    m = ["02:00:00:00:00:0%d" % i for i in range(4)]
    assert tuning.parse_config(call(mac=m[0])).mac == m[0]
    assert tuning.parse_config(call(f"MAC={m[1]}", mac=m[0])).mac == m[1]
    assert tuning.parse_config(call(f"MAC={m[1]}", mac=m[0],
                                    runtimeConfig={"mac": m[2]})).mac == m[2]
    assert tuning.parse_config(call(f"MAC={m[1]}", mac=m[0], runtimeConfig={"mac": m[2]},
                                    args={"cni": {"mac": m[3]}})).mac == m[3]


def test_args_cni_overrides_and_merges_sysctls():
    c = tuning.parse_config(call(sysctl={"net.a.b": "1", "net.c.d": "2"}, mtu=1400,
                                 args={"cni": {"sysctl": {"net.c.d": "3"}, "mtu": 1300,
                                               "promisc": True, "allmulti": True,
                                               "txQLen": 7}}))
    assert c.sysctl == {"net.a.b": "1", "net.c.d": "3"}
    assert (c.mtu, c.promisc, c.allmulti, c.txqlen) == (1300, True, True, 7)


@pytest.mark.parametrize("extra, cni_args, mention", [
    ({"mtu": 50}, "", "mtu"),
    ({"mtu": 70000}, "", "mtu"),
    ({"mtu": "1400"}, "", "mtu"),
    ({"txQLen": -1}, "", "txQLen"),
    ({"promisc": "yes"}, "", "promisc"),
    ({"allmulti": 1}, "", "allmulti"),
    ({"mac": "01:00:00:00:00:01"}, "", "multicast"),
    ({"mac": "zz"}, "", "mac"),
    ({}, "MAC=nonsense", "CNI_ARGS MAC"),
    ({"runtimeConfig": {"mac": "1:2:3"}}, "", "runtimeConfig.mac"),
    ({"args": {"cni": {"mtu": 10}}}, "", "args.cni.mtu"),
    ({"sysctl": {"net.core.somaxconn": 500}}, "", "sysctl.net.core.somaxconn"),
    ({"sysctl": ["net.core.somaxconn"]}, "", "sysctl"),
    ({"dataDir": "relative/dir"}, "", "dataDir"),
])
def test_bad_fields_are_code_7(extra, cni_args, mention):
    code, text = code_of(tuning.parse_config, call(cni_args, **extra))
    assert code == 7 and mention in text


def test_unknown_cni_args_are_refused_unless_ignored():
    assert code_of(tuning.parse_config, call("FOO=1"))[0] == 4
    assert tuning.parse_config(call("IgnoreUnknown=1;FOO=1;IP=10.1.0.9")).mac == ""


def test_duplicated_sysctl_keys_are_refused():
    raw = (b'{"cniVersion":"1.0.0","name":"n","type":"tuning",'
           b'"sysctl":{"net.core.somaxconn":"1","net.core.somaxconn":"2"}}')
    a = CmdArgs("ADD", container_id="c", netns="/x", ifname="eth0", stdin=raw)
    code, text = code_of(tuning.parse_config, Call(a, parse_netconf(json.loads(raw))))
    assert code == 7 and "net.core.somaxconn" in text


# ---- sysctl keys ----------------------------------------------------------------------

@pytest.mark.parametrize("key, want", [
    ("net.ipv4.conf.IFNAME.arp_notify", "net/ipv4/conf/eth0.100/arp_notify"),
    ("net.core.somaxconn", "net/core/somaxconn"),
    ("net.ipv6.conf.all.disable_ipv6", "net/ipv6/conf/all/disable_ipv6"),
])
def test_sysctl_paths(key, want):
    assert tuning.sysctl_path(key, "eth0.100") == want


@pytest.mark.parametrize("key", [
    "kernel.hostname", "net", "net..x", "net.ipv4.conf...forwarding", "net/ipv4/ip_forward",
    "net.ipv4/../../kernel.x", "net.ipv4.conf.eth0 .forwarding", "net.a\nb", "", ".net.x",
    "net.x.", "vm.swappiness", "net.ipv4.conf.eth0\x00.forwarding",
])
def test_sysctl_keys_outside_net_or_with_path_tricks_are_refused(key):
    code, _ = code_of(tuning.sysctl_path, key, "eth0")
    assert code == 7


def test_ifname_substitution_cannot_escape():
    # the interface name is validated by the dispatcher ('/' refused); '..' is refused
    # as an interface name too, so IFNAME can only ever be one level
    assert tuning.sysctl_path("net.ipv4.conf.IFNAME.x", "a.b") == "net/ipv4/conf/a.b/x"


def test_allow_list(tmp_path):
    assert tuning.read_allowlist(str(tmp_path / "none")) is None
    f = tmp_path / "allowlist.conf"
    f.write_text("^net\\.core\\.somaxconn$\n\n  ^net\\.ipv4\\.conf\\.IFNAME\\.[a-z_]+$  \n")
    allow = tuning.read_allowlist(str(f))
    assert allow == ["^net\\.core\\.somaxconn$", "^net\\.ipv4\\.conf\\.IFNAME\\.[a-z_]+$"]
    tuning.check_allowed(["net.core.somaxconn", "net.ipv4.conf.IFNAME.arp_notify"], allow)
    code, text = code_of(tuning.check_allowed, ["net.ipv4.ip_forward"], allow)
    assert code == 7 and "net.ipv4.ip_forward" in text
    assert code_of(tuning.check_allowed, ["net.x"], ["("])[0] == 7
    tuning.check_allowed(["anything"], None)


def test_allow_list_is_applied_before_anything(tmp_path, monkeypatch):
    f = tmp_path / "allowlist.conf"
    f.write_text("^net\\.core\\.somaxconn$\n")
    monkeypatch.setattr(tuning, "ALLOWLIST", str(f))
    raw = {"cniVersion": "1.0.0", "name": "n", "type": "tuning", "prevResult": PREV,
           "sysctl": {"net.ipv4.ip_forward": "1"}}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": "/nonexistent/ns",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/x"}
    out, rc = dispatch("tuning", env, json.dumps(raw).encode())
    err = json.loads(out)
    assert rc == 1 and err["code"] == 7 and "not allowed" in err["msg"]


# ---- state -------------------------------------------------------------------------------

def test_state_dir_follows_the_run_dir_and_data_dir(tmp_path):
    c = tuning.parse_config(call(env={"CNILAB_RUN_DIR": str(tmp_path)}))
    assert tuning.state_path(c, "cid1", "eth0") == str(tmp_path / "tuning" / "net1" /
                                                       "cid1:eth0.json")
    c = tuning.parse_config(call(dataDir=str(tmp_path / "d")))
    assert tuning.state_path(c, "a_b", "c") != tuning.state_path(c, "a", "b_c")


def test_gc_forgets_only_invalid_attachments_of_this_network(tmp_path):
    def gc_call(valid):
        raw = {"cniVersion": "1.1.0", "name": "net1", "type": "tuning",
               "cni.dev/valid-attachments": valid}
        a = CmdArgs("GC", path=["/x"], stdin=json.dumps(raw).encode(),
                    env={"CNILAB_RUN_DIR": str(tmp_path)})
        return Call(a, parse_netconf(raw))
    base = tmp_path / "tuning"
    for net, cid in (("net1", "keep"), ("net1", "gone"), ("net2", "gone")):
        c = tuning.TuningConf(network=net, data_dir=str(base))
        tuning._save_state(tuning.state_path(c, cid, "eth0"), cid, "eth0", {"mtu": 1500})
    (base / "net1" / "unrelated.txt").write_text("x")
    tuning.gc(gc_call([{"containerID": "keep", "ifname": "eth0"}]))
    assert sorted(os.listdir(base / "net1")) == ["keep:eth0.json", "unrelated.txt"]
    assert os.listdir(base / "net2") == ["gone:eth0.json"]
    assert oct(os.stat(base / "net1" / "keep:eth0.json").st_mode & 0o777) == "0o600"
    with pytest.raises(CNIError) as e:           # no list: refused, nothing removed
        raw = {"cniVersion": "1.1.0", "name": "net1", "type": "tuning"}
        tuning.gc(Call(CmdArgs("GC", stdin=json.dumps(raw).encode(),
                               env={"CNILAB_RUN_DIR": str(tmp_path)}), parse_netconf(raw)))
    assert e.value.code == 7 and os.path.exists(base / "net1" / "keep:eth0.json")


def test_version_and_status(tmp_path):
    out, rc = dispatch("tuning", {"CNI_COMMAND": "VERSION"}, b"")
    assert rc == 0 and "1.1.0" in json.loads(out)["supportedVersions"]
    raw = {"cniVersion": "1.1.0", "name": "n", "type": "tuning", "dataDir": str(tmp_path / "s")}
    out, rc = dispatch("tuning", {"CNI_COMMAND": "STATUS"}, json.dumps(raw).encode())
    assert (out, rc) == ("", 0)
    blocker = tmp_path / "file"
    blocker.write_text("")
    raw["dataDir"] = str(blocker / "sub")
    out, rc = dispatch("tuning", {"CNI_COMMAND": "STATUS"}, json.dumps(raw).encode())
    assert rc == 1 and json.loads(out)["code"] == 50


def test_add_without_prev_result_is_code_7():
    raw = {"cniVersion": "1.0.0", "name": "n", "type": "tuning", "mtu": 1400}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": "/nonexistent/ns",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/x"}
    out, rc = dispatch("tuning", env, json.dumps(raw).encode())
    assert rc == 1 and json.loads(out)["code"] == 7 and "prevResult" in json.loads(out)["msg"]
