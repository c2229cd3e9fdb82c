"""`damselfly nydus ...`: convert, inspect, export, mount, umount and the mount service."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn

import click

from damselfly.lib.logs import configure_logging
from damselfly.lib.units import parse_size

if TYPE_CHECKING:
    from damselfly.core.oci import ImageRef

# Each command imports what it uses when it runs: mount and umount are started once per
# container, beside others, and the converter's modules would cost each of them CPU.
log = logging.getLogger("damselfly.nydus")


def _expected_errors() -> tuple[type[Exception], ...]:
    """Errors whose message is already meant for the user."""
    from damselfly.nydus.layout import FormatError
    from damselfly.nydus.mount import MountError
    from damselfly.nydus.service import ServiceError
    from damselfly.nydus.tree import LayerError
    from damselfly.registry.blocking import RegistryError

    return RegistryError, FormatError, LayerError, MountError, ServiceError, OSError


def _fail(message: str) -> NoReturn:
    click.echo(f"damselfly nydus: {message}", err=True)
    sys.exit(1)


def one_line_errors(command: Callable[..., None]) -> Callable[..., None]:
    """Any failure ends the command with exit 1 and one line on stderr, never a traceback."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, KeyboardInterrupt):
            raise
        except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as SIGPIPE would
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)
        except Exception as error:  # noqa: BLE001 - the last line of defence for the user's terminal
            if isinstance(error, _expected_errors()):
                _fail(str(error))
            log.debug("unexpected failure", exc_info=True)
            _fail(f"{error.__class__.__name__}: {error}")

    return run


