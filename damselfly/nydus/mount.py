"""Lazy mounts: the kernel's EROFS over the bootstrap, its devices served by our FUSE process.

``mount`` fetches the bootstrap (through the mirror when one is given), starts the FUSE
server as a detached process, attaches each blob file to a read-only loop device and mounts
EROFS with those loop devices as ``-o device=``. What it set up is recorded in a state file,
so ``umount`` (any process, later) can take it down in the reverse order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from damselfly.lib.units import parse_size

if TYPE_CHECKING:
    from damselfly.core.oci import ImageRef

log = logging.getLogger("damselfly.nydus.mount")

READY_TIMEOUT = 30.0
# A container start reads a fraction of its image; 10 GiB holds the whole uncompressed data of
# all but the largest images, so an ordinary mount never evicts, while an image made to fill
# the disk stops there.
DEFAULT_CACHE_QUOTA = 10 << 30
STOP_TIMEOUT = 15.0
RELEASE_TIMEOUT = 5.0


class MountError(RuntimeError):
    """A mount or umount that could not be done; everything it started has been undone."""


def state_dir() -> Path:
    return Path(os.environ.get("DAMSELFLY_RUN_DIR", "/run/damselfly")) / "nydus"


def default_cache_dir() -> Path:
    return Path(os.environ.get("DAMSELFLY_NYDUS_CACHE", "/var/cache/damselfly/nydus"))


def parse_cache_quota(value: str | int) -> int:
    """A chunk cache quota from a size ("10GiB") or a number of bytes; ValueError says what is wrong."""
    quota = parse_size(value)
    if quota < 1:
        raise ValueError(f"cache quota {value!r} must be at least one byte")
    return quota


def state_path(mountpoint: Path) -> Path:
    key = hashlib.sha256(str(mountpoint.resolve()).encode()).hexdigest()[:16]
    return state_dir() / f"{key}.json"


@dataclass(frozen=True)
class MountOptions:
    """How a mount reads its image: the options of `damselfly nydus mount` and of the mount
    service's /mount, in one place."""

    cache_dir: Path  # the chunk cache and per-mount state
    mirror: str | None = None  # a Damselfly mirror the registry is reached through
    plain_http: bool = False  # plain HTTP to the registry (without a mirror)
    prefetch: bool = False  # fetch the rest of every blob in the background, as far as the quota allows
    cache_quota: int = DEFAULT_CACHE_QUOTA  # bytes of chunks kept; past it, the least recently used go


@dataclass
class MountState:
    mountpoint: str
    image: str
    pid: int
    started: str  # the server's start time in /proc, so a reused pid is never taken for it
    fuse_dir: str
    bootstrap: str
    stats_file: str
    log_file: str
    loops: list[str] = field(default_factory=list)

    def save(self) -> None:
        path = state_path(Path(self.mountpoint))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, mountpoint: Path) -> "MountState":
        path = state_path(mountpoint)
        if not path.exists():
            raise MountError(f"{mountpoint} is not a damselfly nydus mount (no state in {state_dir()})")
        return cls(**json.loads(path.read_text()))

    def stats(self) -> dict:
        try:
            return json.loads(Path(self.stats_file).read_text())
        except (OSError, ValueError):
            return {}


def _run(*command: str) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise MountError(f"{' '.join(command)}: {error}") from None
    if result.returncode != 0:
        raise MountError(f"{' '.join(command)}: {result.stderr.strip() or f'exit {result.returncode}'}")
    return result.stdout.strip()


def _wait_ready(pid: int, ready: int, log_file: Path) -> None:
    """The server writes 'ready' once FUSE is up; anything else within the deadline is a failure."""
    deadline = time.monotonic() + READY_TIMEOUT
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([ready], [], [], min(left, 0.5))
        if readable:
            if os.read(ready, 16).startswith(b"ready"):
                return
            break  # the server exited before it was ready
        if not _alive(pid):
            break
    else:
        raise MountError(f"the FUSE server did not come up within {READY_TIMEOUT:.0f}s")
    raise MountError(f"the FUSE server failed: {_last_error(log_file)}")


def _last_error(log_file: Path) -> str:
    """The last line of the server's log: the exception that ended it, in one line."""
    lines = log_file.read_text(errors="replace").strip().splitlines() if log_file.exists() else []
    return lines[-1] if lines else "it exited without a word"


