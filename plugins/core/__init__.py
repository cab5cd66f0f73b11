"""The shared CNI core: dispatch, errors, versions, results, config, delegation.

Everything in this package except ``netns`` and the plugin modules imports only
the standard library, so VERSION calls and input errors stay cheap.
May import: the standard library only (the bottom layer; the launcher and
the agent that call into it are cninode).
"""
