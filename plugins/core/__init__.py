"""The shared CNI core: dispatch, errors, versions, results, config, delegation.

Everything in this package except ``netns`` and the plugin modules imports only
the standard library, so VERSION calls and input errors stay cheap.
"""
