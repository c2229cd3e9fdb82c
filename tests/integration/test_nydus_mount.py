"""`damselfly nydus mount`: EROFS over FUSE-served blobs, chunks fetched on demand through the daemon."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from damselfly.nydus.service import ServiceError
from damselfly.registry.blocking import RegistryClient
from benchmarks.cluster.images import CACHE as BENCH_CACHE, python_image
from testkit.images import busybox_layer, image_from_layers, push_image
from testkit.nydus import MountServiceProcess, cli, oci_rootfs
from testkit.processes import stop_process
from tests.support.trees import diff, snapshot, tar_layer
from testkit.wait import wait_until

MiB = 1024 * 1024


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Mount state goes to the test's own directory, so parallel or leftover runs never collide."""
    path = tmp_path / "run"
    monkeypatch.setenv("DAMSELFLY_RUN_DIR", str(path))
    return path


@pytest.fixture
def lazy_mount(tmp_path: Path, run_dir: Path) -> Iterator[Callable[..., Path]]:
    """Mount nydus images; whatever is still mounted at the end is unmounted."""
    mounted: list[Path] = []

    def mount(ref: str, *options: str, name: str = "mnt") -> Path:
        point = tmp_path / name
        point.mkdir(exist_ok=True)
        cli("nydus", "mount", ref, str(point), *options)
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        if os.path.ismount(point):
            cli("nydus", "umount", str(point), check=False)


def umount(point: Path) -> dict:
    stats = json.loads(cli("nydus", "umount", "--json", str(point)).stdout)
    assert not os.path.ismount(point)
    return stats


def run_on(ctr, lower: Path, tmp_path: Path, *command: str) -> str:
    """``ctr run --rootfs`` on a writable overlay over the lazy mount; the command's output."""
    rootfs, upper, work = tmp_path / "rootfs", tmp_path / "upper", tmp_path / "work"
    for path in (rootfs, upper, work):
        path.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}",
                    str(rootfs)], check=True)
    try:
        return ctr.ctr("run", "--rm", "--rootfs", str(rootfs), "lazy-start", *command, timeout=120).stdout.strip()
    finally:
        subprocess.run(["umount", str(rootfs)], check=True)


def assert_oci_rootfs(ctr, source: str, lazy: Path, tmp_path: Path) -> None:
    """The lazy mount's tree equals, byte for byte, the rootfs containerd unpacks from the OCI image."""
    with oci_rootfs(ctr, source, tmp_path / "oci-rootfs") as reference:
        problems = diff(snapshot(reference), snapshot(lazy))
    assert not problems, "\n".join(problems[:20])


def _image_with_data(tmp_path: Path):
    """busybox, a small config file, and 24 MiB of data the command never reads."""
    layer = tmp_path / "layer"
    (layer / "etc").mkdir(parents=True)
    (layer / "data").mkdir()
    (layer / "etc/greeting").write_text("hello from a lazy mount\n")
    for index in range(3):
        (layer / "data" / f"part-{index}").write_bytes(os.urandom(8 * MiB))
    return image_from_layers("nydus/lazy", [busybox_layer(), tar_layer(layer)],
                             ["/bin/busybox", "cat", "/etc/greeting"], tag="oci")


