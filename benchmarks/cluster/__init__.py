"""Cluster in a box: network namespaces on a bridge, links shaped with tc (issue 4, in progress)."""
