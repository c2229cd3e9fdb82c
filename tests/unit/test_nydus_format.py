"""RAFS v6 records, the reader on files the real nydus tools made, layer application and the builder."""

from __future__ import annotations

import hashlib
import io
import stat
import tarfile
from pathlib import Path

import pytest

from damselfly.nydus.builder import BlobWriter, ChunkSettings, build_bootstrap, directory_blocks
from damselfly.nydus.layout import (
    BlobEntry, ChunkAddress, ChunkInfoV2, Compressor, DeviceSlot, Digester, FormatError, Inode, Layout,
)
from damselfly.nydus.rafs import Bootstrap, read_toc, rebuild_uncompressed
from damselfly.nydus.tree import LayerApplier, LayerError, Node, decode_dev, encode_dev, new_root

FIXTURES = Path(__file__).parent.parent / "fixtures" / "nydus"
BLOB_ID = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"


# --- records -------------------------------------------------------------------------------------------------

def test_chunk_address_splits_the_chunk_index_over_low_and_high_halves() -> None:
    address = ChunkAddress(blob_index=2, chunk_index=0x12345, blkaddr=77)
    packed = address.pack()
    assert packed[2] == 3  # EROFS reads the low byte of the high half as the device id
    assert ChunkAddress.unpack(packed, 0) == address
    assert ChunkAddress.unpack(b"\0\0\0\0\xff\xff\xff\xff", 0) is None  # a hole


def test_chunk_info_v2_round_trips_offsets_sizes_and_flags() -> None:
    info = ChunkInfoV2(uncompressed_offset=5 << 12, uncompressed_size=1 << 20, compressed_offset=123456789,
                       compressed_size=4321, compressed=True)
    assert len(info.pack()) == 24
    assert ChunkInfoV2.unpack(info.pack(), 0) == info


def test_fixed_size_records_have_their_documented_sizes() -> None:
    assert len(DeviceSlot("a" * 64, 9, 512).pack()) == 128
    entry = BlobEntry("b" * 64, 0, 1 << 20, 2, Compressor.ZSTD, Digester.BLAKE3, 1, 10, 20)
    assert len(entry.pack()) == 256
    assert BlobEntry.unpack(entry.pack(), 0) == entry
    inode = Inode(Layout.CHUNK_BASED, 0o100644, 5, 0x28, 7, 1000, 1000, 12345, 6789, 1)
    assert len(inode.pack()) == 64
    assert Inode.unpack(inode.pack(), 0, (0, 0)) == inode


# --- the reader on real nydus files --------------------------------------------------------------------------

def test_reads_the_real_v6_bootstrap_and_rebuilds_its_blob(tmp_path: Path) -> None:
    bootstrap = Bootstrap.load(str(FIXTURES / "rafs-v6-2.2.boot"))
    assert [b.blob_id for b in bootstrap.blobs] == [BLOB_ID]
    assert bootstrap.blobs[0].compressor is Compressor.ZSTD
    assert bootstrap.ext.digester is Digester.BLAKE3
    assert bootstrap.superblock.root_nid == 128 and bootstrap.superblock.inos == 3
    files = {e.path: e for e in bootstrap.walk()}
    assert {p: e.inode.size for p, e in files.items() if stat.S_ISREG(e.mode)} == {
        "/lib.rs": 16931, "/sync_io.rs": 13400}
    device = tmp_path / "device"
    with open(FIXTURES / BLOB_ID, "rb") as blob, open(device, "wb") as out:
        assert rebuild_uncompressed(bootstrap, 0, blob, out) == 0x9000  # 9 blocks; digests checked on the way
    data = device.read_bytes()
    sync_io = files["/sync_io.rs"].chunks[0]
    start = sync_io.blkaddr * 4096
    assert data[start:start + 13400].startswith(b"// Copyright")


def test_reads_the_blob_toc_of_a_real_data_blob() -> None:
    blob = (FIXTURES / BLOB_ID).read_bytes()
    names = [entry.name for entry in read_toc(blob)]
    assert names == ["image.blob", "blob.meta", "blob.meta.header", "blob.digest"]
    inlined = (FIXTURES / "2fa78cad554b75ac91a4a125ed148d0ddeb25efa4aaa8bd80e5dc292690a4dca").read_bytes()
    boot = next(e for e in read_toc(inlined) if e.name == "image.boot")
    assert boot.uncompressed_size == 0x5000
    assert boot.sha256 == hashlib.sha256((FIXTURES / "2fa78cad-inline-image.boot").read_bytes()).digest()