def test_lazy_mount_through_the_daemon_reads_a_fraction_and_equals_the_oci_rootfs(
        tmp_path: Path, registry, registry_client, damselfly, containerd, lazy_mount) -> None:
    image = _image_with_data(tmp_path)
    push_image(registry_client, image)
    source = image.reference(registry.host)
    target = f"{registry.host}/nydus/lazy:nydus"
    cli("nydus", "convert", "--plain-http", source, target)
    node = damselfly()
    cache = tmp_path / "cache"

    mountpoint = lazy_mount(target, "--mirror", node.url, "--cache-dir", str(cache))
    ctr = containerd()
    output = run_on(ctr, mountpoint, tmp_path, "/bin/busybox", "cat", "/etc/greeting")
    assert output == "hello from a lazy mount"
    stats = umount(mountpoint)
    fraction = stats["fetched_bytes"] / stats["image_bytes"]
    print(f"container start read {stats['fetched_bytes']} of {stats['image_bytes']} blob bytes ({fraction:.1%})")
    assert 0 < fraction < 0.2, stats
    assert stats["failures"] == 0

    # Through the same chunk cache, the whole tree equals what containerd unpacks from the OCI image.
    mountpoint = lazy_mount(target, "--mirror", node.url, "--cache-dir", str(cache))
    assert_oci_rootfs(ctr, source, mountpoint, tmp_path)
    stats = umount(mountpoint)
    assert stats["cache_hits"] > 0, "the second mount must reuse the chunks the first one fetched"
    assert stats["cached_chunks"] == stats["chunks"]

    # The registry served each nydus blob once, to the daemon, however many ranges the mounts read.
    client = RegistryClient(registry.host, plain_http=True)
    manifest, _body, _media = client.manifest("nydus/lazy", "nydus")
    client.close()
    gets = [e.path for e in registry.access_log() if e.method == "GET"]  # other tests share busybox's blob
    assert {layer["digest"]: sum(path.endswith(f"/nydus/lazy/blobs/{layer['digest']}") for path in gets)
            for layer in manifest["layers"]} == {layer["digest"]: 1 for layer in manifest["layers"]}


def test_chunk_cache_survives_a_restart_and_repairs_a_bad_chunk(tmp_path: Path, registry, registry_client,
                                                                lazy_mount) -> None:
    image = _image_with_data(tmp_path)
    image.name = "nydus/cache"
    push_image(registry_client, image)
    target = f"{registry.host}/nydus/cache:nydus"
    cli("nydus", "convert", "--plain-http", "--chunk-size", "256KiB", image.reference(registry.host), target)
    cache = tmp_path / "cache"
    mountpoint = lazy_mount(target, "--plain-http", "--cache-dir", str(cache), "--prefetch")
    expected = {name: (mountpoint / "data" / name).read_bytes() for name in ("part-0", "part-1", "part-2")}
    stats = umount(mountpoint)
    assert stats["cached_chunks"] == stats["chunks"]

    data_files = sorted(cache.glob("blobs/*.blob.data"), key=lambda p: p.stat().st_size)
    biggest = data_files[-1]
    with open(biggest, "r+b") as file:  # a chunk that rotted on disk while the map still says "cached"
        file.seek(5 * MiB)
        file.write(b"\xff" * 4096)
    mountpoint = lazy_mount(target, "--plain-http", "--cache-dir", str(cache))
    for name, data in expected.items():
        assert (mountpoint / "data" / name).read_bytes() == data
    stats = umount(mountpoint)
    assert stats["fetched_chunks"] == 1, "only the damaged chunk is fetched again"
    assert stats["cache_hits"] > 0


