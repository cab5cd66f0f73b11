"""netlab.features: what a topology can ask for besides nodes, networks and pods.

Owns, one module each: Kubernetes Services on nftables (``services``),
NetworkPolicy compiled to nftables (``policy``), both synced into the nodes
(``k8s``), BGP-routed pod networks with BIRD (``bgp``), DHCP IPAM's server
and daemon (``dhcp``), the lab DNS server (``dns``) and link impairments
(``impair``). Each holds its topology section's parsing, its plan steps and
how it is applied or removed.

May import: netlab.base, cniruntime, plugins (nftables, tc, sysctl helpers)
and each other downward (k8s -> policy -> services). Never netlab.lab (the
topology schema calls into these modules, not the other way round).
"""
