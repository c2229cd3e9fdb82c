"""Comparing file trees, and building layers from real directories with GNU tar."""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import subprocess
from pathlib import Path

from testkit.images import LAYER_GZIP, Layer


def snapshot(root: Path, times: bool = True, hard_links: bool = True, xattrs: bool = True,
             setid: bool = True) -> dict[str, tuple]:
    """Everything an image's rootfs promises about each path: type, mode, owner, content, target, device,
    xattrs, mtimes of non-directories, and which names share an inode. The flags leave out what a
    given reader cannot keep (fsck.erofs 1.5 extracts neither xattrs nor hard links, and its chown
    after chmod clears set-id bits)."""
    found: dict[str, tuple] = {}
    inodes: dict[int, list[str]] = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames + ([""] if directory == str(root) else []):
            path = os.path.join(directory, name) if name else directory
            rel = "/" + os.path.relpath(path, root) if path != str(root) else "/"
            info = os.lstat(path)
            mode = info.st_mode if setid else info.st_mode & ~(stat.S_ISUID | stat.S_ISGID)
            content: object = None
            if stat.S_ISREG(mode):
                with open(path, "rb") as file:
                    content = (info.st_size, hashlib.sha256(file.read()).hexdigest())
                inodes.setdefault(info.st_ino, []).append(rel)
            elif stat.S_ISLNK(mode):
                content = os.readlink(path)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                content = (os.major(info.st_rdev), os.minor(info.st_rdev))
            attrs = tuple(sorted((k, os.getxattr(path, k, follow_symlinks=False))
                                 for k in os.listxattr(path, follow_symlinks=False))) if xattrs else ()
            mtime = info.st_mtime_ns if times and not stat.S_ISDIR(mode) and not stat.S_ISLNK(mode) else None
            found[rel] = (stat.filemode(mode), info.st_uid, info.st_gid, content, attrs, mtime)
    if hard_links:
        found["hard links"] = tuple(sorted(tuple(sorted(paths)) for paths in inodes.values() if len(paths) > 1))
    return found


def diff(expected: dict[str, tuple], actual: dict[str, tuple]) -> list[str]:
    """Readable differences, for assertion messages."""
    lines = [f"missing {p}" for p in sorted(set(expected) - set(actual))]
    lines += [f"extra {p}" for p in sorted(set(actual) - set(expected))]
    lines += [f"{p}: {expected[p]} != {actual[p]}" for p in sorted(set(expected) & set(actual))
              if expected[p] != actual[p]]
    return lines


def tar_layer(directory: Path) -> Layer:
    """A gzip layer of a directory as GNU tar writes it: owners, xattrs, devices, hard links, ns mtimes."""
    tar = subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "--format=pax",
                          "--sort=name", "-C", str(directory), "-cf", "-", "."], check=True,
                         capture_output=True).stdout
    return Layer(gzip.compress(tar, mtime=0), LAYER_GZIP, "sha256:" + hashlib.sha256(tar).hexdigest())
