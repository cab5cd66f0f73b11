"""loopback, exec'd like a runtime does, side by side with the reference binary.

The reference is Debian's /usr/lib/cni/loopback (plugins 1.1.1: spec up to
1.0.0). Two documented differences are normalised before comparing: the
reference prints an empty ``"dns": {}`` (we omit it; same meaning), and
Debian's build omits ``ips[].version`` in 0.3.x/0.4.0 results, which the spec
requires (upstream's current converter writes it; so do we).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REFERENCE = "/usr/lib/cni/loopback"
HAVE_REFERENCE = os.access(REFERENCE, os.X_OK)
BOTH_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")


def conf(version: str = "1.0.0", **extra) -> bytes:
    return json.dumps({"cniVersion": version, "name": "lo", "type": "loopback", **extra}).encode()


def call(exe: str, command: str, netns: str = "", stdin: bytes = b"", ifname: str = "eth0",
         cid: str = "c1"):
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname,
           "CNI_PATH": os.path.dirname(exe), "CNILAB_AGENT": "off"}
    if netns:
        env["CNI_NETNS"] = netns
    p = subprocess.run([exe], env=env, input=stdin, capture_output=True, timeout=60, cwd="/")
    out = json.loads(p.stdout) if p.stdout.strip() else None
    return p.returncode, out


def normalised(result: dict) -> dict:
    r = dict(result)
    if r.get("dns") == {}:
        del r["dns"]
    r["ips"] = [{k: v for k, v in ip.items() if k != "version"} for ip in r.get("ips", [])]
    return r


def lo_state(ns) -> tuple[bool, list[str]]:
    info = json.loads(ns.run("ip", "-j", "addr", "show", "dev", "lo").stdout)[0]
    return "UP" in info["flags"], [f"{a['local']}/{a['prefixlen']}" for a in info["addr_info"]]


@pytest.fixture
def ours(installed_plugins) -> str:
    return os.path.join(installed_plugins, "loopback")


# ---- no root -------------------------------------------------------------------------------

def test_registered_everywhere():
    from cninode import install
    from plugins.core import skel
    assert skel.PLUGINS["loopback"] == "plugins.loopback"
    assert "loopback" in install.PLUGINS


def test_version_is_lean(ours):
    mode = open(ours).readline().split()[1]
    p = subprocess.run([sys.executable, mode, "-X", "importtime", ours],
                       env={"CNI_COMMAND": "VERSION"}, capture_output=True, timeout=60, cwd="/")
    assert p.returncode == 0 and json.loads(p.stdout)["cniVersion"] == "1.1.0"
    imported = {line.split("|")[-1].strip() for line in p.stderr.decode().splitlines()
                if line.startswith("import time:")}
    for heavy in ("plugins.loopback", "plugins.net.link", "pyroute2", "dataclasses"):
        assert heavy not in imported, heavy


def test_status_and_gc_succeed_and_old_versions_are_refused(ours):
    assert call(ours, "STATUS", stdin=conf("1.1.0")) == (0, None)
    gc = json.dumps({"cniVersion": "1.1.0", "name": "lo", "type": "loopback",
                     "cni.dev/valid-attachments": []}).encode()
    assert call(ours, "GC", stdin=gc) == (0, None)
    rc, err = call(ours, "STATUS", stdin=conf("1.0.0"))
    assert rc == 1 and err["code"] == 1


def test_del_with_no_netns_or_a_gone_one_succeeds(ours, tmp_path):
    assert call(ours, "DEL", stdin=conf()) == (0, None)
    assert call(ours, "DEL", str(tmp_path / "gone"), conf()) == (0, None)


# ---- root: the kernel, side by side ---------------------------------------------------------

@pytest.mark.root
@pytest.mark.parametrize("version", BOTH_VERSIONS)
def test_add_matches_the_reference(ours, make_netns, version):
    if not HAVE_REFERENCE:
        pytest.skip(f"{REFERENCE} is not installed (containernetworking-plugins)")
    results = {}
    for name, exe in (("ours", ours), ("reference", REFERENCE)):
        ns = make_netns("lo", loopback_up=False)
        assert lo_state(ns) == (False, [])
        rc, out = call(exe, "ADD", ns.path, conf(version))
        assert rc == 0, (name, out)
        assert lo_state(ns) == (True, ["127.0.0.1/8", "::1/128"])
        out["interfaces"][0]["sandbox"] = "NETNS" if out["interfaces"][0]["sandbox"] == ns.path \
            else out["interfaces"][0]["sandbox"]
        results[name] = out
        assert call(exe, "CHECK", ns.path, conf(version))[0] == (0 if version >= "0.4.0" else 1)
        assert call(exe, "DEL", ns.path, conf(version)) == (0, None)
        assert lo_state(ns)[0] is False
    assert normalised(results["ours"]) == normalised(results["reference"])
    assert results["ours"] == {
        "cniVersion": version,
        "interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": "NETNS"}],
        "ips": [dict({"interface": 0, "address": "127.0.0.1/8"},
                     **({"version": "4"} if version < "1.0.0" else {})),
                dict({"interface": 0, "address": "::1/128"},
                     **({"version": "6"} if version < "1.0.0" else {}))]}


@pytest.mark.root
def test_add_at_1_1_0_ignores_ifname_and_passes_prev_result_on(ours, make_netns):
    ns = make_netns("lo", loopback_up=False)
    rc, out = call(ours, "ADD", ns.path, conf("1.1.0"), ifname="net1")
    assert rc == 0 and out["interfaces"] == [{"name": "lo", "mac": "00:00:00:00:00:00",
                                              "sandbox": ns.path}]
    assert [ip["address"] for ip in out["ips"]] == ["127.0.0.1/8", "::1/128"]
    prev = {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": ns.path}],
            "ips": [{"address": "10.9.0.2/24", "interface": 0}]}
    rc, out = call(ours, "ADD", ns.path, conf("1.1.0", prevResult=prev))
    assert rc == 0 and out == prev
    assert call(ours, "CHECK", ns.path, conf("1.1.0")) == (0, None)


@pytest.mark.root
def test_check_fails_when_lo_is_down(ours, make_netns):
    ns = make_netns("lo", loopback_up=False)
    rc, err = call(ours, "CHECK", ns.path, conf())
    assert rc == 1 and err["code"] == 102 and err["msg"] == "loopback interface is down"


@pytest.mark.root
def test_non_loopback_address_is_an_error_that_changes_nothing(ours, make_netns):
    ns = make_netns("lo", loopback_up=False)
    ns.run("ip", "addr", "add", "192.0.2.7/32", "dev", "lo")
    rc, err = call(ours, "ADD", ns.path, conf())
    assert rc == 1 and err["code"] == 5 and "192.0.2.7/32" in err["msg"]
    assert lo_state(ns) == (False, ["192.0.2.7/32"])         # still down


@pytest.mark.root
def test_del_is_repeatable_and_add_needs_the_netns(ours, make_netns, tmp_path):
    ns = make_netns("lo", loopback_up=False)
    assert call(ours, "ADD", ns.path, conf())[0] == 0
    for _ in range(2):
        assert call(ours, "DEL", ns.path, conf()) == (0, None)
    rc, err = call(ours, "ADD", str(tmp_path / "gone"), conf())
    assert rc == 1 and err["code"] == 3
