"""Shared fixtures: throwaway namespaces (always deleted), root gating, installs."""
from __future__ import annotations

import itertools
import os
import secrets
import shutil

import pytest

from netlab.base import namespaces as nsutil

IS_ROOT = os.geteuid() == 0
HAVE_IP = shutil.which("ip") is not None
_counter = itertools.count()
RUN_TAG = secrets.token_hex(2)


@pytest.fixture(scope="session", autouse=True)
def private_run_dir(tmp_path_factory):
    """Plugins keep node lock files in $CNILAB_RUN_DIR (default /run/cnilab): the
    suite uses a directory of its own so it leaves nothing in /run."""
    old = os.environ.get("CNILAB_RUN_DIR")
    os.environ["CNILAB_RUN_DIR"] = str(tmp_path_factory.mktemp("cnilab-run"))
    yield
    if old is None:
        os.environ.pop("CNILAB_RUN_DIR", None)
    else:
        os.environ["CNILAB_RUN_DIR"] = old


@pytest.fixture(scope="session", autouse=True)
def root_namespace_untouched():
    """The whole suite must leave the root namespace exactly as it found it."""
    if not (IS_ROOT and HAVE_IP):
        yield
        return
    from tests import rootns_guard
    before = rootns_guard.snapshot()
    yield
    changes = rootns_guard.diff(before, rootns_guard.snapshot())
    if changes:
        pytest.fail("tests changed the root network namespace:\n  " + "\n  ".join(changes[:50]))


# `make test` runs the suite on several pytest-xdist workers (--dist loadgroup).
# Tests are independent (unique names, own namespaces), with two exceptions that
# share one worker each (a group runs its tests one after another):
# - modules whose module-scoped fixture builds a lab or starts containerd: the
#   fixture is built once, not once per worker;
# - real engines (containerd, podman): libcni's cache dir /var/lib/cni is the
#   one place they share, and each removes it when it made it and it is empty.
ONE_WORKER_PER_MODULE = {"test_debug_tools", "test_kerneldebug_root", "test_bad_input",
                         "test_portmap_chain_runtime"}
REAL_ENGINES = {"test_containerd", "test_netlab_containerd_lab", "test_podman",
                "test_podman_conflists"}


def xdist_group_of(module: str, nodeid: str) -> str | None:
    if module in REAL_ENGINES or "containerd.yaml" in nodeid:
        return "real-engines"
    if module in ONE_WORKER_PER_MODULE:
        return module
    return None


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs root and iproute2 to create network namespaces")
    for item in items:
        if "root" in item.keywords and not (IS_ROOT and HAVE_IP):
            item.add_marker(skip)
        group = xdist_group_of(item.module.__name__.rpartition(".")[2], item.nodeid)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


def unique_name(prefix: str) -> str:
    """A namespace or lab name unique to this run and process."""
    return f"{prefix}-{RUN_TAG}{os.getpid() % 10000}-{next(_counter)}"


class NS:
    def __init__(self, name: str) -> None:
        self.name = name
        self.path = nsutil.path(name)

    def run(self, *argv: str, check: bool = True, timeout: float = 60):
        return nsutil.run(self.name, argv, check=check, timeout=timeout)

    def wire(self, other: "NS", ifname: str, peer_ifname: str | None = None,
             addrs: tuple[str, ...] = (), peer_addrs: tuple[str, ...] = ()) -> None:
        """A veth from this namespace (``ifname``) to ``other`` (``peer_ifname``,
        default the same name), with addresses (IPv6 without DAD), both ends up."""
        peer_ifname = peer_ifname or ifname
        self.run("ip", "link", "add", ifname, "type", "veth", "peer", "name", peer_ifname,
                 "netns", other.name)
        for ns, dev, cidrs in ((self, ifname, addrs), (other, peer_ifname, peer_addrs)):
            for cidr in cidrs:
                extra = ("nodad",) if ":" in cidr else ()
                ns.run("ip", "addr", "add", cidr, "dev", dev, *extra)
            ns.run("ip", "link", "set", dev, "up")

    def __repr__(self) -> str:
        return f"NS({self.name})"


@pytest.fixture
def make_netns():
    """Factory: make_netns('node') -> NS; every namespace made is deleted afterwards."""
    made: list[str] = []

    def make(prefix: str = "t", *, loopback_up: bool = True) -> NS:
        name = unique_name(prefix)
        nsutil.create(name, loopback_up=loopback_up)
        made.append(name)
        return NS(name)

    try:
        yield make
    finally:
        for name in reversed(made):
            nsutil.delete(name)


@pytest.fixture
def node(make_netns) -> NS:
    return make_netns("node")


@pytest.fixture
def pod(make_netns) -> NS:
    return make_netns("pod")


@pytest.fixture
def short_tmp_path():
    """A fresh directory with a short path (removed afterwards), for labs whose
    unix sockets (containerd's, 108 bytes at most) live in the lab directory:
    pytest's tmp_path under an xdist worker (``.../popen-gwN/<test name>N/``)
    can be too long for them."""
    import pathlib
    import tempfile
    d = tempfile.mkdtemp(prefix="nlt-")
    try:
        yield pathlib.Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def installed_plugins(tmp_path_factory) -> str:
    """A tmp dir holding the five plugin executables, as `netlab cni install DIR` writes them."""
    from cninode.install import install
    d = tmp_path_factory.mktemp("cni-bin")
    install(str(d))
    return str(d)
