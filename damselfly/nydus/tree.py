"""An image's root filesystem as a tree, built by applying OCI layers the way a runtime does.

Whiteouts (``.wh.NAME``) and opaque markers (``.wh..wh..opq``) hide what lower layers put
there, never what the same layer adds; hard links share one node; directories that a layer
names again keep their children and take the new metadata.
"""

from __future__ import annotations

import base64
import stat
import tarfile
from dataclasses import dataclass, field
from typing import IO, Callable

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
MAX_SYMLINK_HOPS = 40  # as the kernel allows


class LayerError(ValueError):
    """A layer that cannot be applied (a path escaping the root, a hard link to nothing)."""


def encode_dev(major: int, minor: int) -> int:
    """The kernel's new_encode_dev, which EROFS stores for device inodes."""
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


def decode_dev(value: int) -> tuple[int, int]:
    return (value & 0xFFF00) >> 8, (value & 0xFF) | ((value >> 12) & 0xFFF00)


@dataclass(eq=False)
class Node:
    """One inode; several names may point at the same node (hard links)."""

    mode: int
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    mtime_nsec: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    size: int = 0
    target: bytes = b""
    rdev: int = 0
    chunks: list = field(default_factory=list)
    children: dict[str, "Node"] = field(default_factory=dict)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


def new_root() -> Node:
    return Node(mode=stat.S_IFDIR | 0o755)


def split_path(name: str) -> list[str]:
    """Components of a member name, relative to the root; '..' may not climb out."""
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise LayerError(f"path {name!r} escapes the image root")
            parts.pop()
            continue
        parts.append(part)
    return parts


def _clamped(components: list[str]) -> list[str]:
    """A symlink target's components resolved inside the root: '..' stops at the root."""
    parts: list[str] = []
    for part in components:
        if part == "..":
            if parts:
                parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return parts


def _mtime(member: tarfile.TarInfo) -> tuple[int, int]:
    exact = member.pax_headers.get("mtime")
    if exact:
        whole, _, fraction = exact.partition(".")
        return int(whole), int((fraction + "000000000")[:9]) if fraction else 0
    return int(member.mtime), 0


def _xattrs(member: tarfile.TarInfo) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            found[key[len("SCHILY.xattr."):]] = value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            found[key[len("LIBARCHIVE.xattr."):]] = base64.b64decode(value + "=" * (-len(value) % 4))
    return found


def node_from_member(member: tarfile.TarInfo) -> Node:
    kind = {tarfile.DIRTYPE: stat.S_IFDIR, tarfile.SYMTYPE: stat.S_IFLNK, tarfile.CHRTYPE: stat.S_IFCHR,
            tarfile.BLKTYPE: stat.S_IFBLK, tarfile.FIFOTYPE: stat.S_IFIFO}.get(member.type, stat.S_IFREG)
    if member.type not in tarfile.REGULAR_TYPES and kind == stat.S_IFREG:
        raise LayerError(f"{member.name!r}: unsupported tar entry type {member.type!r}")
    seconds, nanos = _mtime(member)
    permissions = 0o777 if kind == stat.S_IFLNK else member.mode & 0o7777  # Linux symlinks are always 0777
    node = Node(mode=kind | permissions, uid=member.uid, gid=member.gid, mtime=seconds,
                mtime_nsec=nanos, xattrs=_xattrs(member))
    if kind == stat.S_IFLNK:
        node.target = member.linkname.encode("utf-8", "surrogateescape")
        node.size = len(node.target)
    elif kind in (stat.S_IFCHR, stat.S_IFBLK):
        node.rdev = encode_dev(member.devmajor, member.devminor)
    elif kind == stat.S_IFREG:
        node.size = member.size
    return node


