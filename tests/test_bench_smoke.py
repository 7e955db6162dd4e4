"""The benchmark harness in its smoke form (tiny sizes, one repeat), so it cannot rot."""

import json
import os
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.timeout(90)
def test_bench_smoke(tmp_path):
    out = tmp_path / "bench.json"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "run.py"), "--smoke", "--json", str(out)],
                          capture_output=True, text=True, timeout=80, cwd=str(tmp_path))
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert elapsed < 60, f"smoke run took {elapsed:.0f} s"

    table = proc.stdout
    assert "grun benchmark" in table and "cores" in table and "Python" in table
    for scenario in ("1 throughput", "2 latency", "3 scale", "4 history", "5 streaming"):
        assert scenario in table, scenario

    data = json.loads(out.read_text())
    assert data["machine"]["cores"] == os.cpu_count()
    assert data["machine"]["smoke"] is True
    rows = data["rows"]
    assert not [r for r in rows if "ERROR" in r["note"]], [r for r in rows if "ERROR" in r["note"]]

    def value(scenario, prefix):
        found = [r for r in rows if r["scenario"] == scenario and r["name"].startswith(prefix)]
        assert found, (scenario, prefix)
        return found[0]["value"]

    assert value("1 throughput", "API, one submit_many batch") > 0
    assert value("1 throughput", "CLI loop") > 0
    assert value("1 throughput", "API, 2 submitter processes") > 0
    assert value("1 throughput", "reference: Python spawns /bin/true, sequential") > 0
    assert value("2 latency", "`grun true` p50") > 0
    assert value("2 latency", "python -X importtime -m grun.cli --version") > 0
    assert value("3 scale", "50 nodes: dispatch, 500 jobs") > 0
    assert value("3 scale", "50 nodes: backlog of 500 queued") > 0
    assert value("3 scale", "50 nodes: master RSS") > 0
    assert value("4 history", "master restart with") > 0
    assert value("5 streaming", "4 MiB: `grun head") > 0
