"""Test images built on the spot: busybox-static plus layers of random data."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import tarfile
from dataclasses import dataclass

from testkit.registry import RegistryClient

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
BUSYBOX = "/bin/busybox"


@dataclass
class Layer:
    data: bytes
    media_type: str
    diff_id: str

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()


@dataclass
class Image:
    name: str
    tag: str
    layers: list[Layer]
    config: bytes
    manifest: bytes

    @property
    def manifest_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()

    def reference(self, registry_host: str) -> str:
        return f"{registry_host}/{self.name}:{self.tag}"


def _tar(files: dict[str, bytes], symlinks: dict[str, str]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({os.path.dirname(p) for p in [*files, *symlinks] if os.path.dirname(p)})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for path, content in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(content), 0o755, 0
            tar.addfile(info, io.BytesIO(content))
        for path, target in symlinks.items():
            info = tarfile.TarInfo(path)
            info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, 0
            tar.addfile(info)
    return out.getvalue()


def busybox_layer() -> Layer:
    with open(BUSYBOX, "rb") as f:
        busybox = f.read()
    tar = _tar({"bin/busybox": busybox}, {f"bin/{tool}": "busybox" for tool in ("sh", "echo", "cat", "ls", "true")})
    return Layer(gzip.compress(tar, mtime=0), LAYER_GZIP, "sha256:" + hashlib.sha256(tar).hexdigest())


def random_layer(size: int, index: int) -> Layer:
    """A layer of incompressible bytes, new on every call, so every test starts cold."""
    tar = _tar({f"data/blob-{index}.bin": os.urandom(size)}, {})
    return Layer(tar, LAYER_TAR, "sha256:" + hashlib.sha256(tar).hexdigest())


def build_image(name: str, layer_sizes: list[int], tag: str = "latest") -> Image:
    """busybox-static plus layers of random data; the container echoes ok."""
    layers = [busybox_layer()] + [random_layer(size, i) for i, size in enumerate(layer_sizes)]
    return image_from_layers(name, layers, ["/bin/echo", "ok"], tag=tag, path="/bin")


def image_from_layers(name: str, layers: list[Layer], command: list[str], tag: str = "latest",
                      path: str = "/usr/local/bin:/usr/bin:/bin", arch: str | None = None) -> Image:
    """An image of ``layers`` for linux on ``arch`` (default: this machine's)."""
    arch = arch or {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    config = json.dumps({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": command, "Env": [f"PATH={path}"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": "sha256:" + hashlib.sha256(config).hexdigest(), "size": len(config)},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": len(layer.data)} for layer in layers],
    }, sort_keys=True).encode()
    return Image(name, tag, layers, config, manifest)


def push_image(client: RegistryClient, image: Image) -> None:
    for layer in image.layers:
        client.push_blob(image.name, layer.data)
    client.push_blob(image.name, image.config)
    client.push_manifest(image.name, image.tag, image.manifest, OCI_MANIFEST)


def push_index(client: RegistryClient, name: str, tag: str, entries: list[tuple[Image | bytes, dict]]) -> bytes:
    """An OCI index of already pushed manifests (an Image's, or the bytes of one), each with its platform."""
    manifests = []
    for source, described in entries:
        body = source.manifest if isinstance(source, Image) else source
        manifests.append({"mediaType": OCI_MANIFEST, "digest": "sha256:" + hashlib.sha256(body).hexdigest(),
                          "size": len(body), "platform": described})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).encode()
    client.push_manifest(name, tag, index, OCI_INDEX)
    return index