class LayerApplier:
    """Applies one layer's tar stream onto a tree; ``store`` receives each regular file's data."""

    def __init__(self, root: Node, store: Callable[[Node, IO[bytes]], None]) -> None:
        self.root = root
        self.store = store
        self.added: set[tuple[str, ...]] = set()

    def apply(self, tar: tarfile.TarFile) -> None:
        for member in tar:
            self.apply_member(tar, member)

    def _directory(self, parts: list[str]) -> tuple[Node, tuple[str, ...]]:
        found = self._walk(parts, create=True)
        assert found is not None
        return found

    def _walk(self, parts: list[str], create: bool) -> tuple[Node, tuple[str, ...]] | None:
        """The directory at ``parts`` and its real path. Symlinks on the way are followed inside
        the root, as a runtime unpacking the layer would; with ``create``, directories a layer
        left implicit are made (0755, root-owned), otherwise a missing one gives None."""
        node, path = self.root, ()
        pending = list(parts)
        hops = 0
        while pending:
            part = pending.pop(0)
            child = node.children.get(part)
            if child is not None and stat.S_ISLNK(child.mode):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise LayerError(f"too many symlinks under /{'/'.join(parts)}")
                target = child.target.decode("utf-8", "surrogateescape")
                base = [] if target.startswith("/") else list(path)
                pending = _clamped(base + target.split("/")) + pending
                node, path = self.root, ()
                continue
            if child is None:
                if not create:
                    return None
                child = new_root()
                node.children[part] = child
                self.added.add(path + (part,))
            elif not child.is_dir:
                if not create:
                    return None
                raise LayerError(f"/{'/'.join(path + (part,))} is not a directory, yet the layer puts files in it")
            node, path = child, path + (part,)
        return node, path

    def _file(self, name: str) -> Node | None:
        """The node a hard link names, or None."""
        *parent_parts, base = split_path(name) or [""]
        found = self._walk(parent_parts, create=False)
        return found[0].children.get(base) if found else None

    def _prune(self, directory: Node, parts: tuple[str, ...]) -> None:
        """Drop what lower layers left under an opaque directory."""
        for name, child in list(directory.children.items()):
            path = parts + (name,)
            if path not in self.added:
                del directory.children[name]
            elif child.is_dir:
                self._prune(child, path)

    def apply_member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = split_path(member.name)
        if not parts:  # the root itself
            if member.isdir():
                replacement = node_from_member(member)
                replacement.children = self.root.children
                self.root.__dict__.update(replacement.__dict__)
            return
        *parent_parts, base = parts
        if base == OPAQUE_MARKER:
            self._prune(*self._directory(parent_parts))
            return
        if base.startswith(WHITEOUT_PREFIX):
            found = self._walk(parent_parts, create=False)
            hidden = base[len(WHITEOUT_PREFIX):]
            if found is not None and found[1] + (hidden,) not in self.added:
                found[0].children.pop(hidden, None)
            return
        parent, parent_path = self._directory(parent_parts)
        key = parent_path + (base,)
        if member.islnk():
            target = self._file(member.linkname)
            if target is None or target.is_dir:
                raise LayerError(f"hard link {member.name!r} points at {member.linkname!r}, which is not a file")
            parent.children[base] = target
            self.added.add(key)
            return
        node = node_from_member(member)
        existing = parent.children.get(base)
        if node.is_dir and existing is not None and existing.is_dir:
            node.children = existing.children
        if stat.S_ISREG(node.mode):
            source = tar.extractfile(member)
            assert source is not None
            self.store(node, source)
        parent.children[base] = node
        self.added.add(key)


def walk(root: Node) -> list[tuple[str, Node]]:
    """(path, node) for every name, parents first, children by name."""
    out: list[tuple[str, Node]] = [("/", root)]
    stack = [("", root)]
    while stack:
        prefix, node = stack.pop()
        for name in sorted(node.children, reverse=True):
            child = node.children[name]
            path = f"{prefix}/{name}"
            out.append((path, child))
            if child.is_dir:
                stack.append((path, child))
    return out