def _drop_page_cache(*paths: Path) -> None:
    """The kernel keeps what it read of a file: drop it, so that the next read reaches the FUSE server."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def test_a_small_cache_quota_evicts_and_every_read_stays_right(tmp_path: Path, registry, registry_client,
                                                                 run_dir: Path, lazy_mount) -> None:
    """24 MiB of data through a 4 MiB chunk cache: chunks are evicted as the reads go on, the
    cache never holds more than the quota on disk, and what was evicted is fetched again whole."""
    image = _image_with_data(tmp_path)
    image.name = "nydus/quota"
    push_image(registry_client, image)
    target = f"{registry.host}/nydus/quota:nydus"
    cli("nydus", "convert", "--plain-http", "--chunk-size", "256KiB", image.reference(registry.host), target)
    cache, quota = tmp_path / "cache", 4 * MiB
    mountpoint = lazy_mount(target, "--plain-http", "--cache-dir", str(cache), "--cache-quota", "4MiB")
    fuse_dir = Path(json.loads(next((run_dir / "nydus").glob("*.json")).read_text())["fuse_dir"])
    parts = [tmp_path / "layer" / "data" / f"part-{index}" for index in range(3)]
    for part in parts + parts[:1]:  # part-0 twice: the others evicted its chunks
        _drop_page_cache(mountpoint / "data" / part.name, *fuse_dir.iterdir())
        assert (mountpoint / "data" / part.name).read_bytes() == part.read_bytes()
        assert sum(p.stat().st_blocks * 512 for p in cache.glob("blobs/*.blob.data")) <= quota
    stats = umount(mountpoint)
    assert stats["cache_quota"] == quota and stats["cached_bytes"] <= quota, stats
    chunks_read = 4 * 8 * MiB // (256 * 1024)  # four reads of 8 MiB files in 256 KiB chunks
    assert stats["fetched_chunks"] >= chunks_read, "part-0 was fetched again, its chunks evicted"
    assert stats["evicted_chunks"] >= chunks_read - quota // (256 * 1024), stats
    assert stats["failures"] == 0


def test_mount_errors_are_one_clear_line(tmp_path: Path, registry, registry_client, run_dir: Path) -> None:
    point = tmp_path / "mnt"
    point.mkdir()
    image = image_from_layers("nydus/plain-oci", [busybox_layer()], ["/bin/busybox", "true"])
    push_image(registry_client, image)
    cases = [
        (["nydus", "mount", image.reference(registry.host), str(point), "--plain-http", "--cache-dir",
          str(tmp_path / "c")], "not a nydus image"),
        (["nydus", "mount", f"{registry.host}/nydus/none:such", str(point), "--plain-http", "--cache-dir",
          str(tmp_path / "c")], "404"),
        (["nydus", "umount", str(point)], "not a damselfly nydus mount"),
    ]
    for args, message in cases:
        result = cli(*args, check=False)
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert not os.path.ismount(point)
    assert not list((tmp_path / "c").glob("mounts/*")), "a failed mount leaves nothing behind"


def test_python3_starts_from_a_lazy_mount_of_a_debian_image(tmp_path: Path, registry, registry_client, damselfly,
                                                             containerd, lazy_mount) -> None:
    """The issue's own check: a Debian rootfs with python3, converted, mounted lazily; `python3 -V` runs."""
    image = python_image(BENCH_CACHE)
    image.name = "nydus/python"
    push_image(registry_client, image)
    source, target = image.reference(registry.host), f"{registry.host}/nydus/python:nydus"
    cli("nydus", "convert", "--plain-http", source, target)
    node = damselfly()
    mountpoint = lazy_mount(target, "--mirror", node.url, "--cache-dir", str(tmp_path / "cache"))
    ctr = containerd()
    assert run_on(ctr, mountpoint, tmp_path, "/usr/bin/python3", "-V").startswith("Python 3.")
    stats = umount(mountpoint)
    fraction = stats["fetched_bytes"] / stats["image_bytes"]
    print(f"python3 -V read {stats['fetched_bytes']} of {stats['image_bytes']} blob bytes ({fraction:.1%})")
    assert fraction < 0.5, stats

    mountpoint = lazy_mount(target, "--mirror", node.url, "--cache-dir", str(tmp_path / "cache"), name="full")
    assert_oci_rootfs(ctr, source, mountpoint, tmp_path)


