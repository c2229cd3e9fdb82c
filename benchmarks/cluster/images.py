"""Benchmark images built from Debian packages with debootstrap, cached between runs.

``python``: a minimal Debian root filesystem with python3; runs ``python3 -V``.
``nginx``: Debian with nginx plus a layer of data, about 500 MB; runs ``nginx -v``.
``large``: the python root filesystem plus four data layers of ``size`` bytes in all,
like the talk's TensorFlow image; runs ``python3 -V``.
Root filesystems and layers are cached under ``cache_dir`` and rebuilt only when
missing; data layers are seeded, so a rebuild gives the same digests. The Debian mirror
is the one this machine's apt uses.
"""

from __future__ import annotations

import gzip
import hashlib
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

from testkit.images import LAYER_GZIP, LAYER_TAR, Image, Layer, image_from_layers

SUITE = "bookworm"
CACHE = Path.home() / ".cache" / "damselfly-bench"  # built images, kept between runs
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


def _rootfs(cache: Path, packages: list[str], marker: str) -> Path:
    rootfs = cache / "rootfs"
    if (rootfs / marker).exists():
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


def _base(cache_dir: Path, name: str, packages: list[str], marker: str) -> Layer:
    cache = cache_dir / name
    cache.mkdir(parents=True, exist_ok=True)
    return _layer(_rootfs(cache, packages, marker), cache)


def data_layer(cache_dir: Path, size: int, seed: int) -> Layer:
    """A tar holding ``size`` seeded pseudo-random bytes (incompressible, reproducible, cached)."""
    path = cache_dir / "data" / f"data-{size}-{seed}.tar"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        generator = random.Random(seed)
        tmp = path.with_suffix(".tmp")
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo(f"data/blob-{seed}.bin")
            info.size, info.mtime = size, 0
            tar.addfile(info, _RandomReader(generator, size))
        tmp.replace(path)
    data = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return Layer(data, LAYER_TAR, digest)


class _RandomReader:
    def __init__(self, generator: random.Random, size: int) -> None:
        self._generator, self._left = generator, size

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        self._left -= n
        return self._generator.randbytes(n)


def python_image(cache_dir: Path) -> Image:
    return image_from_layers("bench/python", [_base(cache_dir, "python", ["python3-minimal"], "usr/bin/python3")],
                             ["python3", "-V"])


def nginx_image(cache_dir: Path, data_size: int = 450 * 1024 * 1024) -> Image:
    base = _base(cache_dir, "nginx", ["nginx-light"], "usr/sbin/nginx")
    return image_from_layers("bench/nginx", [base, data_layer(cache_dir, data_size, 1)], ["nginx", "-v"],
                             path="/usr/sbin:/usr/bin:/sbin:/bin")


def large_image(cache_dir: Path, size: int) -> Image:
    base = _base(cache_dir, "python", ["python3-minimal"], "usr/bin/python3")
    layers = [data_layer(cache_dir, size // 4, 100 + i) for i in range(4)]
    return image_from_layers("bench/large", [base, *layers], ["python3", "-V"])
