"""host-local without root and without disk: config validation, the allocator
(round robin, requested addresses, replay, exhaustion, rollback) and GC
selection, over the in-memory fake store."""
from __future__ import annotations

import ipaddress

import pytest

from ipam import allocator, config
from ipam.ranges import parse_range, parse_range_set
from ipam.store import MemoryStore, Owner
from plugins.core.config import parse_netconf
from plugins.core.errors import (ADDRESS_UNAVAILABLE, CNIError, INVALID_ENV,
                                 INVALID_NETWORK_CONFIG, POOL_EXHAUSTED)

ip = ipaddress.ip_address
A = Owner("ctr-a", "eth0")
B = Owner("ctr-b", "eth0")


def load(ipam: dict, version: str = "1.0.0", cni_args: dict | None = None, **top):
    raw = {"cniVersion": version, "name": "net", "type": "bridge",
           "ipam": dict({"type": "host-local"}, **ipam), **top}
    return config.load(parse_netconf(raw), cni_args or {})


def err(fn, *a, **kw) -> CNIError:
    with pytest.raises(CNIError) as ei:
        fn(*a, **kw)
    return ei.value


# ---- ranges and config -------------------------------------------------------

def test_range_defaults_v4_and_v6():
    r = parse_range({"subnet": "10.1.0.0/24"}, "r")
    assert (str(r.gateway), r.addr(r.start), r.addr(r.end)) == \
        (ip("10.1.0.1").exploded, ip("10.1.0.1"), ip("10.1.0.254"))
    assert r.capacity() == 253                      # .1 (gateway) .. .254, minus gateway
    r6 = parse_range({"subnet": "fd00::/120"}, "r")
    assert r6.addr(r6.end) == ip("fd00::ff") and str(r6.gateway) == "fd00::1"


@pytest.mark.parametrize("rng, field", [
    ({"subnet": "10.1.0.0/24", "gateway": "10.2.0.1"}, "gateway"),      # reference accepts this
    ({"subnet": "10.1.0.0/24", "rangeStart": "10.1.1.5"}, "rangeStart"),
    ({"subnet": "10.1.0.0/24", "rangeEnd": "10.0.0.5"}, "rangeEnd"),
    ({"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.50", "rangeEnd": "10.1.0.40"}, "rangeStart"),
    ({"subnet": "10.1.0.5/24"}, "subnet"),                               # host bits
    ({"subnet": "10.1.0.0/31"}, "subnet"),
    ({"subnet": "10.1.0.0/32"}, "subnet"),
    ({"subnet": "fd00::/127"}, "subnet"),
    ({"subnet": "fd00::/128"}, "subnet"),
    ({"subnet": "10.1.0.0"}, "subnet"),
    ({"subnet": "nonsense/24"}, "subnet"),
    ({"subnet": "fd00::/64", "gateway": "10.1.0.1"}, "gateway"),
    ({}, "subnet"),
])
def test_range_validation_names_the_field(rng, field):
    e = err(load, {"ranges": [[rng]]})
    assert e.code == INVALID_NETWORK_CONFIG
    assert f"ipam.ranges[0][0].{field}" in e.msg