def test_reads_larger_real_bootstraps() -> None:
    inline = Bootstrap.load(str(FIXTURES / "2fa78cad-inline-image.boot"))
    assert sorted(e.path for e in inline.walk()) == ["/", "/error.rs", "/lib.rs", "/logger.rs"]
    with tarfile.open(FIXTURES / "v6-bootstrap-chunk-pos-438272.tar.gz") as archive:
        member = archive.extractfile("image/image.boot")
        assert member is not None
        big = Bootstrap(member.read())
    entries = list(big.walk())
    assert big.blobs[0].compressor is Compressor.LZ4_BLOCK and len(big.chunks) == 2515
    assert len({e.nid for e in entries}) == big.superblock.inos == 3517
    assert all(big.chunk(address) for e in entries for address in e.chunks if address)


def test_refuses_v5_and_foreign_files_with_a_clear_message() -> None:
    with pytest.raises(FormatError, match="RAFS v5"):
        Bootstrap.load(str(FIXTURES / "rafs-v5-sha256-nocompress-repeatable.boot"))
    with pytest.raises(FormatError, match="not a RAFS v6 bootstrap"):
        Bootstrap(b"\0" * 8192)
    truncated = (FIXTURES / "rafs-v6-2.2.boot").read_bytes()[:4096]
    with pytest.raises(FormatError):
        list(Bootstrap(truncated).walk())


# --- layers -----------------------------------------------------------------------------------------------------

