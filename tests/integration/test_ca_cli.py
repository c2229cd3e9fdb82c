"""`damselfly ca` and --tls-dir as a user meets them: files and modes, clear refusals."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path


def damselfly(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "damselfly", *args], capture_output=True, text=True, timeout=60)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ca_init_and_issue_write_private_files_and_refuse_clearly(tmp_path: Path) -> None:
    ca, host = tmp_path / "new/ca", tmp_path / "hosts/seed-1"
    assert damselfly("ca", "init", "--dir", str(ca)).returncode == 0
    assert mode(ca) == 0o700 and mode(ca / "ca-key.pem") == 0o600
    again = damselfly("ca", "init", "--dir", str(ca))
    assert again.returncode == 1 and "a cluster keeps its CA" in again.stderr and "Traceback" not in again.stderr
    issued = damselfly("ca", "issue", "--dir", str(ca), "--name", "seed-1", "--role", "seed", "--ip", "127.0.0.1",
                       "--out", str(host))
    assert issued.returncode == 0, issued.stderr
    assert {p.name for p in host.iterdir()} == {"ca.pem", "cert.pem", "key.pem"}
    assert mode(host) == 0o700 and mode(host / "key.pem") == 0o600
    for bad, says in ((["--role", "admin"], "admin"), (["--ip", "not-an-ip"], "not-an-ip")):
        refused = damselfly("ca", "issue", "--dir", str(ca), "--name", "x", *bad, "--out", str(tmp_path / "x"))
        assert refused.returncode != 0 and says in refused.stderr and "Traceback" not in refused.stderr
    # A peer certificate cannot run a seed or a scheduler: said at start, in one line.
    damselfly("ca", "issue", "--dir", str(ca), "--name", "node-4", "--out", str(tmp_path / "node-4"))
    for command in (["daemon", "--seed", "--scheduler", "127.0.0.1:1", "--data-dir", str(tmp_path / "data")],
                    ["scheduler"]):
        wrong = damselfly(*command, "--tls-dir", str(tmp_path / "node-4"))
        assert wrong.returncode == 2 and "has role peer" in wrong.stderr, wrong.stderr


def test_without_certificates_peers_ports_stay_on_loopback_unless_insecure(tmp_path: Path) -> None:
    for command in (["scheduler", "--listen", "0.0.0.0:18002"],
                    ["daemon", "--scheduler", "127.0.0.1:1", "--upload-listen", "0.0.0.0:18003",
                     "--data-dir", str(tmp_path / "data")]):
        refused = damselfly(*command)
        assert refused.returncode == 2 and "--insecure" in refused.stderr and "--tls-dir" in refused.stderr
