"""Go-exact JSON reading (plugins/core/gojson.py), no root.

First the reader's rules (checked against Go's encoding/json sources: decode.go
object()/array(), encode.go typeFields, fold.go), then the exact payloads
containerd's go-cni marshals from its untagged structs, through every plugin
that reads them, compared with the camelCase payloads podman/CRI-O send.
"""
from __future__ import annotations

import json

import pytest

from ipam import config as ipam_config
from plugins import bandwidth, portmap
from plugins.core.config import decode, parse_netconf
from plugins.core.errors import CNIError, DECODING_FAILURE, INVALID_NETWORK_CONFIG
from plugins.core.config import valid_attachments
from plugins.core.gojson import Fields, as_go_map, fold, loads
from plugins.core.types import Result
from plugins.net import portmap_rules as pr

TICKS = 1000 / 64
MAX_U32 = 4294967295        # containerd's burst for every CRI bandwidth annotation


def F(text: str, **kw) -> Fields:
    return Fields(loads(text), **kw)


# ---- the reader ----------------------------------------------------------------

def test_exact_and_folded_names_match():
    for key in ("hostPort", "HostPort", "HOSTPORT", "hostport", "hOsTpOrT"):
        assert F(json.dumps({key: 8080})).int("hostPort") == 8080
    assert F('{"host_port": 1}').int("hostPort", 0) == 0      # not a case variant
    assert F('{"hostPort ": 1}').int("hostPort", 0) == 0


def test_kelvin_sign_and_long_s_fold_to_ascii_but_turkish_i_does_not():
    # U+212A KELVIN SIGN folds to K, U+017F LONG S to S (Go's caseOrbit) ...
    assert F('{"\\u212aey": 1}').int("key") == 1
    assert F('{"\\u017fnat": true}').bool("snat") is True
    assert fold("\u212a\u017f") == "KS"
    # ... but U+0130/U+0131 are their own orbits in Go: no match with I/i
    assert F('{"\\u0131ps": ["x"]}').list("ips") == []
    assert F('{"\\u0130PS": ["x"]}').list("ips") == []


def test_last_duplicate_wins_in_input_order():
    assert F('{"mtu": 1400, "MTU": 1500}').int("mtu") == 1500
    assert F('{"MTU": 1500, "mtu": 1400}').int("mtu") == 1400    # exact is no priority...
    assert F('{"mtu": 1, "mtu": 2}').int("mtu") == 2               # ...order is
    # the dict view is Go's *map* view: exact keys only
    assert loads('{"a": 1, "a": 2, "A": 3}') == {"a": 2, "A": 3}


def test_null_changes_nothing_on_a_value_field():
    assert F('{"mtu": 1400, "Mtu": null}').int("mtu") == 1400
    assert not F('{"mtu": null}').has("mtu")


def test_a_key_naming_another_field_goes_to_that_field():
    """Go: exact name first (byExactName), then the first declared field that
    folds alike (byFoldedName keeps the first)."""
    known = ("ip", "IP")              # a struct with two fields whose names fold alike
    f = F('{"ip": "a", "IP": "b", "Ip": "c"}', known=known)
    assert f.str("ip") == "c"         # "ip" exactly, then "Ip" by fold (first declared)
    assert f.str("IP") == "b"         # only its exact key
    # without the declaration, every key folding to the name counts
    assert F('{"ip": "a", "IP": "b"}').str("ip") == "b"


def test_objects_merge_and_slices_reuse_elements():
    f = F('{"runtimeConfig": {"portMappings": [{"hostPort": 1, "containerPort": 2}]},'
          ' "RuntimeConfig": {"bandwidth": {"ingressRate": 5}}}')
    rc = f.obj("runtimeConfig")
    assert rc.obj("bandwidth").int("ingressRate") == 5
    assert rc.objects("portMappings")[0].int("hostPort") == 1
    # decode.go array(): a second array decodes into the first one's elements
    g = F('{"l": [{"a": 1}, {"a": 2}], "L": [{"b": 3}]}')
    items = g.objects("l")
    assert len(items) == 1 and (items[0].int("a"), items[0].int("b")) == (1, 3)
    assert F('{"l": [{"a": 1}], "L": []}').objects("l") == []       # [] starts over
    assert F('{"l": ["x", "y"], "L": [null]}').list("l") == ["x"]  # null element: no-op


