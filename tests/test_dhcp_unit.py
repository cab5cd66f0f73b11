"""dhcp: pure packet encode/decode and route rules (no root)."""
from __future__ import annotations

import struct

import pytest

from plugins.dhcp_daemon import packet as P
from plugins.dhcp_daemon.server import client_id, result_of

MAC = bytes.fromhex("0a0b0c0d0e0f")


def reply(msg_type: int, yiaddr: str = "10.40.0.55", xid: int = 7, **opts: bytes) -> bytes:
    head = P._HEAD.pack(P.BOOTREPLY, 1, 6, 0, xid, 0, 0, 0,
                        int.from_bytes(P._ipb(yiaddr), "big"), 0, 0, MAC.ljust(16, b"\0"), b"", b"")
    body = bytes([P.OPT_MSG_TYPE, 1, msg_type])
    for k, v in opts.items():
        body += bytes([int(k[1:]), len(v)]) + v
    return head + P.MAGIC + body + b"\xff"


def test_encode_discover_has_type_client_id_and_broadcast_flag():
    pkt = P.encode(P.DISCOVER, 0x1234, MAC, client_id=b"c1/net/eth0")
    assert pkt[0] == P.BOOTREQUEST and struct.unpack("!I", pkt[4:8])[0] == 0x1234
    assert struct.unpack("!H", pkt[10:12])[0] == P.BROADCAST_FLAG
    assert pkt[28:34] == MAC and pkt[236:240] == P.MAGIC
    assert bytes([P.OPT_MSG_TYPE, 1, P.DISCOVER]) in pkt
    assert bytes([P.OPT_CLIENT_ID, 11]) + b"c1/net/eth0" in pkt and pkt.endswith(b"\xff")


def test_release_carries_ciaddr_and_no_param_list():
    pkt = P.encode(P.RELEASE, 1, MAC, client_id=b"x", ciaddr="10.40.0.55",
                   server_id="10.40.0.2", broadcast=False)
    assert pkt[12:16] == bytes([10, 40, 0, 55])
    assert bytes([P.OPT_PARAM_LIST]) + bytes([len(P.DEFAULT_PARAMS)]) not in pkt


def test_decode_router_mask_and_timers():
    r = P.decode(reply(P.ACK, o1=bytes([255, 255, 255, 0]), o3=bytes([10, 40, 0, 1]),
                       o51=struct.pack("!I", 120), o54=bytes([10, 40, 0, 2])))
    assert (r.msg_type, r.address, r.gateway, r.server_id) == (P.ACK, "10.40.0.55/24",
                                                               "10.40.0.1", "10.40.0.2")
    assert r.timers() == (120, 60, 105)
    assert P.routes(r) == [{"dst": "0.0.0.0/0", "gw": "10.40.0.1"}]


def test_classless_routes_win_over_router_and_static():
    o121 = bytes([24, 10, 9, 8, 10, 40, 0, 1, 0, 10, 40, 0, 1, 16, 172, 16, 0, 0, 0, 0])
    r = P.decode(reply(P.ACK, o3=bytes([10, 40, 0, 9]), o33=bytes([10, 0, 0, 0, 10, 40, 0, 1]),
                       o121=o121))
    assert P.routes(r) == [{"dst": "10.9.8.0/24", "gw": "10.40.0.1"},
                           {"dst": "0.0.0.0/0", "gw": "10.40.0.1"},
                           {"dst": "172.16.0.0/16", "scope": 253}]


def test_static_routes_are_classful_then_default():
    r = P.decode(reply(P.ACK, o3=bytes([10, 40, 0, 1]),
                       o33=bytes([172, 20, 0, 0, 10, 40, 0, 7])))
    assert P.routes(r) == [{"dst": "172.20.0.0/16", "gw": "10.40.0.7"},
                           {"dst": "0.0.0.0/0", "gw": "10.40.0.1"}]