def test_a_dead_daemon_gives_read_errors_not_a_hang_and_umount_still_cleans_up(
        tmp_path: Path, registry, registry_client, damselfly, lazy_mount) -> None:
    image = _image_with_data(tmp_path)
    image.name = "nydus/dead"
    push_image(registry_client, image)
    target = f"{registry.host}/nydus/dead:nydus"
    cli("nydus", "convert", "--plain-http", image.reference(registry.host), target)
    node = damselfly()
    mountpoint = lazy_mount(target, "--mirror", node.url, "--cache-dir", str(tmp_path / "cache"))
    assert (mountpoint / "etc/greeting").read_text() == "hello from a lazy mount\n"
    stop_process(node.process, kill=True)
    started = time.monotonic()
    with pytest.raises(OSError) as failure:
        (mountpoint / "data/part-1").read_bytes()
    assert failure.value.errno == errno.EIO
    assert time.monotonic() - started < 30, "a dead source must fail the read, not hold it"
    assert (mountpoint / "etc/greeting").read_text() == "hello from a lazy mount\n"  # cached chunks still serve
    stats = umount(mountpoint)
    assert stats["failures"] >= 1


def _busybox_mount(name: str, tmp_path: Path, registry, registry_client, run_dir: Path,
                   lazy_mount) -> tuple[Path, dict]:
    """A small image converted and mounted straight from the registry; its mount point and mount state."""
    image = image_from_layers(name, [busybox_layer()], ["/bin/busybox", "true"])
    push_image(registry_client, image)
    target = f"{registry.host}/{name}:nydus"
    cli("nydus", "convert", "--plain-http", image.reference(registry.host), target)
    mountpoint = lazy_mount(target, "--plain-http", "--cache-dir", str(tmp_path / "cache"))
    return mountpoint, json.loads(next((run_dir / "nydus").glob("*.json")).read_text())


def test_umount_waits_out_a_loop_device_someone_else_has_open(tmp_path: Path, registry, registry_client,
                                                               run_dir: Path, lazy_mount) -> None:
    """Another process that has a loop device open when it is detached (as a mount looking
    for a free one does) keeps our blob file open a moment longer; umount must wait for
    that, not leave a dead FUSE mount behind after killing its server."""
    mountpoint, state = _busybox_mount("nydus/held", tmp_path, registry, registry_client, run_dir, lazy_mount)
    held = os.open(state["loops"][0], os.O_RDONLY)
    releaser = threading.Timer(0.5, os.close, [held])  # the other process lets go a little later
    releaser.start()
    started = time.monotonic()
    try:
        result = cli("nydus", "umount", str(mountpoint), check=False)
    finally:
        releaser.join()
    assert result.returncode == 0, result.stderr
    assert "killed" not in result.stderr and "lazily" not in result.stderr, result.stderr
    assert time.monotonic() - started < 10
    assert state["fuse_dir"] not in Path("/proc/self/mounts").read_text()
    assert not Path(state["log_file"]).parent.exists()  # its bootstrap copy, log and statistics went too


def test_umount_cleans_up_after_a_fuse_server_that_died(tmp_path: Path, registry, registry_client, run_dir: Path,
                                                        lazy_mount) -> None:
    mountpoint, state = _busybox_mount("nydus/dead-server", tmp_path, registry, registry_client, run_dir,
                                       lazy_mount)
    os.kill(state["pid"], signal.SIGKILL)  # its FUSE mount now answers ENOTCONN
    wait_until(lambda: not Path(f"/proc/{state['pid']}").exists()
               or Path(f"/proc/{state['pid']}/stat").read_text().split()[2] == "Z", 10, "the server to die")
    result = cli("nydus", "umount", str(mountpoint), check=False)
    assert result.returncode == 0, result.stderr
    assert not os.path.ismount(mountpoint)
    assert state["fuse_dir"] not in Path("/proc/self/mounts").read_text()
    assert not Path(state["log_file"]).parent.exists()


