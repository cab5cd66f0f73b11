"""IP address management: the host-local plugin (ipam.host_local) and its parts."""