@pytest.mark.parametrize("data", [b"", b"\x02" * 100, reply(P.ACK)[:-30] + b"\x33\x09\x01",
                                  reply(P.ACK).replace(P.MAGIC, b"XXXX")])
def test_bad_packets_are_rejected(data):
    with pytest.raises(P.BadPacket):
        P.decode(data)


def test_malformed_option_121_is_rejected():
    with pytest.raises(P.BadPacket):
        P.classless_routes(bytes([40, 1, 2, 3, 4, 5]))


def test_result_shape_and_priority_and_client_id():
    r = P.decode(reply(P.ACK, o1=bytes([255, 255, 0, 0]), o3=bytes([10, 40, 0, 1])))
    assert result_of(r, 0) == {"cniVersion": "1.0.0",
                               "ips": [{"address": "10.40.0.55/16", "gateway": "10.40.0.1"}],
                               "routes": [{"dst": "0.0.0.0/0", "gw": "10.40.0.1"}]}
    assert result_of(r, 5)["routes"][0]["priority"] == 5
    assert client_id("c" * 300, "n", "eth0") == ("c" * 300)[:254]


# ---- the plugin side against a fake daemon (no root) ------------------------------

import json  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402

from plugins.core.skel import dispatch  # noqa: E402


def fake_daemon(path: str, answer: bytes, seen: list) -> threading.Thread:
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)

    def serve():
        c, _ = srv.accept()
        seen.append(json.loads(c.makefile().readline()))
        c.sendall(answer)
        c.close()
        srv.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def add(sock: str, version: str = "0.4.0"):
    conf = {"cniVersion": version, "name": "n", "type": "dhcp",
            "ipam": {"type": "dhcp", "daemonSocketPath": sock}}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/nonexistent/netns",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent"}
    out, rc = dispatch("dhcp", env, json.dumps(conf).encode())
    return rc, json.loads(out)


def test_plugin_prints_the_daemons_result_in_the_config_version(tmp_path):
    sock, seen = str(tmp_path / "d.sock"), []
    res = {"cniVersion": "1.0.0", "ips": [{"address": "10.40.0.55/24", "gateway": "10.40.0.1"}],
           "routes": [{"dst": "0.0.0.0/0", "gw": "10.40.0.1"}]}
    t = fake_daemon(sock, json.dumps({"result": res}).encode() + b"\n", seen)
    rc, out = add(sock)
    t.join(5)
    assert rc == 0 and out["cniVersion"] == "0.4.0"
    assert out["ips"] == [{"version": "4", "address": "10.40.0.55/24", "gateway": "10.40.0.1"}]
    assert seen[0]["method"] == "allocate" and seen[0]["containerID"] == "c1"
    assert seen[0]["ifname"] == "eth0" and json.loads(seen[0]["stdin"])["name"] == "n"


def test_daemon_error_object_is_passed_through(tmp_path):
    sock = str(tmp_path / "d.sock")
    t = fake_daemon(sock, b'{"error": {"code": 5, "msg": "dhcp: no lease", "details": "x"}}\n', [])
    rc, out = add(sock)
    t.join(5)
    assert rc != 0 and (out["code"], out["msg"], out["details"]) == (5, "dhcp: no lease", "x")


def test_daemon_hanging_up_without_answer_is_code_11(tmp_path):
    sock = str(tmp_path / "d.sock")
    t = fake_daemon(sock, b"", [])
    rc, out = add(sock)
    t.join(5)
    assert rc != 0 and out["code"] == 11 and "without an answer" in out["msg"]


def test_bad_priority_fails_before_calling_the_daemon(tmp_path):
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "dhcp",
            "ipam": {"type": "dhcp", "daemonSocketPath": str(tmp_path / "none"), "priority": "x"}}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/nonexistent/netns",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent"}
    out, rc = dispatch("dhcp", env, json.dumps(conf).encode())
    assert rc != 0 and json.loads(out)["code"] == 7 and "ipam.priority" in json.loads(out)["msg"]
