"""Indexed resources, GPUs first (issue 12): a node offers `gpu: [0, 1, 2]`, a job with -p gpu=2 gets two
specific devices (CUDA_VISIBLE_DEVICES, GRUN_GPUS), no two running jobs share one, suspended jobs keep
theirs, the assignment survives a master and a node restart, and `-q status` shows which are in use. The
decisions as pure code first, then grun.gpu against a fake nvidia-smi, then a real cluster."""
from __future__ import annotations

import os
import random
import stat

import pytest
from cluster import LocalCluster
from util import nowait, wait_state

from grun import gpu
from grun.config import ConfigError, load_config
from grun.core.master_state import MasterState
from grun.core.nodes import NodeIndex, NodeView, mismatch
from grun.core.placement import place

GPUS = ["0", "1", "2", "3"]


def _master(**resources) -> MasterState:
    m = MasterState(random.Random(0))
    m.handle("register", {"name": "g", "uri": "PYRO:x@g:1", "cpus": 8, "memory": 8000, "incarnation": "i",
                          "resources": resources or {"gpu": GPUS, "io": 8}}, 0.0)
    return m


def _submit(m: MasterState, gpus: float, now: float = 1.0) -> int:
    return m.handle("submit", m.requests([{"cmd": ["true"], "params": {"gpu": gpus}}]), None, now).reply[0]


def _devices(m: MasterState) -> dict:
    return {i: j.get("devices") for i, j in m.table.jobs.items()}


def test_jobs_placed_in_one_pass_get_distinct_devices_and_a_job_that_would_share_waits():
    node = NodeView("g", 8, 8000, resources={"gpu": 4.0}, devices={"gpu": GPUS})
    jobs = [{"id": i, "cpus": 1, "memory": 10, "priority": 0, "params": {"gpu": 2 if i < 3 else 1}} for i in (1, 2, 3)]
    plan = place(jobs, NodeIndex([node]), random.Random(0))
    assert [j["id"] for j, _ in plan.placed] == [1, 2] and plan.devices == [{"gpu": ["0", "1"]}, {"gpu": ["2", "3"]}]
    assert node.held == {"gpu": set(GPUS)} and not node.fits(jobs[2])
    node.take(jobs[0], -1, plan.devices[0])
    assert node.pick(jobs[2]) == {"gpu": ["0"]}, "the first free device"
    assert mismatch(node, {"params": {"gpu": 0.5}}) == "gpu is indexed: ask for a whole number"


def test_the_dispatch_record_names_the_devices_and_a_finished_job_frees_them():
    m = _master()
    a, b, c = _submit(m, 2), _submit(m, 1), _submit(m, 2)
    step = m.handle("schedule", 2.0)
    assert [r.get("devices") for r in step.records] == [{"gpu": ["0", "1"]}, {"gpu": ["2"]}]
    assert [j["devices"] for _, _, jobs in step.do for j in jobs] == [{"gpu": ["0", "1"]}, {"gpu": ["2"]}]
    assert _devices(m) == {a: {"gpu": ["0", "1"]}, b: {"gpu": ["2"]}, c: None}
    m.handle("finished", "g", [{"id": a, "exit_code": 0}], 3.0)
    m.handle("schedule", 4.0)
    assert _devices(m)[c] == {"gpu": ["0", "1"]} and m.table.nodes["g"].held == {"gpu": {"0", "1", "2"}}


def test_a_suspended_job_keeps_its_devices():
    m = _master()
    a = _submit(m, 4)
    m.handle("schedule", 2.0)
    m.handle("started", "g", {"started": {str(a): 5}, "incarnation": "i", "seq": 1}, 2.0)
    m.handle("signalled", "suspend", "g", [a], 3.0)
    assert m.table.jobs[a]["state"] == "suspended" and m.table.nodes["g"].held == {"gpu": set(GPUS)}
    b = _submit(m, 1, 4.0)
    m.handle("schedule", 5.0)
    assert m.table.jobs[b]["state"] == "queued", "its cpus are lent, its devices are not"


