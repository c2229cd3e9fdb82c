"""The cluster-in-a-box harness in its quick form: every scenario completes with correct images."""

from __future__ import annotations

import json
import subprocess
import sys

from benchmarks.cluster.netns import PREFIX


def test_quick_run_completes_every_scenario_and_leaves_nothing(tmp_path):
    result = subprocess.run([sys.executable, "-m", "benchmarks", "run", "--quick", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = json.loads((tmp_path / "results.json").read_text())
    assert [r["scenario"] for r in records] == ["ociv1", "pull-through", "p2p-cold", "p2p-remote", "p2p-local",
                                                "local-registry", "nydus-cold", "nydus-p2p-cold", "nydus-p2p-remote",
                                                "nydus-p2p-local", "nydus-cache", "preheat"]
    for record in records:
        assert record["ok"] and record["nodes"] == 3 and len(record["start_seconds"]) == 3, record
    by_name = {r["scenario"]: r for r in records}
    image = by_name["ociv1"]["image_bytes"]
    assert by_name["ociv1"]["registry_bytes"] >= 3 * image  # every node pulled every layer itself
    assert by_name["p2p-cold"]["registry_bytes"] <= 1.05 * image  # the cluster pulled each layer once
    for name in ("p2p-remote", "p2p-local", "local-registry", "nydus-p2p-remote", "nydus-p2p-local", "nydus-cache"):
        assert by_name[name]["registry_bytes"] == 0, name
    # Lazy starts read a part of the image; through the daemons the registry serves it once for the cluster.
    for name in ("nydus-cold", "nydus-p2p-cold"):
        assert 0 < max(by_name[name]["fetched_bytes"]) < image, name
    assert by_name["nydus-p2p-cold"]["registry_bytes"] < by_name["nydus-cold"]["registry_bytes"]
    assert by_name["nydus-cache"]["fetched_bytes"] == [0, 0, 0]
    # The registry link's own counter agrees with its access log (plus headers and TCP overhead).
    for record in (by_name["ociv1"], by_name["p2p-cold"]):
        assert record["registry_timeline"][-1][1] >= record["registry_bytes"]
    # Every node that pulled over its link took in the image's bytes before its container ran.
    for name in ("ociv1", "p2p-cold", "p2p-remote"):
        record = by_name[name]
        assert len(record["download_seconds"]) == 3, name
        pairs = zip(sorted(record["download_seconds"]), sorted(record["start_seconds"]), strict=True)
        assert all(d <= s + 1.0 for d, s in pairs), name  # a link counter read a little late
    assert by_name["p2p-local"]["download_seconds"] == []  # nothing came over the link
    assert by_name["p2p-remote"]["seed_bytes"] >= image  # the seed sent every blob at least once
    # The preheat read the image from the registry once (the seed), reached every node, and
    # the starts after it read nothing more.
    preheat = by_name["preheat"]
    assert image <= preheat["registry_bytes"] <= 1.05 * image
    assert len(preheat["preheat_seconds"]) == 1 and preheat["bound_ratio"] > 0
    assert len(preheat["download_seconds"]) == 3 and max(preheat["download_seconds"]) <= preheat["preheat_seconds"][0] + 1.0
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert PREFIX not in namespaces
