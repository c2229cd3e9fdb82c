"""Benchmark images built from Debian packages with debootstrap, cached between runs.

``python``: a minimal Debian root filesystem with python3; the container runs
``python3 -V``. The root filesystem and its layer are cached under ``cache_dir`` and
rebuilt only when missing. The Debian mirror is the one this machine's apt uses.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
from pathlib import Path

from tests.support.images import LAYER_GZIP, Image, Layer, image_from_layers

SUITE = "bookworm"
SOURCES = [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]
# Left out of the image: apt's caches and documentation, as slim images do.
TRIM = ["var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale"]


def apt_mirror() -> str:
    """The Debian archive URL this machine's apt is configured with."""
    for path in SOURCES:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] == ["URIs:"] and not words[1].endswith("-security"):
                return words[1]
            if words[:1] == ["deb"] and "security" not in line:
                return next(w for w in words[1:] if w.startswith("http"))
    raise RuntimeError("no Debian mirror in apt's sources: cannot debootstrap")


def _rootfs(cache: Path, packages: list[str]) -> Path:
    rootfs = cache / "rootfs"
    if (rootfs / "usr/bin/python3").exists():
        return rootfs
    if not shutil.which("debootstrap"):
        raise RuntimeError("debootstrap is missing (Debian package debootstrap)")
    shutil.rmtree(rootfs, ignore_errors=True)
    subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", SUITE, str(rootfs),
                    apt_mirror()], check=True, capture_output=True)
    for relative in TRIM:
        target = rootfs / relative
        if target.is_dir():
            for child in target.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    return rootfs


def _layer(rootfs: Path, cache: Path) -> Layer:
    """The root filesystem as one reproducible gzip tar layer (cached)."""
    tar_path, gz_path = cache / "layer.tar", cache / "layer.tar.gz"
    if not gz_path.exists():
        subprocess.run(["tar", "--sort=name", "--mtime=@0", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf",
                        str(tar_path), "."], check=True)
        with open(tar_path, "rb") as src, gzip.GzipFile(gz_path, "wb", compresslevel=1, mtime=0) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    diff = hashlib.sha256()
    with gzip.open(gz_path, "rb") as f:
        while chunk := f.read(1 << 20):
            diff.update(chunk)
    tar_path.unlink(missing_ok=True)
    return Layer(gz_path.read_bytes(), LAYER_GZIP, "sha256:" + diff.hexdigest())


def python_image(cache_dir: Path) -> Image:
    cache = cache_dir / "python"
    cache.mkdir(parents=True, exist_ok=True)
    layer = _layer(_rootfs(cache, ["python3-minimal"]), cache)
    return image_from_layers("bench/python", [layer], ["python3", "-V"])