def test_ints_take_only_integer_literals():
    with pytest.raises(CNIError):
        F('{"mtu": 1500.0}').int("mtu")
    with pytest.raises(CNIError):
        F('{"mtu": 15e2}').int("mtu")


@pytest.mark.parametrize("text", [b'{"mtu": NaN}', b'{"mtu": Infinity}', b'\xef\xbb\xbf{}'])
def test_what_go_refuses_to_decode(text):
    with pytest.raises(CNIError) as e:
        decode(text)
    assert e.value.code == DECODING_FAILURE


def test_invalid_utf8_in_strings_becomes_replacement_char():
    assert decode(b'{"name": "a\xffb"}')["name"] == "a\ufffdb"


def test_netconf_top_level_keys_fold():
    conf = parse_netconf(loads('{"CNIVersion": "1.0.0", "Name": "n1", "Type": "portmap",'
                               ' "IPAM": {"Type": "host-local"}, "DNS": {"Nameservers": ["10.0.0.53"]},'
                               ' "Args": {"cni": {"ips": ["10.1.0.5"]}}}'))
    assert (conf.cni_version, conf.name, conf.type, conf.ipam_type) == \
        ("1.0.0", "n1", "portmap", "host-local")
    assert conf.dns.nameservers == ["10.0.0.53"]
    assert Fields(conf.args).obj("cni").list("ips") == ["10.1.0.5"]


def test_prev_result_read_as_go_does():
    """Go keeps prevResult as map[string]interface{} and re-marshals it (sorted keys)."""
    raw = loads('{"cniVersion": "1.0.0", "name": "n", "type": "portmap", "prevResult":'
                ' {"CNIVersion": "1.0.0", "Interfaces": [{"Name": "eth0", "Sandbox": "/ns"}],'
                '  "IPs": [{"Address": "10.1.0.5/24", "Gateway": "10.1.0.1", "Interface": 0}],'
                '  "Routes": [{"Dst": "0.0.0.0/0"}], "DNS": {"Nameservers": ["10.0.0.53"]}}}')
    prev = parse_netconf(raw).prev_result
    assert prev.interfaces[0].name == "eth0" and prev.interfaces[0].sandbox == "/ns"
    assert (prev.ips[0].address, prev.ips[0].gateway, prev.ips[0].interface) == \
        ("10.1.0.5/24", "10.1.0.1", 0)
    assert prev.routes[0].dst == "0.0.0.0/0" and prev.dns.nameservers == ["10.0.0.53"]
    # after the map round trip "IPs" sorts before "ips": the lower-case key is applied last
    m = as_go_map(loads('{"ips": [{"address": "10.0.0.2/24"}], "IPs": [{"address": "10.0.0.9/24"}],'
                        ' "cniVersion": "1.0.0"}'))
    assert [ip.address for ip in Result.from_dict(m).ips] == ["10.0.0.2/24"]


def test_gc_attachments_fold():
    raw = loads('{"cni.dev/valid-attachments": [{"ContainerID": "c1", "IfName": "eth0"}]}')
    assert valid_attachments(raw) == {("c1", "eth0")}


# ---- go-cni's payloads through the plugins -------------------------------------
# containerd CRI: cniNamespaceOpts -> go-cni WithCapabilityPortMap/WithCapabilityBandWidth;
# go-cni types.go PortMapping/BandWidth/IPRanges carry no json tags, so json.Marshal
# writes the Go field names. These strings are what encoding/json prints for them.

GOCNI_PORTS = ('[{"HostPort":8080,"ContainerPort":80,"Protocol":"tcp","HostIP":""},'
               '{"HostPort":8053,"ContainerPort":53,"Protocol":"udp","HostIP":"127.0.0.1"}]')
CAMEL_PORTS = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
               {"hostPort": 8053, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}]


def _conf(plugin: str, runtime_config: str, **top) -> object:
    text = json.dumps({"cniVersion": "1.0.0", "name": "net1", "type": plugin, **top})
    return parse_netconf(decode((text[:-1] + f', "runtimeConfig": {runtime_config}}}').encode()))


