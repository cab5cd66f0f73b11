"""The overlay-l3 lab's capture checks can fail: with the l3 network switched
back to the shared-L2 mode (the default), the "no ARP inside VXLAN" check sees
the ARP request flooded to the other node and fails, while the same lab in
l3 mode passes it (tests/test_netlab_labs.py runs the shipped file).
"""
from __future__ import annotations

import json
import os

import pytest

from tests.test_netlab_labs import REPO, lab_name, leftovers, netlab

pytestmark = pytest.mark.root

L3_CAPTURE = "l3: the same pings cross as unicast VXLAN to the known VTEP, no ARP inside"
L2_CAPTURE = "l2: ARP for a pod address is flooded to the other node inside VXLAN"


@pytest.mark.slow
def test_no_arp_check_fails_when_the_network_floods(tmp_path):
    text = open(os.path.join(REPO, "topologies", "overlay-l3.yaml")).read()
    assert text.count("    vxlanMode: l3\n") == 1
    name = lab_name()
    lab_dir = str(tmp_path / "lab")
    f = tmp_path / "overlay-l2-only.yaml"
    # the same lab, l3 network in the default mode; only the capture checks run
    body, checks = text.replace("    vxlanMode: l3\n", "").split("checks:\n")
    kept = [c for c in checks.split("\n  - ") if "type: capture" in c]
    f.write_text(body + "checks:\n  - " + "\n  - ".join(k.removeprefix("  - ") for k in kept) + "\n")
    try:
        p = netlab("up", str(f), "--name", name, "--lab-dir", lab_dir, "-q", "--json")
        report = json.loads(p.stdout)
        by_name = {c["name"]: c for c in report["checks"]}
        assert set(by_name) == {L2_CAPTURE, L3_CAPTURE}, by_name
        assert p.returncode != 0 and not report["ok"]
        assert by_name[L2_CAPTURE]["ok"], by_name[L2_CAPTURE]
        bad = by_name[L3_CAPTURE]
        assert not bad["ok"], bad
        # the failure rests on the capture: the pings were seen, and ARP inside VXLAN 53
        def count(layer: str) -> int:
            return int(bad["observed"].split(f" matching {layer}")[0].rsplit(" ", 1)[-1])
        assert count("ICMP") >= 4 and count("ARP") >= 1, bad
        assert os.path.getsize(bad["evidence"]) > 24
    finally:
        d = netlab("down", "--lab-dir", lab_dir)
    assert d.returncode == 0, d.stderr
    assert leftovers(name, lab_dir) == []