def test_the_assignment_survives_a_restart_from_the_journal_and_from_a_snapshot():
    m, records = MasterState(), []
    for event, *args in (("register", {"name": "g", "uri": "u", "cpus": 8, "memory": 8000, "resources": {"gpu": GPUS}}, 0.0),
                         ("submit", m.requests([{"cmd": ["true"], "params": {"gpu": 2}}] * 2), None, 1.0),
                         ("schedule", 2.0)):
        records += m.handle(event, *args).records
    from_journal, from_snapshot = MasterState(), MasterState()
    from_journal.recover(None, records, 9.0)
    from_snapshot.recover(m.table.snapshot(), [], 9.0)
    for replayed in (from_journal, from_snapshot):
        assert _devices(replayed) == _devices(m) == {1: {"gpu": ["0", "1"]}, 2: {"gpu": ["2", "3"]}}
        node = replayed.table.nodes["g"]
        assert (node.held, node.devices, node.resources) == ({"gpu": set(GPUS)}, {"gpu": GPUS}, {"gpu": 4.0})


def test_a_node_that_registers_again_with_its_list_keeps_the_assignment():
    m = _master(gpu=GPUS)
    a = _submit(m, 1)
    m.handle("schedule", 2.0)
    step = m.handle("register", {"name": "g", "uri": "u2", "cpus": 8, "memory": 8000, "incarnation": "j",
                                 "resources": {"gpu": [0, 1, 2, 3]}, "running": [a]}, 3.0,
                    dead="PYRO:x@g:1")  # (its daemon restarted elsewhere: the master found the old address refused)
    assert step.records[:1] == [{"op": "start", "id": a, "node": "g", "pid": None, "time": 3.0}], "no new node record"
    assert m.table.nodes["g"].held == {"gpu": {"0"}} and _devices(m)[a] == {"gpu": ["0"]}


def test_a_duplicate_device_or_a_bad_list_is_one_config_error_with_file_and_line(tmp_path):
    conf = tmp_path / "grun.conf"
    conf.write_text("services: exec\nresources:\n  io: 8\n  gpu: [0, 1, 1]\n")
    with pytest.raises(ConfigError, match=r"grun.conf:2: key 'resources': resource gpu: .*listed once each.*\[0, 1, 1\]"):
        load_config(str(conf), environ={})
    conf.write_text("resources: {gpu: [0, [1]]}\n")
    with pytest.raises(ConfigError, match=r"grun.conf:1: key 'resources': resource gpu"):
        load_config(str(conf), environ={})
    conf.write_text("resources: {gpu: [0, 1], scratch: 500}\n")
    assert load_config(str(conf), environ={}).resources == {"gpu": ["0", "1"], "scratch": 500.0}


def test_device_env_names_the_devices():
    assert gpu.device_env({"gpu": ["0", "2"], "fpga-x": ["a"]}) == {
        "GRUN_GPUS": "0,2", "CUDA_VISIBLE_DEVICES": "0,2", "GRUN_FPGA_XS": "a"}
    assert gpu.device_env(None) == {}


def _fake_smi(tmp_path, body: str) -> str:
    path = tmp_path / "bin" / "nvidia-smi"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path.parent)


def test_the_gpu_plugin_reads_nvidia_smi_then_proc_and_offers_nothing_without_a_gpu(tmp_path, monkeypatch):
    listing = ("GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-1b2c)\\nGPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-3d4e)")
    monkeypatch.setenv("PATH", _fake_smi(tmp_path, f'[ "$1" = -L ] && printf "{listing}\\n"'))
    assert gpu.GpuPlugin().node_resources() == {"resources": {"gpu": ["0", "1"]},
                                                "labels": {"gpu_model": "NVIDIA A100-SXM4-40GB"}}
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    proc = tmp_path / "proc"
    for minor, model in (("1", "Tesla T4"), ("0", "Tesla T4")):
        (proc / f"0000:0{minor}:00.0").mkdir(parents=True)
        (proc / f"0000:0{minor}:00.0" / "information").write_text(
            f"Model: \t\t {model}\nIRQ:   \t\t 42\nDevice Minor: \t {minor}\n")
    assert gpu.nvidia_gpus(proc=str(proc)) == [("0", "Tesla T4"), ("1", "Tesla T4")]
    assert gpu.nvidia_gpus(proc=str(tmp_path / "none")) == [] and gpu.GpuPlugin().node_resources() == {}


