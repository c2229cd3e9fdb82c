"""Damselfly: a registry mirror with a peer-to-peer backend for containerd and nydus."""

__version__ = "0.1.0"
