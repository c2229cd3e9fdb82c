"""A real Redis (the Debian ``redis-server`` package) on a free loopback port, in a temporary
directory, with no persistence: what tests start, stop and start again on the same port
to play an outage or a restart that lost everything."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import redis

from testkit.processes import stop_process
from testkit.wait import free_port, wait_until


def redis_server_path() -> str:
    found = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists()
                                             else None)
    if found is None:
        raise RuntimeError("redis-server is not installed: install the Debian package redis-server "
                           "(scripts/test does)")
    return found


@dataclass
class RedisServer:
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"  # the address it binds (a bridge's, to be reached from network namespaces)
    process: subprocess.Popen[bytes] | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="damselfly-redis-")))

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> "RedisServer":
        log = open(self.workdir / "redis.log", "ab")
        # Protected mode admits loopback clients only; bound to another address (a benchmark's
        # bridge, which only its network namespaces reach), that bind is the limit instead.
        protected = "yes" if self.host in ("127.0.0.1", "::1") else "no"
        self.process = subprocess.Popen(
            [redis_server_path(), "--bind", self.host, "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", protected, "--daemonize", "no"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_until(self.ping, 15, f"redis-server on port {self.port} (log: {self.workdir / 'redis.log'})")
        return self

    def ping(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}: "
                               f"{(self.workdir / 'redis.log').read_text()[-2000:]}")
        try:
            return bool(redis.Redis(host=self.host, port=self.port, socket_timeout=1).ping())
        except redis.exceptions.ConnectionError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, socket_timeout=5)

    def stop(self) -> None:
        stop_process(self.process, kill=True)
        self.process = None

    def restart(self) -> None:
        """Down and up again on the same port, with nothing kept (no persistence)."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
