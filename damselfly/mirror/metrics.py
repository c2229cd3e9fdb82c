"""Prometheus metrics of the mirror, one registry per process role."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics

from damselfly.storage.store import BlobStore

disable_created_metrics()  # the *_created series only add noise to every scrape


class MirrorMetrics:
    """Counters the proxy and the blob service update; implements BlobEvents."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("damselfly_proxy_requests", "Requests answered by the mirror",
                                ["kind", "method", "code"], registry=r)
        self.served_bytes = Counter("damselfly_proxy_served_bytes", "Blob bytes sent to clients",
                                    ["source"], registry=r)
        self.upstream_bytes = Counter("damselfly_upstream_bytes", "Blob bytes downloaded from upstream registries",
                                      registry=r)
        self.cache_hits = Counter("damselfly_cache_hits", "Blob requests answered from the store or a download in flight",
                                  registry=r)
        self.cache_misses = Counter("damselfly_cache_misses", "Blob requests that started a download", registry=r)
        self.download_failures = Counter("damselfly_download_failures", "Blob downloads that failed, nothing kept",
                                         ["reason"], registry=r)
        self.uncached_streams = Counter("damselfly_uncached_streams", "Blob responses sent from the source without "
                                        "being stored: disk_full (the store's disk is full), store_full (no room left "
                                        "under the quota beside blobs in use)", ["reason"], registry=r)
        self.access_checks = Counter("damselfly_access_checks", "Upstream confirmations of a caller's access to a "
                                     "protected cached blob", ["result"], registry=r)
        self.manifests = Counter("damselfly_manifests_kept_served", "Manifests answered from what this node keeps: "
                                 "kept (by digest, the registry not asked), stale (a tag's last resolution while its "
                                 "registry fails), cluster (a tag as a seed last resolved it, while its registry fails), "
                                 "refused (registry failing, caller not confirmed for a private one)",
                                 ["answer"], registry=r)
        self.active_streams = Gauge("damselfly_proxy_active_streams", "Blob responses being sent", registry=r)
        self.evictions = Counter("damselfly_store_evictions", "Blobs evicted to keep the cache under quota", registry=r)
        self.store_bytes = Gauge("damselfly_store_used_bytes", "Bytes stored or reserved in the blob store", registry=r)
        self.store_quota = Gauge("damselfly_store_quota_bytes", "Disk quota of the blob store", registry=r)
        self.store_blobs = Gauge("damselfly_store_blobs", "Blobs in the store", registry=r)

    def watch_store(self, store: BlobStore) -> None:
        self.store_bytes.set_function(lambda: store.used_bytes)
        self.store_blobs.set_function(lambda: store.blob_count)
        self.store_quota.set(store.quota)

    # BlobEvents
    def cache_hit(self) -> None:
        self.cache_hits.inc()

    def cache_miss(self) -> None:
        self.cache_misses.inc()

    def source_bytes(self, n: int) -> None:
        self.upstream_bytes.inc(n)

    def uncached_stream(self, reason: str) -> None:
        self.uncached_streams.labels(reason).inc()

    def download_failed(self, reason: str) -> None:
        kind = "digest_mismatch" if reason.startswith("digest mismatch") else "source_error"
        self.download_failures.labels(kind).inc()
