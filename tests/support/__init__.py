"""Helpers that start real servers (docker-registry, containerd, damselfly) for the tests."""
