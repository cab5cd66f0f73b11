"""netlab.cli: the `netlab` command, verbs only.

Owns: the parser and entry point (``main``), one module per verb group
(``cmd_lab``: up/down/status/exec/verify; ``cmd_cni``: the cnitool-like
runtime verbs and install; ``cmd_debug`` and ``cmd_impair``: capture, trace,
graph, cni log, impair, watch; ``cmd_agent``: the node agent), the options
several verbs share (``common``), shell completion and the exit statuses
(``exitcodes``). A verb parses, calls into the packages below and prints.

May import anything below it: netlab.checks, netlab.debug, netlab.lab,
netlab.features, netlab.base, cniruntime, cninode, plugins.
"""
