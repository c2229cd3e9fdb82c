"""Real servers for the tests and the benchmarks: docker-registry, containerd, damselfly daemons and
schedulers, the nydus mount service, tinyproxy, a test TLS CA, OCI images and wait/process helpers.

The direction of imports is one way: testkit imports neither ``tests`` nor ``benchmarks``;
``benchmarks`` imports testkit (never ``tests``); ``tests`` may import testkit and benchmarks.
"""
