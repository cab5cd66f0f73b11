"""`netlab cni install DIR` and the installed executables, exec'd like a runtime does."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cninode import install as inst

PLUGINS = inst.PLUGINS
SPEC_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
FULL_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/none",
            "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent"}


def execute(path, env, stdin=b"", cwd="/"):
    return subprocess.run([path], env=env, input=stdin, capture_output=True, cwd=cwd, timeout=60)


def test_every_plugin_is_an_executable(installed_plugins):
    assert sorted(os.listdir(installed_plugins)) == sorted(PLUGINS)
    for name in PLUGINS:
        path = os.path.join(installed_plugins, name)
        st = os.stat(path)
        assert st.st_mode & 0o777 == 0o755
        text = open(path).read()
        shebang = text.splitlines()[0]
        interp = shebang[2:].split()[0]
        assert os.path.isabs(interp) and os.access(interp, os.X_OK)
        assert interp == sys.executable                       # the project's venv interpreter
        assert f"main({name!r})" in text and inst.MARKER in text


@pytest.mark.parametrize("name", PLUGINS)
def test_version_with_empty_environment_any_cwd(installed_plugins, name, tmp_path):
    p = execute(os.path.join(installed_plugins, name), {"CNI_COMMAND": "VERSION"},
                cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    reply = json.loads(p.stdout)
    assert reply["cniVersion"] == "1.1.0"
    for v in SPEC_VERSIONS:
        assert v in reply["supportedVersions"]
    assert p.stderr == b""


def test_cwd_and_script_dir_do_not_shadow_modules(installed_plugins, tmp_path):
    """A 'json.py' or 'plugins/' next to the plugin or in the cwd must not be imported."""
    evil = tmp_path / "cwd"
    (evil / "plugins").mkdir(parents=True)
    (evil / "plugins" / "__init__.py").write_text("raise SystemExit('shadowed')\n")
    (evil / "json.py").write_text("raise SystemExit('shadowed')\n")
    p = execute(os.path.join(installed_plugins, "bridge"), dict(FULL_ENV), b"{bad", cwd=str(evil))
    assert b"shadowed" not in p.stdout + p.stderr
    assert json.loads(p.stdout)["code"] == 6


@pytest.mark.parametrize("name", PLUGINS)
def test_missing_env_all_at_once(installed_plugins, name):
    p = execute(os.path.join(installed_plugins, name), {"CNI_COMMAND": "ADD"}, b"{}")
    assert p.returncode == 1
    err = json.loads(p.stdout)
    assert err["code"] == 4
    # the Go skel's exact text (tools match on it)
    assert err["msg"] == "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH] missing"


@pytest.mark.parametrize("env_patch,stdin,code", [
    ({}, b"", 6),
    ({}, b"{not json", 6),
    ({}, json.dumps({"cniVersion": "0.9.0", "name": "n", "type": "bridge"}).encode(), 1),
    ({"CNI_CONTAINERID": "-bad"}, b"{}", 4),
    ({"CNI_IFNAME": "much-too-long-name0"}, b"{}", 4),
    ({"CNI_COMMAND": "CHECK"}, json.dumps({"cniVersion": "0.3.1", "name": "n",
                                           "type": "bridge"}).encode(), 1),
    ({"CNI_COMMAND": "GC"}, json.dumps({"cniVersion": "1.0.0", "name": "n",
                                        "type": "bridge"}).encode(), 1),
    ({}, json.dumps({"cniVersion": "1.0.0", "name": "bad name", "type": "bridge"}).encode(), 7),
])
def test_bad_input_is_a_cni_error(installed_plugins, env_patch, stdin, code):
    for name in PLUGINS:
        p = execute(os.path.join(installed_plugins, name), dict(FULL_ENV, **env_patch), stdin)
        assert p.returncode == 1, (name, p.stdout, p.stderr)
        err = json.loads(p.stdout)
        assert err["code"] == code, (name, err)
        assert err["msg"] and "Traceback" not in p.stdout.decode()
        assert set(err) <= {"cniVersion", "code", "msg", "details"}


def test_closed_stdin(installed_plugins):
    p = subprocess.run([os.path.join(installed_plugins, "bridge")], env=dict(FULL_ENV),
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert p.returncode == 1 and json.loads(p.stdout)["code"] == 6


@pytest.mark.parametrize("env,stdin", [({"CNI_COMMAND": "VERSION"}, b""),
                                       (dict(FULL_ENV), b"{bad")])
def test_lean_start(installed_plugins, env, stdin):
    """VERSION and input errors import neither pyroute2, scapy nor nftables."""
    path = os.path.join(installed_plugins, "bridge")
    mode = open(path).readline().split()[1]
    p = subprocess.run([sys.executable, mode, "-X", "importtime", path], env=env, input=stdin,
                       capture_output=True, timeout=60, cwd="/")
    imported = {line.split("|")[-1].strip() for line in p.stderr.decode().splitlines()
                if line.startswith("import time:")}
    assert imported, p.stderr
    for heavy in ("pyroute2", "scapy", "nftables", "plugins.bridge"):
        assert heavy not in imported, heavy
    if env["CNI_COMMAND"] == "VERSION":
        # the hot path: not even the config/result model (dataclasses)
        assert "dataclasses" not in imported and "plugins.core.types" not in imported


def test_install_is_idempotent_and_atomic(tmp_path):
    d = tmp_path / "bin"
    first = inst.install(str(d))
    inodes = {p: os.stat(p).st_ino for p in first}
    second = inst.install(str(d))
    assert first == second
    assert {p: os.stat(p).st_ino for p in second} == inodes       # unchanged files untouched
    assert sorted(os.listdir(d)) == sorted(PLUGINS)               # no temp files left
    # a stale launcher (e.g. an old interpreter path) is replaced in one rename
    stale = d / "bridge"
    stale.write_text(f"#!/usr/bin/python3 -I\n{inst.MARKER}: bridge\nraise SystemExit(3)\n")
    inst.install(str(d))
    assert os.stat(stale).st_ino != inodes[str(stale)]
    assert open(stale).read() == inst.script_text("bridge", mode=open(stale).readline().split()[1])


def test_install_verifies_before_replacing(tmp_path, monkeypatch):
    """A new executable that fails its VERSION call never replaces the old one: it is
    written aside, verified, and only then renamed."""
    d = tmp_path / "bin"
    good = inst.install(str(d), plugins=("bridge",))[0]
    before = (open(good).read(), os.stat(good).st_ino)
    broken = f"#!{sys.executable} -I\n{inst.MARKER}: bridge\nraise SystemExit(3)\n"
    monkeypatch.setattr(inst, "script_text", lambda *a, **kw: broken)
    with pytest.raises(RuntimeError, match="left as it was"):
        inst.install(str(d), plugins=("bridge",))
    assert (open(good).read(), os.stat(good).st_ino) == before
    assert inst.works(good)
    assert sorted(os.listdir(d)) == ["bridge"]                    # no temp file left
    # a first install that fails verification leaves no file at all
    with pytest.raises(RuntimeError):
        inst.install(str(tmp_path / "bin2"), plugins=("vxlan",))
    assert os.listdir(tmp_path / "bin2") == []


def test_install_refuses_foreign_files(tmp_path):
    d = tmp_path / "bin"
    d.mkdir()
    foreign = d / "portmap"
    foreign.write_bytes(b"\x7fELF not ours")
    with pytest.raises(FileExistsError):
        inst.install(str(d))
    assert foreign.read_bytes() == b"\x7fELF not ours"
    assert not (d / "bridge").exists()                            # nothing half-done
    p = subprocess.run([sys.executable, "-m", "netlab", "cni", "install", str(d)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "--force" in p.stderr
    p = subprocess.run([sys.executable, "-m", "netlab", "cni", "install", "--force", str(d)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert inst.is_ours(str(foreign)) and len(p.stdout.split()) == len(inst.PLUGINS)


def test_install_with_another_interpreter_path(tmp_path):
    """``python=``: e.g. a wrapper script that execs the real interpreter."""
    wrapper = tmp_path / "py-wrapper"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    written = inst.install(str(tmp_path / "bin"), python=str(wrapper), plugins=("vxlan",))
    assert open(written[0]).readline().startswith(f"#!{wrapper} -I")
    assert inst.works(written[0])
    with pytest.raises(ValueError):
        inst.install(str(tmp_path / "bin2"), python="python3")


def test_script_text_modes():
    t = inst.script_text("vxlan", mode="-IS", python="/opt/py/bin/python", root="/src",
                         paths=["/site"])
    assert t.splitlines()[0] == "#!/opt/py/bin/python -IS"
    assert "sys.path[:0] = ['/src', '/site']" in t
    t = inst.script_text("vxlan", mode="-I", python="/opt/py/bin/python", root="/src")
    assert t.splitlines()[0] == "#!/opt/py/bin/python -I"
    with pytest.raises(ValueError):
        inst.script_text("nope")
    with pytest.raises(ValueError):
        inst.script_text("bridge", mode="-X")


def _ipam_conf(data_dir, subnet="10.66.0.0/24", **ipam):
    return json.dumps({"cniVersion": "1.0.0", "name": "ipamnet", "type": "bridge",
                       "ipam": {"type": "host-local", "dataDir": str(data_dir),
                                "ranges": [[{"subnet": subnet}]], **ipam}}).encode()


def test_in_process_ipam_matches_exec(installed_plugins, tmp_path):
    """Delegation to our host-local in-process behaves exactly like exec'ing it."""
    import ipam.host_local  # noqa: F401  (a broken import fails the test; it is never a skip)
    from plugins.core import invoke
    from plugins.core.errors import CNIError
    outcomes = {}
    for mode in ("in-process", "exec"):
        env = {"CNI_CONTAINERID": "ipam1", "CNI_NETNS": "/var/run/netns/none",
               "CNI_IFNAME": "eth0", "CNI_PATH": installed_plugins}
        if mode == "exec":
            env["CNILAB_EXEC_DELEGATES"] = "1"
        data = tmp_path / mode
        got = [invoke.delegate_add("host-local", _ipam_conf(data), env, [installed_plugins])
               .to_dict("1.0.0")]
        env2 = dict(env, CNI_CONTAINERID="ipam2")
        got.append(invoke.delegate_add("host-local", _ipam_conf(data), env2, [installed_plugins])
                   .to_dict("1.0.0"))
        try:
            invoke.delegate_add("host-local", _ipam_conf(data, subnet="10.66.0.0/33"), env,
                                [installed_plugins])
        except CNIError as e:
            got.append((e.code, e.msg))
        invoke.delegate("host-local", "DEL", _ipam_conf(data), env, [installed_plugins])
        got.append(sorted(os.listdir(data / "ipamnet")))
        outcomes[mode] = got
    assert outcomes["in-process"] == outcomes["exec"]
    assert outcomes["exec"][0]["ips"][0]["address"] == "10.66.0.2/24"
    assert outcomes["exec"][2][0] == 7


def test_cli_install_with_systemd_unit(tmp_path):
    """`netlab cni install DIR --systemd UNIT_DIR` writes the launchers and the agent unit."""
    import subprocess
    import sys
    bin_dir, unit_dir = tmp_path / "bin", tmp_path / "units"
    bin_dir.mkdir()
    p = subprocess.run([sys.executable, "-m", "netlab", "cni", "install", str(bin_dir),
                        "--systemd", str(unit_dir)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(bin_dir)) == sorted(inst.PLUGINS)
    units = os.listdir(unit_dir)
    assert units == ["cnilab-agent.service"]
    text = (unit_dir / units[0]).read_text()
    assert "agent" in text and sys.executable in text and "ExecStart=" in text
