"""Prometheus metrics of a peer's P2P side and upload server."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class PeerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.bytes = Counter("damselfly_p2p_bytes", "Blob bytes downloaded by source", ["source"], registry=r)
        self.pieces = Counter("damselfly_p2p_pieces", "Pieces downloaded by source", ["source"], registry=r)
        self.parents = Gauge("damselfly_p2p_parents", "Parents in use by downloads", registry=r)
        self.bad_parents = Counter("damselfly_p2p_bad_parents", "Parents dropped for bad data or errors",
                                   registry=r)
        self.piece_failures = Counter("damselfly_p2p_piece_digest_failures", "Pieces that failed their digest",
                                      registry=r)
        self.blob_digest_failures = Counter(
            "damselfly_p2p_blob_digest_failures", "Blobs whose pieces all matched their digests but the whole "
            "blob did not match its digest: nothing kept, the digests' sources reported", registry=r)
        self.seed_triggers_failed = Counter("damselfly_p2p_seed_triggers_failed",
                                            "Seed peers that did not accept this peer's trigger", registry=r)
        self.back_to_source = Counter("damselfly_p2p_back_to_source", "Downloads that went to the origin",
                                      ["reason"], registry=r)
        self.schedule_latency = Histogram("damselfly_p2p_schedule_seconds", "Time to get a first schedule",
                                          registry=r, buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5))
        self.uploaded = Counter("damselfly_upload_bytes", "Piece bytes sent to other peers", registry=r)
        self.uploads = Gauge("damselfly_upload_active", "Piece uploads in progress", registry=r)
        self.upload_refused = Counter("damselfly_upload_refused", "Piece requests refused", ["reason"], registry=r)
        self.uploads_abandoned = Counter("damselfly_upload_abandoned", "Piece uploads the asker stopped reading",
                                         registry=r)
