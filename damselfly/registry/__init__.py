"""The one registry client: pure protocol rules (rules.py) under a blocking face for the
nydus commands (blocking.py) and an async face for the mirror and the seed (client.py).

It sits below the mirror, the P2P network and the nydus commands, and imports none of
them. Nothing is imported here: a nydus mount imports the blocking face without aiohttp.
"""
