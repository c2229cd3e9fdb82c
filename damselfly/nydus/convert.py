"""Convert an OCI image in a registry to a nydus (RAFS v6) image and push it.

Each source layer becomes one data blob holding the chunks that layer adds (chunks any
earlier layer already stored are shared, not stored again); the merged tree becomes the
bootstrap, pushed last as a gzip tar holding ``image/image.boot``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tarfile
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator

import zstandard

from damselfly.core.oci import ImageRef
from damselfly.nydus.builder import BlobWriter, ChunkSettings, build_bootstrap
from damselfly.nydus.image import (BLOB_ANNOTATION, BOOTSTRAP_ANNOTATION, BOOTSTRAP_LAYER_TYPE, FS_VERSION_ANNOTATION,
                                   NYDUS_BLOB_TYPE, OCI_CONFIG_TYPE, OCI_MANIFEST_TYPE, bootstrap_layer)
from damselfly.nydus.layout import BlobEntry, ChunkRecord, FormatError
from damselfly.nydus.tree import LayerApplier, LayerError, new_root
from damselfly.registry.blocking import RegistryClient, RegistryError

log = logging.getLogger("damselfly.nydus")


@dataclass
class ConvertResult:
    manifest_digest: str
    blobs: list[BlobEntry]
    bootstrap_size: int
    source_bytes: int
    files: int
    chunks: int
    seconds: float


@contextmanager
def open_layer(path: Path, media_type: str) -> Iterator[tarfile.TarFile]:
    """A layer as a streaming tar, whatever its compression (gzip, zstd or none)."""
    with open(path, "rb") as raw:
        if "zstd" in media_type:
            with zstandard.ZstdDecompressor().stream_reader(raw) as plain:
                with tarfile.open(fileobj=plain, mode="r|") as tar:
                    yield tar
        else:
            with tarfile.open(fileobj=raw, mode="r|*") as tar:
                yield tar


def nydus_manifest(config: bytes, blobs: list[BlobEntry], layer: bytes) -> dict:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST_TYPE,
        "config": {"mediaType": OCI_CONFIG_TYPE, "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                   "size": len(config)},
        "layers": [
            *({"mediaType": NYDUS_BLOB_TYPE, "digest": f"sha256:{blob.blob_id}", "size": blob.compressed_size,
               "annotations": {BLOB_ANNOTATION: "true"}} for blob in blobs),
            {"mediaType": BOOTSTRAP_LAYER_TYPE, "digest": "sha256:" + hashlib.sha256(layer).hexdigest(),
             "size": len(layer), "annotations": {BOOTSTRAP_ANNOTATION: "true", FS_VERSION_ANNOTATION: "6"}},
        ],
    }


def nydus_config(source_config: bytes, blobs: list[BlobEntry], bootstrap_diff_id: str) -> bytes:
    """The source's config with diff ids for the new layers (a nydus blob is its own uncompressed form)."""
    config = json.loads(source_config)
    config["rootfs"] = {"type": "layers",
                        "diff_ids": [f"sha256:{blob.blob_id}" for blob in blobs] + [bootstrap_diff_id]}
    config.pop("history", None)
    return json.dumps(config, separators=(",", ":"), sort_keys=True).encode()


def convert(source: ImageRef, target: ImageRef, source_client: RegistryClient, target_client: RegistryClient,
            settings: ChunkSettings, work_dir: str | None = None,
            progress: Callable[[str, int, int], None] | None = None) -> ConvertResult:
    """Pull ``source`` layer by layer, build blobs and the bootstrap, push ``target``."""
    started = time.monotonic()
    manifest, _body, _media = source_client.manifest(source.repository, source.reference)
    if "config" not in manifest or "layers" not in manifest:
        raise RegistryError(f"{source} is not an image manifest (no config or layers)")
    config = source_client.blob_bytes(source.repository, manifest["config"]["digest"])
    root, known = new_root(), {}
    blobs: list[BlobEntry] = []
    records: list[ChunkRecord] = []
    files = 0
    source_bytes = 0
    layers = manifest.get("layers", [])
    with tempfile.TemporaryDirectory(prefix="damselfly-convert-", dir=work_dir) as scratch:
        work = Path(scratch)
        for number, layer in enumerate(layers, 1):
            if progress:
                progress(f"layer {number}/{len(layers)}", number - 1, len(layers))
            layer_path = source_client.fetch_blob(source.repository, layer["digest"], work / "layer")
            source_bytes += layer_path.stat().st_size
            blob_path = work / f"blob-{len(blobs)}"
            with open(blob_path, "wb") as out:
                writer = BlobWriter(out, len(blobs), settings, known)

                def store(node, data: IO[bytes]) -> None:
                    nonlocal files
                    files += 1
                    writer.add_file(node, data)  # noqa: B023 - store is called only in this iteration

                try:
                    with open_layer(layer_path, layer.get("mediaType", "")) as tar:
                        LayerApplier(root, store).apply(tar)
                except (tarfile.TarError, EOFError, zstandard.ZstdError, ValueError) as error:
                    if isinstance(error, (LayerError, FormatError)):
                        raise
                    raise LayerError(f"layer {number} ({layer['digest'][:19]}) is not a readable tar: "
                                     f"{error}") from None
                entry = writer.finish() if writer.records else None
            layer_path.unlink()
            if entry is None:
                log.info("layer %d adds no new file data; no blob for it", number)
                continue
            blobs.append(entry)
            records.extend(writer.records)
            blob_path.rename(work / entry.blob_id)
            log.info("layer %d: blob %s, %d chunks, %d bytes", number, entry.blob_id[:12], entry.chunk_count,
                     entry.compressed_size)
        bootstrap = build_bootstrap(root, blobs, settings, records)
        layer_bytes, diff_id = bootstrap_layer(bootstrap)
        new_config = nydus_config(config, blobs, diff_id)
        for number, blob in enumerate(blobs, 1):
            if progress:
                progress(f"push blob {number}/{len(blobs)}", number - 1, len(blobs))
            target_client.push_blob(target.repository, f"sha256:{blob.blob_id}", work / blob.blob_id)
    target_client.push_blob(target.repository, "sha256:" + hashlib.sha256(layer_bytes).hexdigest(), layer_bytes)
    target_client.push_blob(target.repository, "sha256:" + hashlib.sha256(new_config).hexdigest(), new_config)
    body = json.dumps(nydus_manifest(new_config, blobs, layer_bytes), indent=2).encode()
    digest = target_client.push_manifest(target.repository, target.reference, body, OCI_MANIFEST_TYPE)
    return ConvertResult(manifest_digest=digest, blobs=blobs, bootstrap_size=len(bootstrap),
                         source_bytes=source_bytes, files=files, chunks=len(records),
                         seconds=time.monotonic() - started)
