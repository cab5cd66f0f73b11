"""netlab.debug: seeing what happened to packets in a lab.

Owns: captures inside a namespace (``capture``; pcap and pcapng writing in
``pcapng``/``pcapsink``), following one probe through every namespace it
crosses and explaining the outcome (the ``trace`` subpackage: probe,
capture, correlation, explanation), kernel drop reasons from the
``skb:kfree_skb`` tracepoint (``dropmon``) and the lab's inventory drawn as a
graph (``graph``).

May import: netlab.lab, netlab.features, netlab.base, cniruntime, plugins,
scapy. Never checks or cli (checks use these tools for their evidence).
"""
