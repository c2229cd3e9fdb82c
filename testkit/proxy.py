"""Debian's tinyproxy as the HTTP proxy that a site's environment names."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path

from damselfly.lib.blockinghttp import PROXY_VARIABLES
from testkit.processes import stop_process
from testkit.wait import free_port, wait_until


def forget_proxies(environ: MutableMapping[str, str]) -> None:
    """Drop the proxy variables, for tests and benchmarks: they talk only to servers they
    start themselves, which a site's proxy would not reach."""
    for name in (*PROXY_VARIABLES, "no_proxy"):
        environ.pop(name, None)
        environ.pop(name.upper(), None)


@dataclass
class Tinyproxy:
    url: str  # with the user and password, if it wants them
    log: Path

    def requests(self) -> list[str]:
        """The request lines it received, in order: ``GET http://host/path HTTP/1.1``, ``CONNECT host:port ...``."""
        return [line.split("): ", 1)[1] for line in self.log.read_text(errors="replace").splitlines()
                if "Request (file descriptor" in line]


@contextlib.contextmanager
def tinyproxy(workdir: Path, connect_ports: Iterable[int] = (), credentials: tuple[str, str] | None = None
              ) -> Iterator[Tinyproxy]:
    """tinyproxy on a free loopback port; it tunnels (CONNECT) to ``connect_ports`` and, with
    ``credentials``, answers 407 to whoever does not give them."""
    workdir.mkdir(parents=True, exist_ok=True)
    port, log, config = free_port(), workdir / "tinyproxy.log", workdir / "tinyproxy.conf"
    lines = [f"Port {port}", "Listen 127.0.0.1", "Allow 127.0.0.1", "Timeout 30", "MaxClients 50",
             *(f"ConnectPort {p}" for p in connect_ports)]
    if credentials:
        lines.append(f"BasicAuth {credentials[0]} {credentials[1]}")
    config.write_text("\n".join(lines) + "\n")
    with open(log, "wb") as output:
        process = subprocess.Popen(["tinyproxy", "-d", "-c", str(config)], stdout=output, stderr=output)

    def listening() -> bool:
        with socket.socket() as client:
            return client.connect_ex(("127.0.0.1", port)) == 0

    user = f"{credentials[0]}:{credentials[1]}@" if credentials else ""
    try:
        wait_until(listening, 10, "tinyproxy")
        yield Tinyproxy(f"http://{user}127.0.0.1:{port}", log)
    finally:
        stop_process(process)