def test_a_mount_that_fails_midway_leaves_nothing_behind(tmp_path: Path, registry, registry_client,
                                                         run_dir: Path) -> None:
    """The FUSE server cannot start (its chunk cache directory is a file): one clear line,
    and no mount directory, loop device or mount state is left."""
    image = image_from_layers("nydus/midway", [busybox_layer()], ["/bin/busybox", "true"])
    push_image(registry_client, image)
    target = f"{registry.host}/nydus/midway:nydus"
    cli("nydus", "convert", "--plain-http", image.reference(registry.host), target)
    cache, point = tmp_path / "cache", tmp_path / "mnt"
    cache.mkdir()
    point.mkdir()
    (cache / "blobs").write_text("not a directory")
    result = cli("nydus", "mount", target, str(point), "--plain-http", "--cache-dir", str(cache), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "the FUSE server failed: " in result.stderr, result.stderr
    assert not os.path.ismount(point)
    assert not list(cache.glob("mounts/*")) and not list((run_dir / "nydus").glob("*.json"))


@pytest.fixture
def mount_service(tmp_path: Path, run_dir: Path) -> Iterator[MountServiceProcess]:
    """`damselfly nydus serve` on a socket of the test's own; stopped, and its mounts taken down, at the end."""
    service = MountServiceProcess(tmp_path / "service.sock").start()
    try:
        yield service
    finally:
        service.stop()
        for state in (run_dir / "nydus").glob("*.json"):
            cli("nydus", "umount", json.loads(state.read_text())["mountpoint"], check=False)


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody has reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_the_mount_service_mounts_for_its_clients_and_its_mounts_outlive_it(
        tmp_path: Path, registry, registry_client, run_dir: Path, mount_service: MountServiceProcess) -> None:
    client = mount_service.client
    image = _image_with_data(tmp_path)
    image.name = "nydus/service"
    push_image(registry_client, image)
    target = f"{registry.host}/nydus/service:nydus"
    cli("nydus", "convert", "--plain-http", image.reference(registry.host), target)
    point, cache = tmp_path / "mnt", tmp_path / "cache"
    point.mkdir()

    state = client.mount(target, point, cache, plain_http=True, cache_quota="64MiB")
    assert os.path.ismount(point) and state["mountpoint"] == str(point)
    assert (point / "etc/greeting").read_text() == "hello from a lazy mount\n"

    # A request the service cannot use is refused in one line, and it goes on serving.
    refusals = [(lambda: client.mount("not a ref!", point, cache), "invalid image reference"),
                (lambda: client.mount(target, Path("relative"), cache), "'mountpoint' must be an absolute path"),
                (lambda: client.mount(target, point, cache, plain_http=True), "already a mount point"),
                (lambda: client.umount(tmp_path), "not a damselfly nydus mount"),
                (lambda: client.call("/mount", {"ref": target, "mountpoint": str(point), "plainHttp": True}),
                 "unknown field 'plainHttp'")]
    for request, message in refusals:
        with pytest.raises(ServiceError, match=message) as refusal:
            request()
        assert "\n" not in str(refusal.value)
    second = cli("nydus", "serve", "--socket", str(mount_service.socket), check=False)
    assert second.returncode == 1 and "a mount service already listens on" in second.stderr, second.stderr

    # Killed, it leaves its socket behind but nothing holds it open (its FUSE servers closed
    # what they inherited): a new service takes the socket over, and the mount still serves.
    mount_service.stop_with(signal.SIGKILL)
    assert mount_service.socket.exists() and not client.healthy()
    mount_service.start()
    assert (point / "data/part-0").stat().st_size == 8 * MiB
    assert (point / "etc/greeting").read_text() == "hello from a lazy mount\n"

    # The command takes down a mount the service made; SIGTERM stops the service cleanly.
    stats = umount(point)
    assert stats["fetched_bytes"] > 0 and stats["failures"] == 0
    assert stats["cache_quota"] == 64 * MiB and stats["cached_bytes"] <= 64 * MiB
    wait_until(lambda: _gone(state["pid"]), 10, "the FUSE server to exit")
    mount_service.stop()
    assert mount_service.process is not None and mount_service.process.returncode == 0
    assert not mount_service.socket.exists()