def _start_server(log_file: Path, run: Callable[[Callable[[], None]], None]) -> tuple[int, int]:
    """Fork the FUSE server off this process (its modules are loaded already: no second
    interpreter start), in a session of its own with its output in ``log_file``.
    Returns its pid and the pipe on which it says 'ready'."""
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid:
        os.close(ready_write)
        return pid, ready_read
    status = 1
    try:
        # Nothing of the parent's stays open here but the pipe: a mount service's socket
        # held by its FUSE servers would take connections after the service is gone.
        os.closerange(3, ready_write)
        os.closerange(ready_write + 1, os.sysconf("SC_OPEN_MAX"))
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(number, signal.SIG_DFL)  # libfuse sets its own (a clean unmount) only over the default
        os.setsid()
        log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        run(lambda: os.write(ready_write, b"ready\n"))
        status = 0
    except BaseException:  # noqa: BLE001 - the child reports to its log and never returns into the caller
        logging.getLogger("damselfly.nydus.blobfs").exception("the FUSE server failed")
    finally:
        os._exit(status)


def mount(ref: ImageRef, mountpoint: Path, options: MountOptions) -> MountState:
    """Mount ``ref`` at ``mountpoint``; its chunk cache, in ``options.cache_dir``, holds at
    most ``options.cache_quota`` bytes."""
    mountpoint, cache_dir = mountpoint.resolve(), options.cache_dir.resolve()
    mirror, plain_http = options.mirror, options.plain_http
    if not mountpoint.is_dir():
        raise MountError(f"mount point {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise MountError(f"{mountpoint} is already a mount point")
    if state_path(mountpoint).exists():  # left by a mount whose EROFS was unmounted by hand
        _teardown(MountState.load(mountpoint), mounted=False)
        state_path(mountpoint).unlink(missing_ok=True)
    # Imported here: umount, a process of its own that runs beside starting containers, needs none of it.
    from damselfly.nydus.image import fetch_bootstrap
    from damselfly.nydus.rafs import Bootstrap
    from damselfly.registry.blocking import RegistryClient

    client = RegistryClient(ref.registry, plain_http, mirror)
    try:
        bootstrap_bytes = fetch_bootstrap(ref, client)
    finally:
        client.close()
    bootstrap = Bootstrap(bootstrap_bytes)
    work = cache_dir / "mounts" / state_path(mountpoint).stem
    work.mkdir(parents=True, exist_ok=True)
    bootstrap_path, fuse_dir = work / "image.boot", work / "blobs"
    log_file, stats_file = work / "server.log", work / "stats.json"
    state: MountState | None = None
    try:
        bootstrap_path.write_bytes(bootstrap_bytes)
        fuse_dir.mkdir(exist_ok=True)
        from damselfly.nydus.blobfs import serve  # loads libfuse: only where a mount is made, before the fork

        def run_server(ready: Callable[[], None]) -> None:
            serve(bootstrap, fuse_dir, cache_dir / "blobs", options.cache_quota,
                  RegistryClient(ref.registry, plain_http, mirror), ref.repository, stats_file, options.prefetch, ready)

        pid, ready = _start_server(log_file, run_server)
        state = MountState(str(mountpoint), str(ref), pid, _start_time(pid), str(fuse_dir), str(bootstrap_path),
                           str(stats_file), str(log_file))
        state.save()  # from here on, umount can find whatever this leaves behind
        try:
            _wait_ready(pid, ready, log_file)
        finally:
            os.close(ready)
        for blob in bootstrap.blobs:
            state.loops.append(_run("losetup", "--find", "--show", "--read-only", str(fuse_dir / blob.blob_id)))
            state.save()
        options = ",".join(["ro"] + [f"device={loop}" for loop in state.loops])
        _run("mount", "-t", "erofs", "-o", options, str(bootstrap_path), str(mountpoint))
    except BaseException:
        if state is None or not _teardown(state, mounted=False):
            shutil.rmtree(work, ignore_errors=True)  # the error already names the server's last error line
        state_path(mountpoint).unlink(missing_ok=True)
        raise
    log.info("mounted %s at %s (%d blobs, FUSE server pid %d)", ref, mountpoint, len(bootstrap.blobs), pid)
    return state


def _teardown(state: MountState, mounted: bool) -> list[str]:
    """Undo a mount in reverse order; returns what could not be undone."""
    problems = []
    if mounted:
        try:
            _run("umount", state.mountpoint)
        except MountError as error:
            return [str(error)]  # busy: leave everything else in place so the mount keeps working
    fuse_dir = Path(state.fuse_dir)
    for loop in state.loops:
        if not _backed_by(loop, fuse_dir):
            continue  # already detached, and maybe reused by someone else since
        try:
            _run("losetup", "-d", loop)
        except MountError as error:
            problems.append(str(error))
    # A loop device that another process has open at that moment (another mount looking for
    # a free one, say) is only marked for detaching: it lets go of our blob file when that
    # process closes it, and until then the FUSE file system is busy.
    if not _within(RELEASE_TIMEOUT, lambda: not any(_backed_by(loop, fuse_dir) for loop in state.loops)):
        problems.append(f"loop devices still read {fuse_dir} after {RELEASE_TIMEOUT:.0f}s")
    if _mounted(fuse_dir):
        try:
            _run("fusermount3", "-u", str(fuse_dir))
        except MountError as error:
            # Detached lazily, no dead mount is left behind: the kernel ends it, and the
            # server exits, once nothing uses it any more.
            problems.append(f"{error}; detached lazily")
            try:
                _run("fusermount3", "-u", "-z", str(fuse_dir))
            except MountError as lazy_error:
                problems.append(str(lazy_error))
    if not _within(STOP_TIMEOUT, lambda: not _our_server(state)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.pid, signal.SIGKILL)
        problems.append(f"FUSE server {state.pid} did not stop; killed")
    return problems


def _mounted(path: Path) -> bool:
    """Whether ``path`` is a mount point, read from /proc/self/mounts: os.path.ismount needs a
    stat, which a FUSE mount whose server died answers with ENOTCONN (so: not mounted)."""
    escaped = str(path)
    for char, code in (("\\", "\\134"), (" ", "\\040"), ("\t", "\\011"), ("\n", "\\012")):
        escaped = escaped.replace(char, code)
    try:
        return any(line.split(" ")[1] == escaped for line in Path("/proc/self/mounts").read_text().splitlines())
    except OSError:
        return os.path.ismount(path)


def _within(timeout: float, condition: Callable[[], bool]) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _backed_by(loop: str, fuse_dir: Path) -> bool:
    """Whether a loop device still reads one of this mount's blob files."""
    backing = Path("/sys/block") / Path(loop).name / "loop" / "backing_file"
    try:
        return Path(backing.read_text().strip()).parent == fuse_dir
    except OSError:
        return False


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (field 3, the state, first); None: no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat: when the process started, in clock ticks since boot."""
    fields = _stat_fields(pid)
    return fields[19] if fields else ""


def _our_server(state: MountState) -> bool:
    """The FUSE server is alive, and the pid is still that server (not a reused pid)."""
    fields = _running(state.pid)
    return fields is not None and fields[19] == state.started


def _alive(pid: int) -> bool:
    return _running(pid) is not None


def _running(pid: int) -> list[str] | None:
    """The stat fields of a process that runs, not merely a zombie: the server's parent (the
    mount command) is gone, and whoever inherited it may reap it seconds later (seen: 1.6 s
    per umount). A child of ours is reaped here."""
    try:
        waited, _status = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return None
    except ChildProcessError:
        pass
    fields = _stat_fields(pid)
    return fields if fields is not None and fields[0] != "Z" else None


def umount(mountpoint: Path) -> dict:
    """Take a lazy mount down; returns the FUSE server's final fetch statistics."""
    state = MountState.load(mountpoint)
    problems = _teardown(state, mounted=os.path.ismount(state.mountpoint))
    if problems and os.path.ismount(state.mountpoint):
        raise MountError("; ".join(problems))
    state_path(Path(state.mountpoint)).unlink(missing_ok=True)
    stats = state.stats()
    work = Path(state.log_file).parent
    if problems:
        log.warning("umount %s: %s (the FUSE server's log is %s)", state.mountpoint, "; ".join(problems),
                    state.log_file)
    else:  # the bootstrap's copy, the server's log and statistics; the chunk cache stays
        shutil.rmtree(work, ignore_errors=True)
    return stats
