"""The dhcp IPAM plugin's daemon: DHCPv4 leases per (container, ifname).

``dhcp daemon`` (the plugin executable with the argument ``daemon``, as the
reference) listens on a unix socket; the plugin (plugins/dhcp.py) sends it
one JSON request per CNI call. Modules: ``packet`` (pure DHCP message
encode/decode), ``client`` (one lease: acquire, renew, release on a UDP
socket opened inside the container's netns), ``server`` (socket, lease
table, command line). May import plugins.core; nothing imports this package
on the plugin's exec path.
"""
