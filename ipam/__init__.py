"""IP address management: the host-local plugin (ipam.host_local) and its parts:
ranges, the allocator, the Store protocol (ipam.protocol) and its disk and
in-memory stores. May import: plugins.core and the standard library.
"""
