"""netlab.base: the ground floor every lab module stands on.

Owns: named network namespaces and running things in them (``namespaces``:
create/delete by exact name, ``run_in``, ``in_thread``, ``ipn``), the names
of a lab's namespaces and interfaces (``names``), rates and per-node address
slices (``units``), the lab state file (``state``: every resource recorded
before it is made) and lab-owned processes (``proc``).

May import: the standard library and plugins.core. Nothing else of netlab.
"""
