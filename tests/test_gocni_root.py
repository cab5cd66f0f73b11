"""containerd's capability args, byte for byte as go-cni marshals them (untagged
structs: HostPort, IngressRate, ...), through netlab's libcni-style runtime
into bridge + portmap + bandwidth: the host port forwards, the pod is shaped
(TBF on the veth and on the IFB, in a throwaway node namespace), DEL removes
it all; and the Go reference plugins, given the same bytes, end in the same state."""
from __future__ import annotations

import json

import pytest

from cniruntime.runtime import Runtime
from tests.test_portmap_chain_runtime import (HAVE_REF, REF, UP_CLIENT, UP_NODE, conflist,  # noqa: F401
                                              observe, ours, uplink)

pytestmark = [pytest.mark.root, pytest.mark.e2e]

# json.Marshal of go-cni's []PortMapping and BandWidth (types.go); HostIP has no omitempty.
GOCNI_CAPS = json.loads(
    '{"portMappings":[{"HostPort":8080,"ContainerPort":80,"Protocol":"tcp","HostIP":""},'
    '{"HostPort":8053,"ContainerPort":53,"Protocol":"udp","HostIP":""}],'
    '"bandwidth":{"IngressRate":40000000,"IngressBurst":4000000,'
    '"EgressRate":30000000,"EgressBurst":3000000}}')


def _run(tmp_path, make_netns, bindir, label):
    node, client, pod = make_netns("gc" + label[:3]), make_netns("gccli"), make_netns("gcpod")
    uplink(node, client)
    rt = Runtime([bindir], cache_dir=str(tmp_path / label / "cache"), host_netns=node.path)
    return observe(node, client, pod, rt, conflist(tmp_path / label, name="gocni"), "gocni1",
                   GOCNI_CAPS)


def test_gocni_payload_forwards_and_shapes(tmp_path, make_netns, ours):  # noqa: F811
    obs, checked = _run(tmp_path, make_netns, ours, "ours")
    assert obs["client_tcp"] == f"pod {UP_CLIENT}", obs        # HostPort 8080 -> 80
    assert obs["client_udp"] == f"dns {UP_CLIENT}", obs        # HostPort 8053 -> 53/udp
    assert obs["veth_tbf_bits"] == [40_000_000], obs           # IngressRate on the veth
    assert obs["ifb_tbf_bits"] == [[30_000_000]], obs          # EgressRate on the IFB
    assert obs["after_del"] == {"veths": [], "ifbs": [], "nat_rules": [], "client_tcp": ""}
    assert checked == "ok"


@pytest.mark.skipif(not HAVE_REF, reason="reference plugins not in /usr/lib/cni")
def test_gocni_payload_same_state_as_reference(tmp_path, make_netns, ours):  # noqa: F811
    seen = {label: _run(tmp_path, make_netns, path, label)[0]
            for label, path in (("ours", ours), ("reference", REF))}
    assert seen["ours"] == seen["reference"], json.dumps(seen, indent=1)
    assert seen["reference"]["veth_tbf_bits"] == [40_000_000]   # Go takes these keys too
