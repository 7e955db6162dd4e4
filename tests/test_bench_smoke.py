"""The benchmark harness in its smoke form (tiny sizes, one repeat), so it cannot rot: every scenario but
Slurm's (which needs root and the anchors' Slurm), and --commit, which measures an exported commit."""

import json
import os
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke(tmp_path, *args: str) -> tuple[str, dict]:
    """Run bench/run.py --smoke with args; its table and its --json data."""
    out = tmp_path / "bench.json"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "run.py"), "--smoke", "--json", str(out),
                           "--root", str(tmp_path / "root"), *args],  # (not /var/tmp/grun-bench: nothing left behind)
                          capture_output=True, text=True, timeout=80, cwd=str(tmp_path))
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert elapsed < 60, f"smoke run took {elapsed:.0f} s"
    data = json.loads(out.read_text())
    errors = [r for r in data["rows"] if "ERROR" in r["note"]]
    assert not errors, errors
    return proc.stdout, data


def row(data: dict, scenario: str, prefix: str) -> dict:
    """The first row of a scenario whose name starts with prefix; it has a figure and no failed run."""
    found = [r for r in data["rows"] if r["scenario"] == scenario and r["name"].startswith(prefix)]
    assert found, (scenario, prefix)
    assert found[0]["value"] is not None and "failed runs" not in found[0]["note"], found[0]
    return found[0]


@pytest.mark.timeout(90)
def test_bench_smoke(tmp_path):
    table, data = smoke(tmp_path)
    assert "grun benchmark" in table and "cores" in table and "Python" in table
    for scenario in ("1 throughput", "2 latency", "3 scale", "4 history", "5 streaming"):
        assert scenario in table, scenario
    assert data["machine"]["cores"] == os.cpu_count()
    assert data["machine"]["smoke"] is True
    assert data["machine"]["git_commit"].startswith("working tree")

    def value(scenario, prefix):
        return row(data, scenario, prefix)["value"]

    assert value("1 throughput", "API, one submit_many batch") > 0
    assert value("1 throughput", "CLI loop") > 0
    assert value("1 throughput", "API, 2 submitter processes") > 0
    assert value("1 throughput", "reference: Python spawns /bin/true, sequential") > 0
    assert value("2 latency", "`grun true` p50") > 0
    assert "launch_to_submit" in row(data, "2 latency", "`grun true` p50")["note"]  # latency.run_phases
    assert value("2 latency", "python -X importtime -m grun.cli --version") > 0
    assert value("3 scale", "50 nodes: dispatch, 500 jobs") > 0
    assert value("3 scale", "50 nodes: backlog of 500 queued") > 0
    assert value("3 scale", "50 nodes: master RSS") > 0
    assert value("4 history", "master restart with") > 0
    assert value("5 streaming", "4 MiB: `grun head") > 0


@pytest.mark.timeout(90)
def test_bench_smoke_of_a_commit(tmp_path):
    """--commit exports a commit's grun and measures it: the API submitters (helper processes) included."""
    if subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    _, data = smoke(tmp_path, "--commit", "HEAD", "--only", "1", "--modes", "api")
    assert data["machine"]["git_commit"].startswith("git "), data["machine"]
    assert row(data, "1 throughput", "API, 2 submitter processes")["value"] > 0


@pytest.mark.timeout(90)
def test_bench_smoke_of_staging(tmp_path):
    """Scenario 10 (issue 14): an input staged onto a `stage: always` node, next to the output stream."""
    _, data = smoke(tmp_path, "--only", "10")
    assert row(data, "10 staging", "4 MiB staged in")["value"] > 0
    assert row(data, "10 staging", "4 MiB output stream")["value"] > 0


@pytest.mark.timeout(90)
def test_bench_smoke_of_the_trace(tmp_path):
    """Scenario 9 (issue 11): the trace in its three modes, each with its figures."""
    _, data = smoke(tmp_path, "--only", "9")
    for mode in ("defaults", "overask", "learned"):
        assert row(data, "9 trace", f"({mode}) makespan")["value"] > 0
        assert row(data, "9 trace", f"({mode}) peak concurrency")["value"] >= 1
    assert row(data, "9 trace", "(learned) makespan")["runs"] and data["details"]["9 trace"]["learned"][0]["n"] == 24
