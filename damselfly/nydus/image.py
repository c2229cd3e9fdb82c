"""A nydus image as a registry holds it: one layer per data blob, then the bootstrap layer
(a gzip tar holding ``image/image.boot``), with the media types and annotations that
nydus-snapshotter looks for.

Kept apart from the converter so that a lazy mount, which only reads the bootstrap, starts
without loading the image builder.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import zlib
from typing import IO

from damselfly.core.oci import ImageRef
from damselfly.lib.units import format_size
from damselfly.nydus.layout import MAX_BOOTSTRAP_SIZE, check_bootstrap_size
from damselfly.registry.blocking import RegistryClient, RegistryError

NYDUS_BLOB_TYPE = "application/vnd.oci.image.layer.nydus.blob.v1"
BOOTSTRAP_LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
BLOB_ANNOTATION = "containerd.io/snapshot/nydus-blob"
BOOTSTRAP_ANNOTATION = "containerd.io/snapshot/nydus-bootstrap"
FS_VERSION_ANNOTATION = "containerd.io/snapshot/nydus-fs-version"
BOOTSTRAP_PATH = "image/image.boot"


def bootstrap_layer(bootstrap: bytes) -> tuple[bytes, str]:
    """The gzip tar holding image/image.boot, byte for byte the same for the same bootstrap; and its diff id."""
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("image")
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        info = tarfile.TarInfo(BOOTSTRAP_PATH)
        info.size, info.mode = len(bootstrap), 0o644
        tar.addfile(info, io.BytesIO(bootstrap))
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb", mtime=0) as gz:
        gz.write(plain.getvalue())
    return packed.getvalue(), "sha256:" + hashlib.sha256(plain.getvalue()).hexdigest()


# A bootstrap layer is a gzip tar of the bootstrap and a directory: headers, padding and
# tarfile's read-ahead take a few KiB past the bootstrap itself.
MAX_BOOTSTRAP_LAYER = MAX_BOOTSTRAP_SIZE + (1 << 20)


class _Capped:
    """A stream that fails once more than ``limit`` bytes are read from it: a small gzip layer
    must not inflate without end while tarfile skips through it."""

    def __init__(self, source: IO[bytes], limit: int) -> None:
        self.source = source
        self.limit = limit
        self.left = limit

    def read(self, size: int) -> bytes:
        data = self.source.read(size)
        self.left -= len(data)
        if self.left < 0:
            raise RegistryError(f"the bootstrap layer unpacks to more than {format_size(self.limit)}")
        return data


def extract_bootstrap(layer: bytes) -> bytes:
    """image/image.boot out of a bootstrap layer (a tar, gzipped or not), read no further than
    the bootstrap size limit allows."""
    plain = io.BytesIO(layer)
    source: IO[bytes] = gzip.GzipFile(fileobj=plain) if layer[:2] == b"\x1f\x8b" else plain
    try:
        with tarfile.open(fileobj=_Capped(source, MAX_BOOTSTRAP_LAYER), mode="r|") as tar:
            for member in tar:
                if member.name.lstrip("./") == BOOTSTRAP_PATH and member.isfile():
                    check_bootstrap_size(member.size)
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    return extracted.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise RegistryError(f"the bootstrap layer is not a readable tar: {error}") from None
    raise RegistryError(f"the bootstrap layer holds no {BOOTSTRAP_PATH}")


def fetch_bootstrap(ref: ImageRef, client: RegistryClient) -> bytes:
    """The bootstrap of a nydus image in a registry."""
    manifest, _body, _media = client.manifest(ref.repository, ref.reference)
    layer = find_bootstrap_layer(manifest)
    return extract_bootstrap(client.blob_bytes(ref.repository, layer["digest"], MAX_BOOTSTRAP_LAYER))


def find_bootstrap_layer(manifest: dict) -> dict:
    layers = manifest.get("layers", [])
    if not layers or layers[-1].get("annotations", {}).get(BOOTSTRAP_ANNOTATION) != "true":
        raise RegistryError("not a nydus image: its last layer is not annotated as a nydus bootstrap")
    return layers[-1]
