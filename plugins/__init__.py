"""CNI plugins: the shared core (plugins.core), kernel helpers (plugins.net) and
one module per plugin.

May import: plugins.core, ipam (host-local in-process), pyroute2, libnftables.
Never cniruntime, cninode or netlab.
"""
