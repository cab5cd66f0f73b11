"""CNI_ARGS parsing (K=V;K=V, IgnoreUnknown, K8S_* keys) and the typed config reader."""
from __future__ import annotations

import json

import pytest

from plugins.core import cniargs
from plugins.core.config import Fields, decode, parse_netconf
from plugins.core.errors import (CNIError, DECODING_FAILURE, INCOMPATIBLE_VERSION, INVALID_ENV,
                                 INVALID_NETWORK_CONFIG)

K8S = ("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;"
       "K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=1-2-3")


def test_parse_basic():
    assert cniargs.parse("") == {}
    assert cniargs.parse("IP=10.0.0.5") == {"IP": "10.0.0.5"}
    assert cniargs.parse("A=1;B=2") == {"A": "1", "B": "2"}
    assert cniargs.parse("A=;B=2;A=3") == {"A": "3", "B": "2"}   # empty value; last wins
    assert cniargs.parse("=1") == {"": "1"}        # Go: an empty key is an unknown key


# Go's LoadArgs: every ';'-separated pair splits on '=' into exactly two parts.
@pytest.mark.parametrize("raw", ["A", "A=1;B", "A=1;", ";;A=1", "B=x=y", "A==1"])
def test_parse_malformed(raw):
    with pytest.raises(CNIError) as e:
        cniargs.parse(raw)
    assert e.value.code == INVALID_ENV


def test_kubelet_args_tolerated():
    got = cniargs.select(cniargs.parse(K8S), {"IP"})
    assert got["K8S_POD_NAME"] == "web-0" and got["IgnoreUnknown"] == "1"


def test_k8s_keys_known_even_without_ignore_unknown():
    args = cniargs.parse("K8S_POD_NAMESPACE=a;K8S_POD_NAME=b;K8S_POD_UID=c;"
                         "K8S_POD_INFRA_CONTAINER_ID=d")
    assert cniargs.select(args, set()) == args


def test_unknown_key_is_an_error():
    with pytest.raises(CNIError) as e:
        cniargs.select(cniargs.parse("IP=10.0.0.5;FOO=1;BAR=2"), {"IP"})
    assert e.value.code == INVALID_ENV
    assert "BAR, FOO" in e.value.details and "IgnoreUnknown" in e.value.details


@pytest.mark.parametrize("flag", ["1", "true", "True", "TRUE"])
def test_ignore_unknown_drops_unknown(flag):
    got = cniargs.select(cniargs.parse(f"IgnoreUnknown={flag};FOO=1;IP=10.0.0.5"), {"IP"})
    assert got == {"IgnoreUnknown": flag, "IP": "10.0.0.5"}


@pytest.mark.parametrize("flag", ["0", "false", "False"])
def test_ignore_unknown_false_does_not_ignore(flag):
    with pytest.raises(CNIError) as e:
        cniargs.select(cniargs.parse(f"IgnoreUnknown={flag};FOO=1"), {"IP"})
    assert "FOO" in e.value.details


@pytest.mark.parametrize("flag", ["yes", "", "2", "on"])
def test_ignore_unknown_invalid_value_is_an_error(flag):
    """types.UnmarshallableBool accepts only 1/true/0/false (any case)."""
    with pytest.raises(CNIError) as e:
        cniargs.select(cniargs.parse(f"IgnoreUnknown={flag}"), {"IP"})
    assert e.value.code == INVALID_ENV and "IgnoreUnknown" in e.value.details


def test_cni_args_keys_are_case_sensitive():
    """FieldByName is exact: 'ip' is not IP (unlike JSON keys), and is unknown."""
    with pytest.raises(CNIError) as e:
        cniargs.select(cniargs.parse("ip=10.0.0.5"), {"IP"})
    assert "ip" in e.value.details
    assert cniargs.select(cniargs.parse("IgnoreUnknown=1;ip=10.0.0.5"), {"IP"}).get("IP") is None


def test_empty_key_is_unknown():
    with pytest.raises(CNIError):
        cniargs.select(cniargs.parse("=v"), {"IP"})
    assert cniargs.select(cniargs.parse("IgnoreUnknown=1;=v"), {"IP"}) == {"IgnoreUnknown": "1"}


# ---- typed config ------------------------------------------------------------