def _layer(*members: tuple[str, str, bytes | str]) -> tarfile.TarFile:
    """A tar stream of (name, kind, payload): kind 'f' file, 'd' dir, 'l' symlink, 'h' hard link, 'c' char dev."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1700000000
            data = None
            if kind == "f":
                data = payload if isinstance(payload, bytes) else payload.encode()
                info.size = len(data)
                info.mode = 0o644
            elif kind == "d":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "l":
                info.type, info.linkname = tarfile.SYMTYPE, str(payload)
            elif kind == "h":
                info.type, info.linkname = tarfile.LNKTYPE, str(payload)
            elif kind == "c":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    buffer.seek(0)
    return tarfile.open(fileobj=buffer, mode="r|")


def _contents(node: Node, source) -> None:
    node.chunks = [source.read()]


def _apply(root: Node, *members: tuple[str, str, bytes | str]) -> None:
    LayerApplier(root, _contents).apply(_layer(*members))


def test_whiteouts_and_opaque_directories_hide_only_lower_layers() -> None:
    root = new_root()
    _apply(root, ("etc", "d", ""), ("etc/a", "f", "1"), ("etc/b", "f", "2"), ("var", "d", ""),
           ("var/lib", "d", ""), ("var/lib/x", "f", "x"), ("var/keep", "f", "k"))
    _apply(root, ("etc/.wh.a", "f", ""), ("etc/c", "f", "3"), ("var/.wh..wh..opq", "f", ""),
           ("var/new", "f", "n"), ("etc/.wh.c", "f", ""))
    assert sorted(root.children["etc"].children) == ["b", "c"]  # a whiteout never hides its own layer's file
    assert sorted(root.children["var"].children) == ["new"]


def test_opaque_directory_keeps_what_its_own_layer_adds_below_it() -> None:
    root = new_root()
    _apply(root, ("d/sub/old", "f", "o"))
    _apply(root, ("d", "d", ""), ("d/sub", "d", ""), ("d/sub/new", "f", "n"), ("d/.wh..wh..opq", "f", ""))
    assert sorted(root.children["d"].children["sub"].children) == ["new"]


def test_hard_links_share_a_node_and_redeclared_directories_keep_children() -> None:
    root = new_root()
    _apply(root, ("bin", "d", ""), ("bin/sh", "f", "shell"), ("bin/dash", "h", "bin/sh"), ("dev", "d", ""),
           ("dev/null", "c", ""), ("bin/link", "l", "sh"))
    _apply(root, ("./bin/", "d", ""))
    bin_dir = root.children["bin"]
    assert bin_dir.children["sh"] is bin_dir.children["dash"]
    assert bin_dir.children["link"].target == b"sh"
    assert decode_dev(root.children["dev"].children["null"].rdev) == (1, 3)
    assert decode_dev(encode_dev(259, 70000)) == (259, 70000)


def test_files_under_a_symlinked_directory_land_where_it_points() -> None:
    root = new_root()
    _apply(root, ("usr/lib/libc.so", "f", "c"), ("lib", "l", "usr/lib"), ("bin", "l", "/usr/../usr/bin"))
    _apply(root, ("lib/extra.so", "f", "x"), ("bin/tool", "f", "t"), ("lib/.wh.libc.so", "f", ""))
    assert root.children["lib"].target == b"usr/lib"  # still a symlink
    assert sorted(root.children["usr"].children["lib"].children) == ["extra.so"]
    assert sorted(root.children["usr"].children["bin"].children) == ["tool"]


def test_bad_layers_are_refused() -> None:
    with pytest.raises(LayerError, match="escapes"):
        _apply(new_root(), ("../../etc/passwd", "f", "x"))
    with pytest.raises(LayerError, match="hard link"):
        _apply(new_root(), ("a", "h", "missing"))
    with pytest.raises(LayerError, match="not a directory"):
        _apply(new_root(), ("a", "f", "file"), ("a/b", "f", "under a file"))
    with pytest.raises(LayerError, match="too many symlinks"):
        _apply(new_root(), ("loop", "l", "loop"), ("loop/x", "f", "x"))


# --- the builder --------------------------------------------------------------------------------------------

def _build(settings: ChunkSettings, *layers: tuple[tuple[str, str, bytes | str], ...]):
    root, known, blobs, records, datas = new_root(), {}, [], [], []
    for members in layers:
        out = io.BytesIO()
        writer = BlobWriter(out, len(blobs), settings, known)
        LayerApplier(root, writer.add_file).apply(_layer(*members))
        if writer.records:
            blobs.append(writer.finish())
            records.extend(writer.records)
            datas.append(out.getvalue())
    return Bootstrap(build_bootstrap(root, blobs, settings, records)), datas


def _file_bytes(bootstrap: Bootstrap, blobs: list[bytes], path: str) -> bytes:
    entry = next(e for e in bootstrap.walk() if e.path == path)
    devices = []
    for index, blob in enumerate(blobs):
        out = io.BytesIO()
        rebuild_uncompressed(bootstrap, index, io.BytesIO(blob), out)
        devices.append(out.getvalue())
    pieces = []
    for address in entry.chunks:
        record = bootstrap.chunk(address)
        start = address.blkaddr * 4096
        pieces.append(devices[address.blob_index][start:start + record.uncompressed_size])
    return b"".join(pieces)[:entry.inode.size]


@pytest.mark.parametrize("compressor", [Compressor.ZSTD, Compressor.LZ4_BLOCK, Compressor.NONE])
def test_built_bootstrap_reads_back_as_the_tree(compressor: Compressor) -> None:
    big = bytes(range(256)) * 300  # 76800 bytes: several 16 KiB chunks
    settings = ChunkSettings(compressor=compressor, chunk_size=16384)
    names = [(f"many/entry-with-a-long-name-{i:04d}", "f", str(i)) for i in range(300)]  # > one dir block
    bootstrap, blobs = _build(settings, (("bin", "d", ""), ("bin/big", "f", big), ("bin/sh", "h", "bin/big"),
                                         ("bin/ln", "l", "big"), ("dev", "d", ""), ("dev/null", "c", ""),
                                         ("empty", "f", b""), *names),
                              (("bin/.wh.ln", "f", ""), ("bin/copy", "f", big)))
    entries = {e.path: e for e in bootstrap.walk()}
    assert "/bin/ln" not in entries
    assert entries["/bin/big"].nid == entries["/bin/sh"].nid and entries["/bin/big"].inode.nlink == 2
    assert decode_dev(entries["/dev/null"].rdev) == (1, 3)
    assert len([p for p in entries if p.startswith("/many/")]) == 300
    assert entries["/many"].inode.size > 4096
    assert _file_bytes(bootstrap, blobs, "/bin/big") == big
    assert _file_bytes(bootstrap, blobs, "/many/entry-with-a-long-name-0299") == b"299"
    assert len(blobs) == 1, "the second layer's file repeats known chunks, so it needs no blob of its own"
    assert entries["/bin/copy"].chunks == entries["/bin/big"].chunks
    assert [e.name for e in read_toc(blobs[0])][-1] == "blob.digest"
    assert bootstrap.blobs[0].blob_id == hashlib.sha256(blobs[0]).hexdigest()


def test_directory_blocks_never_split_an_entry() -> None:
    names = sorted(f"n{i:05d}".encode() * 10 for i in range(200))
    blocks = directory_blocks(names)
    assert sum(len(b) for b in blocks) == 200
    assert all(sum(12 + len(n) for n in block) <= 4096 for block in blocks)
