"""The manager: clusters and their dynamic configuration, live membership of schedulers,
seed peers and peers, users, roles and tokens, and the console (see docs/manager.md).

A role: it imports the domain, settings, the registry client and utilities, never the
mirror, upload server, scheduler or the node.
"""
