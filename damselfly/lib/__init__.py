"""Shared pieces used by every role: OCI names and digests, HTTP ranges, sizes."""
