"""Checks that measure traffic rather than reachability: ``bandwidth`` (a shaped
pod's rate, iperf3 corroborated by wire counters), ``throughput`` (iperf3 with N
streams, overlay vs routed), ``loss`` (a reach check's loss figure against an
impairment), and what they share: ``iperf`` (server, client under capture,
receiver summary) and ``bucket`` (draining a runtime's large token bucket first).

May import: netlab.checks.common and what netlab.checks may import.
"""
