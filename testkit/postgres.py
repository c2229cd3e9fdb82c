"""A real PostgreSQL (the Debian ``postgresql`` package) in a temporary directory, on a free
loopback port: initdb, pg_ctl start, one database per caller, pg_ctl stop.

PostgreSQL refuses to run as root, so as root the cluster belongs to, and runs as, the
``postgres`` system user (the package creates it) or else ``nobody``.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from testkit.wait import free_port

DEBIAN_BIN_DIRS = Path("/usr/lib/postgresql")
USER = "damselfly"


def postgres_bin_dir() -> Path:
    """The newest PostgreSQL's bin directory (Debian keeps each major version apart)."""
    found = []
    for initdb in DEBIAN_BIN_DIRS.glob("*/bin/initdb"):
        version = initdb.parent.parent.name
        if version.isdigit():
            found.append((int(version), initdb.parent))
    if found:
        return max(found)[1]
    initdb_path = shutil.which("initdb")
    if initdb_path:
        return Path(initdb_path).parent
    raise RuntimeError("PostgreSQL is not installed: install the Debian package postgresql (scripts/test does)")


def _run_as() -> str | None:
    """The user the server runs as: None (this one) unless this is root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root, and neither the user postgres nor nobody exists to run PostgreSQL")


@dataclass
class Postgres:
    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_hex(12))
    workdir: Path | None = None
    _run_user: str | None = None
    _databases: int = 0

    @property
    def data_dir(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "data"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(postgres_bin_dir() / args[0]), *args[1:]], capture_output=True, text=True,
                              timeout=timeout, user=self._run_user, cwd=self.workdir)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} exited {done.returncode}: {done.stdout}{done.stderr}"
                               f"{self._log_tail()}")
        return done

    def _log_tail(self) -> str:
        log = self.workdir / "postgres.log" if self.workdir else None
        return "\n" + log.read_text(errors="replace")[-2000:] if log and log.exists() else ""

    def start(self) -> "Postgres":
        self._run_user = _run_as()
        # Not under pytest's tmp_path: its parents are root's, 0700, and the server's user
        # must reach its directory.
        self.workdir = Path(tempfile.mkdtemp(prefix="damselfly-pg-"))
        password_file = self.workdir / "password"
        password_file.write_text(self.password + "\n")
        if self._run_user is not None:
            entry = pwd.getpwnam(self._run_user)
            for path in (self.workdir, password_file):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data_dir), "-U", USER, f"--pwfile={password_file}", "--auth=scram-sha-256",
                  "--encoding=UTF8", "--locale=C", "--no-sync")
        # fsync off and no unix socket: a throwaway cluster, reached on loopback TCP only.
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories='{self.workdir}' "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data_dir), "-l",
                  str(self.workdir / "postgres.log"), "-o", options, timeout=90)
        return self

    def create_database(self, prefix: str = "manager") -> str:
        """A new, empty database; its URL (postgresql://USER:PASSWORD@127.0.0.1:PORT/NAME)."""
        import psycopg

        self._databases += 1
        name = re.sub(r"[^a-z0-9_]", "_", f"{prefix}_{self._databases}".lower())
        with psycopg.connect(host="127.0.0.1", port=self.port, user=USER, password=self.password, dbname="postgres",
                             autocommit=True, connect_timeout=10) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')  # a name made of [a-z0-9_] above
        return self.url(name)

    def url(self, database: str) -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self.workdir is None:
            return
        try:
            if (self.data_dir / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30", timeout=60)
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