def test_a_hung_nvidia_smi_costs_its_timeout_not_the_node(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _fake_smi(tmp_path, "exec sleep 30"))
    monkeypatch.setattr(gpu, "NVIDIA_SMI_TIMEOUT", 0.3)
    assert gpu.nvidia_gpus(proc=str(tmp_path / "none")) == []


# ---- a real cluster -----------------------------------------------------------------------------

@pytest.fixture
def cluster():
    with LocalCluster({"g": {"cpus": 4, "memory": 4000, "resources": {"gpu": [0, 1, 2], "io": 8}}}) as c:
        yield c


def _status_devices(c) -> str:
    r = c.grun("-q", "status")
    assert r.returncode == 0, r.stderr
    return r.stdout.decode()


def test_jobs_see_their_own_gpus_never_shared_across_restarts_and_status_shows_them(cluster):
    c = cluster
    r = c.grun("-p", "gpu=2", "-p", "io=3", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES $GRUN_GPUS")
    assert (r.returncode, r.stdout) == (0, b"0,1 0,1\n"), r.stderr
    long = nowait(c, "-p", "gpu=2", "sleep", "60")
    assert wait_state(c, long, "running")["devices"] == {"gpu": ["0", "1"]}
    assert "DEVICES(in use)" in _status_devices(c) and " gpu 0,1 of 3 " in _status_devices(c)
    assert "  devices   gpu 0,1\n" in c.grun("-q", "jobs", "--long").stdout.decode()
    r = c.grun("-p", "gpu=1.5", "true")
    assert (r.returncode, r.stderr) == (1, (b"grun: gpu is indexed (devices): ask for a whole number, not 1.5 "
                                           b"(--force queues it anyway)\n"))
    c.kill("master")  # kill -9: the assignment is in the journal
    c.start_master()
    c.kill("g")       # and the node: it comes back with the job still running
    c.start_node("g")
    assert wait_state(c, long, "running")["devices"] == {"gpu": ["0", "1"]}
    r = c.grun("-p", "gpu=1", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES")
    assert (r.returncode, r.stdout) == (0, b"2\n"), "the one device the running job does not hold"
    waiting = nowait(c, "-p", "gpu=2", "true")
    assert "gpu" in c.grun("why", str(waiting)).stdout.decode()
    assert c.grun("-e", "hold", str(long)).returncode == 0  # suspended: still holds its devices
    wait_state(c, long, "suspended")
    assert c.client().job(waiting)["state"] == "queued"
    c.grun("-k", str(long))
    assert wait_state(c, waiting, "done", timeout=30)["devices"] == {"gpu": ["0", "1"]}


def test_a_node_offers_the_gpus_nvidia_smi_lists_through_the_built_in_plugin(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _fake_smi(tmp_path, 'printf "GPU 0: Tesla T4 (UUID: a)\\nGPU 1: Tesla T4 (UUID: b)\\n"')
                       + os.pathsep + os.environ["PATH"])
    with LocalCluster({"g": {"cpus": 2, "memory": 2000}}) as c:
        status = c.grun("-q", "status", "--long").stdout.decode()  # the built-in plugin, loaded by itself
        assert "grun.gpu:GpuPlugin" in next(line for line in status.splitlines() if "plugins of the node g" in line)
        [node] = c.client().nodes()
        assert node["devices"] == {"gpu": [["0", "1"], []]}
        r = c.grun("-p", "gpu=1", "-p", "gpu_model=Tesla*", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES")
        assert (r.returncode, r.stdout) == (0, b"0\n"), r.stderr