def test_overlaps_and_families_rejected():
    e = err(load, {"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "10.1.0.0/25"}]]})
    assert e.code == 7 and "overlaps" in e.msg
    e = err(load, {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.1.0.128/25"}]]})
    assert e.code == 7 and "ipam.ranges[1]" in e.msg and "overlaps" in e.msg
    e = err(load, {"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "fd00::/64"}]]})
    assert e.code == 7 and "families" in e.msg
    e = err(load, {"ranges": []})
    assert e.code == 7 and "no IP ranges" in e.msg
    e = err(load, {"ranges": [[]]})
    assert e.code == 7 and "ipam.ranges[0]" in e.msg
    # disjoint ranges of one subnet are fine
    cfg = load({"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.20"},
                            {"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.30", "rangeEnd": "10.1.0.40"}]]})
    assert len(cfg.range_sets[0]) == 2


def test_legacy_form_is_prepended_and_iprange_capability_overrides():
    cfg = load({"subnet": "10.5.0.0/24", "rangeStart": "10.5.0.10",
                "ranges": [[{"subnet": "fd00::/64"}]]})
    assert [rs[0].version for rs in cfg.range_sets] == [4, 6]
    assert cfg.range_sets[0][0].addr(cfg.range_sets[0][0].start) == ip("10.5.0.10")
    cfg = load({"ranges": [[{"subnet": "10.5.0.0/24"}]]},
               runtimeConfig={"ipRanges": [[{"subnet": "10.7.0.0/24"}]]})
    assert [str(rs[0].subnet) for rs in cfg.range_sets] == ["10.7.0.0/24"]
    e = err(load, {}, runtimeConfig={"ipRanges": [[{"subnet": "10.7.0.0/33"}]]})
    assert "runtimeConfig.ipRanges[0][0].subnet" in e.msg


def test_old_versions_allow_one_address_per_family():
    two_v4 = {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.2.0.0/24"}]]}
    assert err(load, two_v4, version="0.2.0").code == 7
    assert len(load(two_v4, version="0.3.1").range_sets) == 2


def test_requested_ips_from_all_sources():
    cfg = load({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}]]},
               cni_args={"IP": "10.1.0.9", "IgnoreUnknown": "1", "K8S_POD_NAME": "x"},
               args={"cni": {"ips": ["fd00::9"]}}, runtimeConfig={"ips": ["10.1.0.9/24"]})
    assert cfg.requested == [ip("10.1.0.9"), ip("fd00::9")]
    e = err(load, {"ranges": [[{"subnet": "10.1.0.0/24"}]]}, cni_args={"IP": "10.1.0.999"})
    assert e.code == INVALID_ENV
    e = err(load, {"ranges": [[{"subnet": "10.1.0.0/24"}]]}, cni_args={"FOO": "1"})
    assert e.code == INVALID_ENV and "FOO" in e.details
    e = err(load, {"ranges": [[{"subnet": "10.1.0.0/24"}]]}, runtimeConfig={"ips": ["x"]})
    assert e.code == 7 and "runtimeConfig.ips[0]" in e.msg


def test_routes_dns_datadir(tmp_path):
    rc = tmp_path / "resolv.conf"
    rc.write_text("# c\nnameserver 10.0.0.53\nnameserver fd00::53\ndomain lab\n"
                  "search a.lab b.lab\noptions ndots:2 edns0\nbogus\n")
    cfg = load({"ranges": [[{"subnet": "10.1.0.0/24"}]], "resolvConf": str(rc),
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.0.254"}],
                "dataDir": str(tmp_path)})
    assert [(r.dst, r.gw) for r in cfg.routes] == [("0.0.0.0/0", ""), ("192.168.0.0/16", "10.1.0.254")]
    dns = config.parse_resolv_conf(cfg.resolv_conf)
    assert dns.nameservers == ["10.0.0.53", "fd00::53"] and dns.domain == "lab"
    assert dns.search == ["a.lab", "b.lab"] and dns.options == ["ndots:2", "edns0"]
    assert err(load, {"ranges": [[{"subnet": "10.1.0.0/24"}]], "routes": [{"gw": "1.2.3.4"}]}).code == 7
    assert err(load, {"ranges": [[{"subnet": "10.1.0.0/24"}]], "dataDir": "rel/dir"}).code == 7


def test_valid_attachments_keys():
    assert config.valid_attachments({"cni.dev/valid-attachments": [
        {"containerID": "a", "ifname": "eth0"}]}) == {("a", "eth0")}
    assert config.valid_attachments({"cni.dev/attachments": []}) == set()
    assert err(config.valid_attachments, {}).code == 7            # never "nothing is valid"
    assert err(config.valid_attachments,
               {"cni.dev/valid-attachments": [{"containerID": 1}]}).code == 7


# ---- allocator -----------------------------------------------------------------

def sets(*ranges_lists):
    return [parse_range_set(rl, f"s{i}") for i, rl in enumerate(ranges_lists)]


def alloc(store, ss, owner, requested=()):
    with store.session():
        return allocator.allocate(store, ss, owner, list(requested))


def test_round_robin_skips_gateway_and_continues_after_last_reserved():
    st = MemoryStore()
    ss = sets([{"subnet": "10.1.0.0/29", "gateway": "10.1.0.3"}])   # .1-.6, gw .3
    got = [str(alloc(st, ss, Owner(f"c{i}", "eth0"))[0].ip) for i in range(5)]
    assert got == ["10.1.0.1", "10.1.0.2", "10.1.0.4", "10.1.0.5", "10.1.0.6"]
    with st.session():
        allocator.release(st, Owner("c1", "eth0"))                  # frees .2
    assert str(alloc(st, ss, Owner("c9", "eth0"))[0].ip) == "10.1.0.2"   # wraps around
    e = err(alloc, st, ss, Owner("c10", "eth0"))
    assert e.code == POOL_EXHAUSTED and "10.1.0.1-10.1.0.6" in e.msg


def test_round_robin_does_not_reuse_a_just_released_address():
    st = MemoryStore()
    ss = sets([{"subnet": "10.1.0.0/24"}])
    first = alloc(st, ss, A)[0].ip
    with st.session():
        allocator.release(st, A)
    assert alloc(st, ss, B)[0].ip == first + 1


def test_multi_range_set_walks_ranges_in_order():
    st = MemoryStore()
    ss = sets([{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.11"},
               {"subnet": "10.2.0.0/24", "rangeStart": "10.2.0.10", "rangeEnd": "10.2.0.11"}])
    got = [alloc(st, ss, Owner(f"c{i}", "e"))[0].cidr for i in range(4)]
    assert got == ["10.1.0.10/24", "10.1.0.11/24", "10.2.0.10/24", "10.2.0.11/24"]
    assert err(alloc, st, ss, Owner("x", "e")).code == POOL_EXHAUSTED


def test_last_reserved_outside_the_set_starts_at_range_start():
    st = MemoryStore()
    st.last[0] = ip("192.168.9.9")
    ss = sets([{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.100"}])
    assert str(alloc(st, ss, A)[0].ip) == "10.1.0.100"


def test_dual_stack_one_address_per_set():
    st = MemoryStore()
    ss = sets([{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/120"}])
    got = alloc(st, ss, A)
    assert [(a.cidr, a.gateway) for a in got] == [("10.1.0.2/24", "10.1.0.1"), ("fd00::2/120", "fd00::1")]


def test_requested_addresses():
    st = MemoryStore()
    ss = sets([{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/120"}])
    got = alloc(st, ss, A, [ip("fd00::77"), ip("10.1.0.77")])
    assert [str(a.ip) for a in got] == ["10.1.0.77", "fd00::77"]
    # taken by someone else
    e = err(alloc, st, ss, B, [ip("10.1.0.77")])
    assert e.code == ADDRESS_UNAVAILABLE and "ctr-a" in e.msg
    # the gateway
    e = err(alloc, st, ss, B, [ip("10.1.0.1")])
    assert e.code == ADDRESS_UNAVAILABLE and "gateway" in e.msg
    # out of every range; two in one set
    assert err(alloc, st, ss, B, [ip("10.9.0.1")]).code == ADDRESS_UNAVAILABLE
    assert err(alloc, st, ss, B, [ip("10.1.0.5"), ip("10.1.0.6")]).code == ADDRESS_UNAVAILABLE
    # none of the failures left anything for B behind
    assert st.find(B) == []
    assert set(st.ips) == {ip("10.1.0.77"), ip("fd00::77")}


def test_failure_in_a_later_set_releases_earlier_sets():
    st = MemoryStore()
    ss = sets([{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/120"}])
    alloc(st, ss, B, [ip("fd00::5")])
    e = err(alloc, st, ss, A, [ip("fd00::5")])
    assert e.code == ADDRESS_UNAVAILABLE
    assert st.find(A) == [] and len(st.ips) == 2


def test_replay_is_idempotent_and_a_different_request_is_a_duplicate():
    st = MemoryStore()
    ss = sets([{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/120"}])
    first = alloc(st, ss, A)
    again = alloc(st, ss, A)
    assert [a.ip for a in again] == [a.ip for a in first] and not any(a.new for a in again)
    assert len(st.ips) == 2
    same_req = alloc(st, ss, A, [first[0].ip])
    assert same_req[0].ip == first[0].ip
    e = err(alloc, st, ss, A, [ip("10.1.0.200")])
    assert e.code == ADDRESS_UNAVAILABLE and "duplicate allocation" in e.msg
    assert len(st.ips) == 2                       # nothing new kept
    # another interface of the same container is a different attachment
    other = alloc(st, ss, Owner("ctr-a", "net1"))
    assert {a.ip for a in other}.isdisjoint({a.ip for a in first})


def test_partial_holding_allocates_only_the_missing_set():
    st = MemoryStore()
    ss1 = sets([{"subnet": "10.1.0.0/24"}])
    ss2 = sets([{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/120"}])
    a = alloc(st, ss1, A)[0].ip
    got = alloc(st, ss2, A)
    assert got[0].ip == a and not got[0].new and got[1].new


def test_release_is_idempotent_and_legacy_files_match_by_container_id():
    st = MemoryStore()
    st.ips[ip("10.1.0.9")] = Owner("old", "")          # written by an ancient version
    with st.session():
        assert allocator.release(st, Owner("old", "eth0")) == [ip("10.1.0.9")]
        assert allocator.release(st, Owner("old", "eth0")) == []


def test_gc_selection():
    res = {ip("10.1.0.2"): Owner("a", "eth0"), ip("10.1.0.3"): Owner("a", "eth1"),
           ip("10.1.0.4"): Owner("b", "eth0"), ip("10.1.0.5"): Owner("b", ""),
           ip("10.1.0.6"): Owner("c", "")}
    gone = allocator.gc_select(res, {("a", "eth0"), ("b", "eth9")})
    assert gone == [ip("10.1.0.3"), ip("10.1.0.4"), ip("10.1.0.6")]
    assert len(allocator.gc_select(res, set())) == 5


def test_free_in_set_counts_only_the_sets_addresses():
    ss = sets([{"subnet": "10.1.0.0/29"}])                # .1-.6 with gw .1 -> 5
    assert allocator.free_in_set(ss[0], []) == 5
    assert allocator.free_in_set(ss[0], [ip(f"10.1.0.{i}") for i in range(2, 7)]) == 0
    assert allocator.free_in_set(ss[0], [ip("10.9.0.2"), ip("fd00::2")]) == 5


def test_handlers_over_the_fake_store(monkeypatch):
    """The plugin module's handlers with the store swapped for the fake."""
    from ipam import host_local
    from plugins.core.skel import Call, CmdArgs
    st = MemoryStore()
    monkeypatch.setattr(host_local, "store_factory", lambda data_dir, name: st)
    raw = {"cniVersion": "1.1.0", "name": "net", "type": "bridge",
           "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/30"}]]}}

    def call(cmd, cid="a", extra=None):
        conf = parse_netconf(dict(raw, **(extra or {})))
        return Call(CmdArgs(command=cmd, container_id=cid, ifname="eth0", netns="/x"), conf)

    host_local.status(call("STATUS"))
    res = host_local.add(call("ADD"))                     # a /30 has one address: .2
    assert [i.address for i in res.ips] == ["10.1.0.2/30"]
    e = err(host_local.add, call("ADD", cid="b"))
    assert e.code == POOL_EXHAUSTED
    e = err(host_local.status, call("STATUS"))
    assert e.code == 50 and "exhausted" in e.msg
    host_local.gc(call("GC", extra={"cni.dev/valid-attachments": []}))
    assert st.ips == {}
    host_local.status(call("STATUS"))
    st.unwritable = "read-only file system"
    e = err(host_local.status, call("STATUS"))
    assert e.code == 50 and "read-only" in e.msg


def test_allocation_fills_every_set_exactly_once_randomised():
    """For random multi-range sets, gateways and pre-reservations, allocating
    until exhaustion hands out every free address once and never a gateway."""
    import random
    rnd = random.Random(7)
    for _ in range(40):
        ranges = []
        for k in range(rnd.randint(1, 3)):
            base = f"10.{k}.0"
            lo = rnd.randint(1, 20)
            hi = rnd.randint(lo, 30)
            r = {"subnet": f"{base}.0/27", "rangeStart": f"{base}.{lo}", "rangeEnd": f"{base}.{hi}"}
            if rnd.random() < 0.5:
                r["gateway"] = f"{base}.{rnd.randint(1, 30)}"
            ranges.append(r)
        ss = sets(ranges)
        st = MemoryStore()
        pool = [r.addr(v) for r in ss[0] for v in range(r.start, r.end + 1) if v != r.gw_int]
        for a in rnd.sample(pool, rnd.randint(0, len(pool))):
            st.ips[a] = Owner("pre", "x")
        if rnd.random() < 0.5 and pool:
            st.last[0] = rnd.choice(pool)
        free = set(pool) - set(st.ips)
        got = []
        for i in range(len(free)):
            got.append(alloc(st, ss, Owner(f"c{i}", "e"))[0].ip)
        assert sorted(got) == sorted(free)
        assert err(alloc, st, ss, Owner("last", "e")).code == POOL_EXHAUSTED


def test_long_taken_run_switches_to_one_listing():
    st = MemoryStore()
    ss = sets([{"subnet": "10.1.0.0/24"}])
    for v in range(2, 202):
        st.ips[ip(f"10.1.0.{v}")] = Owner("pre", "x")
    st.last[0] = ip("10.1.0.1")
    assert str(alloc(st, ss, A)[0].ip) == "10.1.0.202"
    assert st.reserve_calls == allocator.PROBES_BEFORE_LISTING + 1


def test_both_stores_satisfy_the_store_protocol(tmp_path):
    from ipam.protocol import Store
    from ipam.store import DiskStore, MemoryStore
    assert isinstance(MemoryStore(), Store)
    assert isinstance(DiskStore(str(tmp_path), "net"), Store)
    assert not isinstance(object(), Store)
