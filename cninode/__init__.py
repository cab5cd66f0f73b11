"""cninode: what runs on a real node besides the plugins themselves.

Owns: the lean launcher every installed plugin executable calls
(``launcher``), the resident node agent that serves plugin calls from one
warm process (``agent``) and starting/stopping it (``agentctl``), writing the
executables into a CNI bin directory (``install``), and the Kubernetes
DaemonSet's installer and node sync (``kube_install``).

May import: the standard library, plugins and ipam (the plugin code the
launcher and the agent dispatch to), and the libraries the plugins use
(pyroute2, libnftables). Never netlab, never scapy or PyYAML: the node image
installs without them. The launcher imports only built-in modules at load.
"""
