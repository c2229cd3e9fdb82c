"""A private containerd instance (own root, state and socket), driven with ctr."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from testkit.processes import stop_process
from testkit.wait import wait_until


def write_hosts(hosts: Path, mirror_url: str, registry_host: str, registry_url: str) -> Path:
    """containerd's hosts directory ``hosts`` for pulls of ``registry_host`` through the
    mirror at ``mirror_url``, written by `damselfly containerd-config` as a user would."""
    subprocess.run([sys.executable, "-m", "damselfly", "containerd-config", "--mirror", mirror_url, "--dir", str(hosts),
                    "--registry", f"{registry_host}={registry_url}"], check=True, capture_output=True)
    return hosts


@dataclass
class Containerd:
    workdir: Path
    process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return str(self.workdir / "containerd.sock")

    def start(self) -> "Containerd":
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{self.workdir / "root"}"\n'
            f'state = "{self.workdir / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.address}"\n'
            f'[ttrpc]\n  address = "{self.address}.ttrpc"\n'
        )
        log = open(self.workdir / "containerd.log", "ab")
        self.process = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._ready, 30, f"containerd at {self.address}")
        return self

    def _ready(self) -> bool:
        if self.process and self.process.poll() is not None:
            raise RuntimeError(f"containerd exited: {(self.workdir / 'containerd.log').read_text()[-2000:]}")
        return self.ctr("version", check=False).returncode == 0

    def ctr(self, *args: str, check: bool = True, timeout: float = 180,
            via: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        """``via`` runs ctr under a prefix, e.g. ``ip netns exec NS`` so that a pull uses that host's network."""
        result = subprocess.run([*via, "ctr", "--address", self.address, *args], capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def stop(self) -> None:
        stop_process(self.process)
        self._kill_shims()
        subprocess.run(["umount", "-R", str(self.workdir / "state")], capture_output=True)

    def _kill_shims(self) -> None:
        """A task's shim that had not yet exited when containerd stopped stays, orphaned, for
        good (seen once in a few dozen benchmark runs), and so does its container in runc's
        state, which every instance shares: a later container of that name fails to start.
        Kill this instance's shims and delete their containers."""
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                argv = [arg.decode(errors="surrogateescape") for arg in cmdline.read_bytes().split(b"\0")]
            except OSError:
                continue
            if not argv[0].endswith("containerd-shim-runc-v2") or self.address not in argv:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
            options = dict(zip(argv[1::2], argv[2::2], strict=False))  # argv ends with an empty string
            if "-id" in options:
                subprocess.run(["runc", "--root", f"/run/containerd/runc/{options.get('-namespace', 'default')}",
                                "delete", "--force", options["-id"]], capture_output=True)
