"""The netlink boundary: pyroute2's NetlinkError comes out as an OSError subclass."""
from __future__ import annotations

import errno

import pytest

from plugins.core import netns as nsmod
from plugins.core.errors import IO_FAILURE, as_cni_error
from plugins.net import link

pytestmark = pytest.mark.root


def test_kernel_refusal_is_an_oserror_with_errno(node):
    with nsmod.entered(node.path):
        with link.open_iproute() as ipr:
            assert ipr.link_lookup(ifname="lo")            # calls pass through
            with pytest.raises(OSError) as info:
                ipr.link("get", index=987654)
    e = info.value
    assert isinstance(e, link.NetlinkFailure)
    assert e.errno == errno.ENODEV and e.code == errno.ENODEV
    assert link.netlink_errno(e) == errno.ENODEV
    assert as_cni_error(e).code == IO_FAILURE


def test_no_kernel_errno_becomes_eio():
    from pyroute2.netlink.exceptions import NetlinkDumpInterrupted
    e = link.netlink_failure(NetlinkDumpInterrupted())
    assert isinstance(e, OSError) and e.errno == errno.EIO