def test_fields_reader_names_the_field():
    f = Fields({"mtu": "1500", "br": {"x": 1}, "ok": True, "addr": "10.0.0.300"}, "plugin")
    with pytest.raises(CNIError) as e:
        f.int("mtu")
    assert e.value.code == INVALID_NETWORK_CONFIG and "plugin.mtu" in e.value.msg
    assert f.obj("br").int("x") == 1 and f.bool("ok") is True
    with pytest.raises(CNIError) as e:
        f.obj("br").str("x")
    assert "plugin.br.x" in e.value.msg
    with pytest.raises(CNIError):
        f.ip("addr")
    with pytest.raises(CNIError) as e:
        Fields({"mtu": 70000}).int("mtu", lo=68, hi=65535)
    assert "between 68 and 65535" in e.value.msg
    with pytest.raises(CNIError) as e:
        Fields({"n": 11}).int("n", hi=10)
    assert e.value.msg == "n must be at most 10"
    with pytest.raises(CNIError) as e:
        Fields({"n": -1}).int("n", lo=0)
    assert e.value.msg == "n must be at least 0"
    for not_int in (2.0, 1e3):        # Go: an int field takes only an integer literal
        with pytest.raises(CNIError):
            Fields({"n": not_int}).int("n")
    with pytest.raises(CNIError):
        Fields({"n": True}).int("n")
    with pytest.raises(CNIError):
        Fields({"i": "bad/name"}).ifname("i")
    with pytest.raises(CNIError):
        Fields({}).str("x", required=True)
    assert Fields({}).list("x") == [] and Fields({"x": None}).str("x", "d") == "d"


def test_decode():
    assert decode(b'{"a": 1}') == {"a": 1}
    for bad in (b"", b"[]", b"nope"):
        with pytest.raises(CNIError) as e:
            decode(bad)
        assert e.value.code == DECODING_FAILURE


def test_parse_netconf_shared_keys():
    raw = {"cniVersion": "1.0.0", "name": "n1", "type": "bridge",
           "ipam": {"type": "host-local", "subnet": "10.0.0.0/24"},
           "dns": {"nameservers": ["10.0.0.1"]}, "runtimeConfig": {"bandwidth": {}},
           "args": {"cni": {"ips": ["10.0.0.9/24"]}}, "capabilities": {"ips": True}}
    c = parse_netconf(raw)
    assert (c.name, c.type, c.cni_version, c.ipam_type) == ("n1", "bridge", "1.0.0", "host-local")
    assert c.dns.nameservers == ["10.0.0.1"] and c.runtime_config == {"bandwidth": {}}
    assert c.args == {"cni": {"ips": ["10.0.0.9/24"]}} and c.capabilities == {"ips": True}
    assert c.raw is raw and c.prev_result is None


@pytest.mark.parametrize("patch,code", [
    ({"cniVersion": None}, INVALID_NETWORK_CONFIG),
    ({"cniVersion": "0.9.0"}, INCOMPATIBLE_VERSION),
    ({"name": "bad name"}, INVALID_NETWORK_CONFIG),
    ({"ipam": "host-local"}, INVALID_NETWORK_CONFIG),
    ({"ipam": {"subnet": "x"}}, INVALID_NETWORK_CONFIG),
    ({"ipam": {"type": "../evil"}}, INVALID_NETWORK_CONFIG),
    ({"dns": {"nameservers": "x"}}, INVALID_NETWORK_CONFIG),
    ({"runtimeConfig": []}, INVALID_NETWORK_CONFIG),
    ({"args": "x"}, INVALID_NETWORK_CONFIG),
    ({"capabilities": ["x"]}, INVALID_NETWORK_CONFIG),
    ({"prevResult": {"cniVersion": "1.0.0", "ips": "x"}}, DECODING_FAILURE),
])
def test_parse_netconf_errors(patch, code):
    raw = {"cniVersion": "1.0.0", "name": "n1", "type": "bridge"}
    raw.update(patch)
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(CNIError) as e:
        parse_netconf(json.loads(json.dumps(raw)))
    assert e.value.code == code


def test_digest_matches_hashlib():
    """plugins.core.digest (CPython's built-in SHA-256, no OpenSSL load) gives
    hashlib's digests: names derived from them must not change."""
    import hashlib
    from plugins.core.names import sha256_digest, sha256_hex
    for text in ("", "podnet\0c1\0eth0", "cnilab-vtep/42/10.0.0.1", "é" * 300):
        assert sha256_hex(text) == hashlib.sha256(text.encode()).hexdigest()
        assert sha256_digest(text) == hashlib.sha256(text.encode()).digest()
