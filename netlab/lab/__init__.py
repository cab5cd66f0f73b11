"""netlab.lab: building a lab and taking it down.

Owns the pipeline: the topology schema (``topology``, one error list for the
whole file, one small parser per section driven by its ``SECTIONS`` table;
``schema``: reading a mapping with its errors' places; ``topology_checks``:
the ``checks`` entries; ``scenario``: a broken-on-purpose lab's schema and
judge) ->
the plan as data (``plan``) -> applying it step by step, each step recorded in
the state file first (``build``; pods attached through cniruntime by
``pods``) -> a scenario's faults (``faults``) -> ``teardown`` of exactly what
the state file records. ``labs`` finds labs that are up, their plan again and
where their endpoints live.

May import: netlab.features, netlab.base, cniruntime, cninode (installing the
plugins, the lab's agent) and plugins. Never checks, debug or cli.
"""
