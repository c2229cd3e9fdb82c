"""The cluster-in-a-box network: namespaces on a bridge, shaped links, nothing left behind."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmarks.cluster.netns import Network, remove_stale
from testkit.processes import stop_process
from testkit.wait import wait_until

MiB = 1024 * 1024


def netns_names() -> list[str]:
    return [line.split()[0] for line in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                       text=True).stdout.splitlines() if line.strip()]


def test_hosts_reach_each_other_through_shaped_links_and_are_removed(tmp_path):
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(4 * MiB))
    with Network(run_id="991") as network:
        server = network.add_host("srv")
        client = network.add_host("cli", rate="40mbit")  # 5 MB/s into and out of the client
        assert network.gateway == "10.77.0.1" and client.address == "10.77.0.11"
        http = server.popen(sys.executable, "-m", "http.server", "8000", "--bind", server.address,
                            "--directory", str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://{server.address}:8000/payload.bin"
            wait_until(lambda: client.run("curl", "-sf", "-o", "/dev/null", "-r", "0-0", url, timeout=5).returncode == 0,
                       20, "the server in its namespace")
            fetched = client.run("curl", "-sf", "-o", "/dev/null", "-w", "%{size_download} %{speed_download}", url)
            size, speed = fetched.stdout.split()
            assert int(size) == 4 * MiB
            assert float(speed) < 1.5 * 5e6, f"the link is not shaped: {float(speed) / 1e6:.1f} MB/s"
            # The root namespace has no route into the hosts except through the bridge it owns.
            assert network.bridge in subprocess.run(["ip", "link"], capture_output=True, text=True).stdout
        finally:
            stop_process(http)
        assert {server.netns, client.netns} <= set(netns_names())
    assert not [n for n in netns_names() if n.startswith("dfly991")]
    assert "dfly991br" not in subprocess.run(["ip", "link"], capture_output=True, text=True).stdout


def test_leftovers_of_a_killed_run_are_removed():
    network = Network(run_id="992")
    network.add_host("gone")
    # Pretend the run was killed: nothing closed it.
    removed = remove_stale()
    assert "dfly992-gone" in removed and "dfly992br" in removed
    assert "dfly992-gone" not in netns_names()


def test_names_are_checked():
    with pytest.raises(ValueError):
        Network(run_id="993").add_host("Bad_Name")