def test_portmap_takes_gocni_port_mappings_and_plans_the_same_rules():
    go = portmap.parse_config(_conf("portmap", f'{{"portMappings": {GOCNI_PORTS}}}'))
    camel = portmap.parse_config(_conf("portmap", json.dumps({"portMappings": CAMEL_PORTS})))
    assert go.mappings == camel.mappings == [pr.PortMapping(8080, 80, "tcp", ""),
                                             pr.PortMapping(8053, 53, "udp", "127.0.0.1")]

    def rules(cfg):
        return pr.attachment_rules(pr.PortMapPlan(network="net1", container_id="c1",
                                                  ifname="eth0", family=4, pod_ip="10.1.0.5",
                                                  mappings=cfg.mappings))
    assert rules(go) == rules(camel) and rules(go)


def test_bandwidth_takes_gocni_bandwidth():
    """containerd sets the burst to MaxUint32 bits for each annotated direction and
    leaves the other at zero (toCNIBandWidth); before, these keys were silently ignored."""
    go = _conf("bandwidth", '{"bandwidth": {"IngressRate":1000000,"IngressBurst":4294967295,'
                            '"EgressRate":0,"EgressBurst":0}}')
    bw = bandwidth.parse_config(go, ticks=TICKS)
    assert (bw.ingress_rate, bw.ingress_burst, bw.egress_rate, bw.egress_burst) == \
        (1_000_000, MAX_U32, 0, 0)
    assert bw.shapes_ingress and not bw.shapes_egress
    both = _conf("bandwidth", '{"bandwidth": {"IngressRate":8000000,"IngressBurst":800000,'
                              '"EgressRate":4000000,"EgressBurst":400000}}')
    assert bandwidth.parse_config(both, ticks=TICKS) == bandwidth.Bandwidth(
        8_000_000, 800_000, 4_000_000, 400_000)


def test_bandwidth_gocni_rate_without_burst_is_still_an_error():
    with pytest.raises(CNIError) as e:
        bandwidth.parse_config(_conf("bandwidth", '{"bandwidth": {"IngressRate": 1000}}'),
                               ticks=TICKS)
    assert e.value.code == INVALID_NETWORK_CONFIG and "ingressBurst" in e.value.msg


def test_host_local_takes_gocni_ip_ranges():
    ipam = {"type": "host-local", "ranges": [[{"subnet": "10.9.0.0/24"}]]}
    go = _conf("bridge", '{"ipRanges": [[{"Subnet":"10.1.0.0/24","RangeStart":"10.1.0.10",'
                         '"RangeEnd":"10.1.0.20","Gateway":"10.1.0.254"}]]}', ipam=ipam)
    camel = _conf("bridge", json.dumps({"ipRanges": [[{
        "subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.20",
        "gateway": "10.1.0.254"}]]}), ipam=ipam)
    a, b = ipam_config.load(go, {}), ipam_config.load(camel, {})
    assert a.range_sets == b.range_sets
    r = a.range_sets[0][0]
    assert (str(r.subnet), str(r.addr(r.start)), str(r.addr(r.end)), str(r.gateway)) == \
        ("10.1.0.0/24", "10.1.0.10", "10.1.0.20", "10.1.0.254")


def test_gocni_flat_ip_ranges_are_refused_as_go_host_local_refuses_them():
    """go-cni's WithCapabilityIPRanges marshals []IPRanges (one level); the
    convention (and Go host-local's []RangeSet) is a list of range sets, so
    the Go plugin fails with an UnmarshalTypeError. We fail too, with code 7."""
    flat = _conf("bridge", '{"ipRanges": [{"Subnet":"10.1.0.0/24"}]}',
                 ipam={"type": "host-local"})
    with pytest.raises(CNIError) as e:
        ipam_config.load(flat, {})
    assert e.value.code == INVALID_NETWORK_CONFIG and "runtimeConfig.ipRanges[0]" in e.value.msg


def test_host_local_ipam_keys_fold():
    conf = _conf("bridge", '{"IPs": ["10.1.0.7"]}',
                 ipam={"Type": "host-local", "Subnet": "10.1.0.0/24", "DataDir": "/tmp/x",
                       "Routes": [{"Dst": "0.0.0.0/0", "GW": "10.1.0.1"}]})
    cfg = ipam_config.load(conf, {})
    assert str(cfg.range_sets[0][0].subnet) == "10.1.0.0/24" and cfg.data_dir == "/tmp/x"
    assert [(r.dst, r.gw) for r in cfg.routes] == [("0.0.0.0/0", "10.1.0.1")]
    assert [str(ip) for ip in cfg.requested] == ["10.1.0.7"]