def _chunk_size(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
    from damselfly.nydus.layout import valid_chunk_size

    try:
        size = parse_size(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    if not valid_chunk_size(size):
        raise click.BadParameter(f"{value}: want a power of two between 4KiB and 16MiB")
    return size


def _default_cache_dir() -> Path:
    from damselfly.nydus.mount import default_cache_dir

    return default_cache_dir()


def _default_cache_quota() -> int:
    from damselfly.nydus.mount import DEFAULT_CACHE_QUOTA

    return DEFAULT_CACHE_QUOTA


def _cache_quota(_ctx: click.Context, _param: click.Parameter, value: str | int) -> int:
    from damselfly.nydus.mount import parse_cache_quota

    try:
        return parse_cache_quota(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _image(text: str) -> ImageRef:
    from damselfly.core.oci import ImageRef

    try:
        return ImageRef.parse(text)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


@click.group()
def nydus() -> None:
    """nydus images: convert from OCI, inspect, and start containers lazily."""
    configure_logging()


@nydus.command("convert")
@click.argument("source")
@click.argument("target")
@click.option("--plain-http", is_flag=True, help="Talk plain HTTP to both registries.")
@click.option("--chunk-size", default="1MiB", show_default=True, callback=_chunk_size,
              help="Chunk size, a power of two from 4KiB to 16MiB.")
@click.option("--compressor", type=click.Choice(["zstd", "lz4_block", "none"]), default="zstd", show_default=True)
@click.option("--digester", type=click.Choice(["blake3", "sha256"]), default="blake3", show_default=True)
@click.option("--work-dir", type=click.Path(file_okay=False), help="Scratch space for layers and blobs.")
@one_line_errors
def convert_command(source: str, target: str, plain_http: bool, chunk_size: int, compressor: str, digester: str,
                    work_dir: str | None) -> None:
    """Read SOURCE_REF (an OCI image) and push TARGET_REF, its nydus RAFS v6 form."""
    from rich.progress import Progress

    from damselfly.nydus.builder import ChunkSettings
    from damselfly.nydus.convert import convert
    from damselfly.nydus.layout import Compressor, Digester
    from damselfly.registry.blocking import RegistryClient

    source_ref, target_ref = _image(source), _image(target)
    settings = ChunkSettings(Compressor.from_label(compressor), Digester[digester.upper()], chunk_size)
    source_client = RegistryClient(source_ref.registry, plain_http)
    target_client = RegistryClient(target_ref.registry, plain_http)
    try:
        with Progress(transient=True, console=None) as progress:
            task = progress.add_task("converting", total=None)

            def report(stage: str, done: int, total: int) -> None:
                progress.update(task, description=stage, completed=done, total=total)

            result = convert(source_ref, target_ref, source_client, target_client, settings, work_dir, report)
    finally:
        source_client.close()
        target_client.close()
    stored = sum(blob.compressed_size for blob in result.blobs)
    click.echo(f"pushed {target_ref} ({result.manifest_digest}): {len(result.blobs)} blobs, {result.chunks} chunks, "
               f"{result.files} files; {stored} bytes of blobs from {result.source_bytes} bytes of layers; "
               f"bootstrap {result.bootstrap_size} bytes; {result.seconds:.1f}s")


@nydus.command("inspect")
@click.argument("target")
@click.option("--plain-http", is_flag=True, help="Talk plain HTTP to the registry.")
@click.option("--mirror", help="Fetch through this Damselfly mirror (URL).")
@click.option("--chunks", "show_chunks", is_flag=True, help="List every file's chunks.")
@one_line_errors
def inspect_command(target: str, plain_http: bool, mirror: str | None, show_chunks: bool) -> None:
    """Print the layout (files, chunks, blobs) of a nydus image REF, a bootstrap FILE or a data blob FILE."""
    from damselfly.nydus.image import extract_bootstrap, fetch_bootstrap
    from damselfly.nydus.inspect import describe_blob, describe_bootstrap, is_bootstrap
    from damselfly.nydus.rafs import Bootstrap
    from damselfly.registry.blocking import RegistryClient

    if os.path.exists(target):
        data = Path(target).read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = extract_bootstrap(data)
        lines = describe_bootstrap(Bootstrap(data), show_chunks) if is_bootstrap(data) or data[:4] == b"SFAR" \
            else describe_blob(data)
    else:
        ref = _image(target)
        client = RegistryClient(ref.registry, plain_http, mirror)
        try:
            bootstrap = fetch_bootstrap(ref, client)
        finally:
            client.close()
        lines = describe_bootstrap(Bootstrap(bootstrap), show_chunks)
    for line in lines:
        click.echo(line)


@nydus.command("export")
@click.argument("bootstrap", type=click.Path(exists=True, dir_okay=False))
@click.option("--blobs", "blob_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Directory holding the data blobs, named by blob id.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Where to write each blob's uncompressed data (<blob id>.img).")
@one_line_errors
def export_command(bootstrap: str, blob_dir: str, out_dir: str) -> None:
    """Rebuild each blob's uncompressed data: the devices EROFS and fsck.erofs read beside the bootstrap."""
    from damselfly.nydus.rafs import Bootstrap, rebuild_uncompressed

    parsed = Bootstrap.load(bootstrap)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    devices = []
    for blob in parsed.blobs:
        device = Path(out_dir) / f"{blob.blob_id}.img"
        with open(Path(blob_dir) / blob.blob_id, "rb") as source, open(device, "wb") as out:
            rebuild_uncompressed(parsed, blob.blob_index, source, out)
        devices.append(device)
    for device in devices:
        click.echo(str(device))
    click.echo("check: fsck.erofs " + " ".join(f"--device={d}" for d in devices) + f" --extract=DIR {bootstrap}",
               err=True)


@nydus.command("mount")
@click.argument("ref")
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path))
@click.option("--mirror", help="Fetch through this Damselfly daemon (URL), e.g. http://127.0.0.1:65001.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              default=_default_cache_dir,
              show_default="$DAMSELFLY_NYDUS_CACHE or /var/cache/damselfly/nydus",
              help="The nydus chunk cache and per-mount state.")
@click.option("--cache-quota", metavar="SIZE", default=_default_cache_quota, show_default="10GiB",
              callback=_cache_quota,
              help="Most bytes of chunks the mount keeps in the chunk cache; past it, the least recently "
                   "used are evicted.")
@click.option("--plain-http", is_flag=True, help="Talk plain HTTP to the registry (when no mirror is given).")
@click.option("--prefetch", is_flag=True, help="Fetch the rest of every blob in the background, as far as the "
                                                "cache quota allows.")
@one_line_errors
def mount_command(ref: str, mountpoint: Path, mirror: str | None, cache_dir: Path, cache_quota: int,
                  plain_http: bool, prefetch: bool) -> None:
    """Mount nydus image REF at MOUNTPOINT; file data is fetched when first read."""
    from damselfly.nydus.mount import MountOptions, mount

    state = mount(_image(ref), mountpoint, MountOptions(cache_dir, mirror, plain_http, prefetch, cache_quota))
    click.echo(f"mounted {state.image} at {state.mountpoint} (FUSE server pid {state.pid}, log {state.log_file})")


@nydus.command("serve")
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The Unix socket to listen on.  [default: service.sock in the mount state directory, "
                   "$DAMSELFLY_RUN_DIR/nydus or /run/damselfly/nydus]")
@one_line_errors
def serve_command(socket_path: Path | None) -> None:
    """Make and take down lazy mounts for clients of a Unix socket, until SIGTERM or Ctrl-C.

    A mount through the service skips the Python start of `damselfly nydus mount` (about
    0.1 s of every container start). POST /mount and /umount take the command's options as
    JSON; see the README.
    """
    from damselfly.nydus.service import MountService, default_socket

    service = MountService(socket_path or default_socket())
    log.info("mount service listening on %s", service.path)
    try:
        service.serve_until_signalled()
    finally:
        service.server_close()
    log.info("mount service stopped; its mounts stay until unmounted")


@nydus.command("umount")
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the fetch statistics as JSON.")
@one_line_errors
def umount_command(mountpoint: Path, as_json: bool) -> None:
    """Unmount a lazy mount and stop its FUSE server; prints how much was fetched."""
    from damselfly.nydus.mount import umount

    stats = umount(mountpoint)
    if as_json:
        click.echo(json.dumps(stats))
    elif stats:
        share = stats["fetched_bytes"] / stats["image_bytes"] if stats.get("image_bytes") else 0.0
        click.echo(f"unmounted {mountpoint}: fetched {stats['fetched_bytes']} of {stats['image_bytes']} blob bytes "
                   f"({share:.1%}) in {stats['requests']} requests; {stats['cached_chunks']}/{stats['chunks']} "
                   "chunks cached")
