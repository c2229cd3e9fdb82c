"""`damselfly nydus convert` against docker-registry; fsck.erofs and the kernel read what it wrote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from damselfly.nydus.image import BOOTSTRAP_ANNOTATION, NYDUS_BLOB_TYPE, extract_bootstrap
from damselfly.nydus.rafs import Bootstrap
from damselfly.registry.blocking import RegistryClient as NydusRegistry
from testkit.images import busybox_layer, image_from_layers, push_image
from testkit.nydus import cli, oci_rootfs
from tests.support.trees import diff, snapshot, tar_layer

FIXTURES = Path(__file__).parent.parent / "fixtures" / "nydus"
MiB = 1024 * 1024


@contextmanager
def erofs_mount(bootstrap: Path, devices: list[Path], mountpoint: Path) -> Iterator[Path]:
    """The kernel's EROFS over loop devices, as nydus-snapshotter's fscache-less mode does."""
    with ExitStack() as stack:
        loops = []
        for device in devices:
            loop = subprocess.run(["losetup", "--find", "--show", "--read-only", str(device)], check=True,
                                  capture_output=True, text=True).stdout.strip()
            stack.callback(subprocess.run, ["losetup", "-d", loop], capture_output=True)
            loops.append(loop)
        mountpoint.mkdir(parents=True, exist_ok=True)
        options = ",".join(["ro"] + [f"device={loop}" for loop in loops])
        subprocess.run(["mount", "-t", "erofs", "-o", options, str(bootstrap), str(mountpoint)], check=True,
                       capture_output=True)
        stack.callback(subprocess.run, ["umount", str(mountpoint)], capture_output=True)
        yield mountpoint


def fsck_extract(bootstrap: Path, devices: list[Path], out: Path) -> Path:
    result = subprocess.run(["fsck.erofs", *[f"--device={d}" for d in devices], f"--extract={out}", str(bootstrap)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out


def test_fsck_and_the_kernel_read_the_real_nydus_fixture_through_exported_devices(tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    blob_id = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"
    shutil.copy(FIXTURES / blob_id, blobs / blob_id)
    boot = FIXTURES / "rafs-v6-2.2.boot"
    printed = cli("nydus", "export", str(boot), "--blobs", str(blobs), "--out", str(tmp_path / "dev")).stdout
    devices = [Path(line) for line in printed.split()]
    assert [d.name for d in devices] == [f"{blob_id}.img"] and devices[0].stat().st_size == 0x9000
    extracted = fsck_extract(boot, devices, tmp_path / "fsck")
    with erofs_mount(boot, devices, tmp_path / "mnt") as mounted:
        for root in (extracted, mounted):
            assert (root / "lib.rs").stat().st_size == 16931
            assert (root / "sync_io.rs").stat().st_size == 13400
        assert (mounted / "lib.rs").read_bytes() == (extracted / "lib.rs").read_bytes()
        assert (mounted / "sync_io.rs").read_bytes() == (extracted / "sync_io.rs").read_bytes()
    inspected = cli("nydus", "inspect", str(boot)).stdout
    assert blob_id in inspected and "/sync_io.rs" in inspected
    refused = cli("nydus", "inspect", str(FIXTURES / "rafs-v5-sha256-nocompress-repeatable.boot"), check=False)
    assert refused.returncode == 1 and "RAFS v5" in refused.stderr and "Traceback" not in refused.stderr


def _rich_layers(tmp_path: Path) -> list:
    """Layers that exercise what a runtime does: owners, modes, xattrs, devices, links, whiteouts, opaque dirs."""
    base = tmp_path / "layer1"
    for directory in ("etc", "dev", "data", "opaque/keep", "gone", "many"):
        (base / directory).mkdir(parents=True)
    (base / "etc/hello").write_text("hello\n")
    os.chown(base / "etc/hello", 1000, 2000)
    os.setxattr(base / "etc/hello", "user.note", b"kept")
    os.setxattr(base / "etc/hello", "user.binary", b"\x00\x01\xff")  # containerd's unpack drops trusted.*
    os.link(base / "etc/hello", base / "etc/hard")
    os.symlink("hello", base / "etc/link")
    os.mknod(base / "dev/null", 0o666 | 0o020000, os.makedev(1, 3))
    os.mkfifo(base / "dev/fifo", 0o600)
    big = os.urandom(3 * MiB + 12345)
    (base / "data/big").write_bytes(big)
    (base / "data/dup").write_bytes(big)  # every chunk is stored once
    (base / "data/zeros").write_bytes(bytes(4 * MiB))
    (base / "data/empty").write_bytes(b"")
    (base / "data/setuid").write_bytes(b"#!/bin/sh\n")
    os.chmod(base / "data/setuid", 0o4755)
    os.utime(base / "data/big", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    for name in ("a", "b"):
        (base / "opaque/keep" / name).write_text(name)
    (base / "gone/x").write_text("x")
    for i in range(300):
        (base / "many" / f"a-rather-long-file-name-{i:04d}").write_text(str(i))
    upper = tmp_path / "layer2"
    (upper / "opaque").mkdir(parents=True)
    (upper / "etc").mkdir()
    (upper / ".wh.gone").write_bytes(b"")
    (upper / "opaque/.wh..wh..opq").write_bytes(b"")
    (upper / "opaque/new").write_text("new")
    (upper / "etc/hello").write_text("replaced\n")
    (upper / "etc/.wh.link").write_bytes(b"")
    return [busybox_layer(), tar_layer(base), tar_layer(upper)]


def test_converted_image_has_the_oci_image_rootfs(tmp_path: Path, registry, registry_client, containerd) -> None:
    image = image_from_layers("nydus/source", _rich_layers(tmp_path), ["/bin/busybox", "true"], tag="v1")
    push_image(registry_client, image)
    source = image.reference(registry.host)
    target = f"{registry.host}/nydus/target:v1-nydus"

    fsck_view = dict(hard_links=False, xattrs=False, setid=False)
    with oci_rootfs(containerd(), source, tmp_path / "oci-rootfs") as reference_root:
        expected, expected_by_fsck = snapshot(reference_root), snapshot(reference_root, **fsck_view)

    printed = cli("nydus", "convert", "--plain-http", "--chunk-size", "1MiB", source, target)
    assert "pushed" in printed.stdout

    client = NydusRegistry(registry.host, plain_http=True)
    manifest, _body, media_type = client.manifest("nydus/target", "v1-nydus")
    *data_layers, boot_layer = manifest["layers"]
    assert boot_layer["annotations"][BOOTSTRAP_ANNOTATION] == "true"
    assert all(layer["mediaType"] == NYDUS_BLOB_TYPE for layer in data_layers)
    bootstrap_path = tmp_path / "image.boot"
    bootstrap_path.write_bytes(extract_bootstrap(client.blob_bytes("nydus/target", boot_layer["digest"])))
    bootstrap = Bootstrap.load(str(bootstrap_path))
    assert [f"sha256:{b.blob_id}" for b in bootstrap.blobs] == [layer["digest"] for layer in data_layers]
    config = json.loads(client.blob_bytes("nydus/target", manifest["config"]["digest"]))
    assert config["config"]["Cmd"] == ["/bin/busybox", "true"]

    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for layer in data_layers:
        client.fetch_blob("nydus/target", layer["digest"], blobs / layer["digest"].split(":")[1])
    client.close()
    printed = cli("nydus", "export", str(bootstrap_path), "--blobs", str(blobs), "--out", str(tmp_path / "dev"))
    devices = [Path(line) for line in printed.stdout.split()]

    extracted = snapshot(fsck_extract(bootstrap_path, devices, tmp_path / "fsck"), **fsck_view)
    problems = diff(expected_by_fsck, extracted)
    assert not problems, "fsck.erofs extraction differs from the OCI rootfs:\n" + "\n".join(problems[:20])
    with erofs_mount(bootstrap_path, devices, tmp_path / "mnt") as mounted:
        problems = diff(expected, snapshot(mounted))
    assert not problems, "the kernel's view differs from the OCI rootfs:\n" + "\n".join(problems[:20])
    assert ("/data/big", "/data/dup") not in expected["hard links"]
    rich_blob = data_layers[1]["size"]
    assert rich_blob < 3 * MiB + 12345 + 64 * 1024, "the duplicate file and the zeros must not be stored again"


@pytest.mark.parametrize("args, message", [
    (["nydus", "convert", "--plain-http", "127.0.0.1:1/none/such:tag", "127.0.0.1:1/x:y"], "ConnectionRefusedError"),
    (["nydus", "convert", "--chunk-size", "3000", "a/b", "c/d"], "power of two"),
    (["nydus", "inspect", "Not/A/Valid/Ref"], "invalid image reference"),
])
def test_bad_input_gets_one_clear_line(args: list[str], message: str) -> None:
    result = cli(*args, check=False)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
