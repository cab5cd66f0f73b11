"""Netlink spoken with the standard library only (``socket`` + ``struct``), no pyroute2.

``rtnl``: the rtnetlink requests of the bridge ADD path (links, veth pairs,
bridge ports, addresses, routes, event-driven waits) on one socket per
network namespace (docs/adr/0036). Imports only ``plugins.core`` and
``plugins.net.link`` (for ``LinkInfo``, ``Addr`` and the error mapping).
"""
