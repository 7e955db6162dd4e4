"""The master object on real files (its store in a temp dir), called in-process with no node (issue 10):
waits leave nothing behind, an ending job is always live or in history, task ids name tasks, a registration is
answered once its record is on disk, reloaded settings all apply, and status() warns of a damaged journal and a
full disk."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from grun.actors.master import Master


@pytest.fixture
def make_master(tmp_path):
    made = []

    def make(**settings) -> Master:
        master = Master(str(tmp_path / "master"), **settings)
        made.append(master)
        return master
    yield make
    for master in made:
        if not master._closing:  # (not shut down by the test itself)
            master.shutdown()


def _spec(**extra) -> dict:
    return {"cmd": ["true"], "cwd": "/", **extra}


def test_finished_waits_leave_no_watcher_behind(make_master):
    """Bug 2: every pass of wait() and every wait_started() added an Event that only a new record of
    the job removed, so a queued job's waiters grew without bound."""
    master = make_master()
    queued, other = master.submit_many([_spec(), _spec()])
    for _ in range(5):
        assert master.wait([queued, other], timeout=0.01) == {}
        assert master.wait_started(queued, timeout=0.01)["state"] == "queued"
    assert master.watchers == {}
    # a waiter woken by the job's end, and one still waiting when another record wakes it
    results = []
    waiter = threading.Thread(target=lambda: results.append(master.wait([queued], timeout=20)))
    waiter.start()
    while not master.watchers:
        threading.Event().wait(0.005)
    master.hold([other])
    master.kill([queued])
    waiter.join(20)
    assert results and results[0][str(queued)]["state"] == "killed"
    assert master.watchers == {}


def test_an_ending_job_is_always_live_or_in_history(make_master):
    """A job left the live table under the lock but reached history only after the journal's wait: on a slow disk,
    squeue-then-sacct (CI: jobs() then history()) saw it in neither."""
    master = make_master()
    journal_wait = master.store.journal.wait
    master.store.journal.wait = lambda seq: (time.sleep(0.5), journal_wait(seq))[1]  # a slow disk's fsync
    job_id = master.submit(_spec())
    killer = threading.Thread(target=master.kill, args=([job_id],))
    killer.start()
    while killer.is_alive():
        assert any(j["id"] == job_id for j in master.jobs() + master.history(5)), "neither live nor in history"
    killer.join()
    assert master.history(5)[0]["id"] == job_id


def test_a_task_id_names_a_task_of_an_array_only(make_master):
    """master.job("2.5") answered job 2 itself when job 2 was a task (of array 1), not "not an array"."""
    master = make_master()
    array = master.submit(_spec(array="1-3"))
    master.kill([f"{array}.2"])  # (task 2 becomes a job of its own to be killed)
    task = master.job(f"{array}.2")
    assert (task["array"], task["task"], task["state"]) == (array, 2, "killed") and task["id"] != array
    assert master.job(f"{array}.3")["id"] == array, "a task not begun: its array's record"
    with pytest.raises(LookupError, match=f"job {task['id']} is not an array"):
        master.job(f"{task['id']}.5")
    with pytest.raises(LookupError, match=f"job {array} has no task 9"):
        master.job(f"{array}.9")


def test_a_registration_is_answered_once_its_node_record_is_on_disk(make_master):
    """Bug 6: the reply could go out before the new node's record was durable."""
    master = make_master()
    journal = master.store.journal
    for i in range(20):
        master.register_node({"name": f"n{i}", "uri": f"PYRO:grun.node@127.0.0.1:{9000 + i}", "cpus": 2,
                              "memory": 1000, "running": [], "finished": []})
        assert journal._durable >= journal._seq, f"node n{i}: replied before its record was durable"


def _node(name: str, port: int) -> dict:
    return {"name": name, "uri": f"PYRO:grun.node@127.0.0.1:{port}", "cpus": 2, "memory": 1000, "heartbeat": 0.2,
            "incarnation": f"{name}:{port}", "running": [], "finished": []}


def _listening(backlog_full: bool = False) -> tuple[socket.socket, list]:
    """A port that takes connections (a node's daemon alive), or whose backlog is full (a connection waits out its
    timeout: a host that does not answer)."""
    server = socket.create_server(("127.0.0.1", 0), backlog=0)
    clients = [socket.socket() for _ in range(3 if backlog_full else 0)]
    for client in clients:
        client.setblocking(False)
        client.connect_ex(server.getsockname())
    return server, clients


def test_two_daemons_registering_one_new_name_at_once_one_is_refused(make_master):
    """The check for a live node's name (a copied config) ran outside the lock: two daemons registering one new name at
    the same instant both passed it, the second took the first's name. Now one step under the lock with the registration."""
    master, (a, _), (b, _) = make_master(), _listening(), _listening()
    results = {}

    def register(server):
        port = server.getsockname()[1]
        try:
            results[port] = master.register_node(_node("twin", port))
        except ValueError as exc:
            results[port] = str(exc)
    with a, b:
        with master.lock:  # (both arrive while it is held)
            threads = [threading.Thread(target=register, args=(s,)) for s in (a, b)]
            for t in threads:
                t.start()
            time.sleep(0.5)
        for t in threads:
            t.join(10)
    [(port, _)], [(_, refused)] = ([(p, r) for p, r in results.items() if isinstance(r, kind)] for kind in (dict, str))
    assert refused.startswith("not authorized: node twin at") and master.core.table.nodes["twin"].uri.endswith(f":{port}")


def test_the_probe_stops_with_the_master(make_master):
    """QA: the probe thread (hearing no node, the master tries their daemons' ports) could still be running at the
    master's shutdown and print a traceback at exit: it is a background loop that shutdown stops and joins at once."""
    server, clients = _listening(backlog_full=True)
    with server:
        master = make_master(node_timeout=1.0)
        for i in range(64):  # (each probe waits out 0.5 s: 2 s for all)
            master.register_node(_node(f"n{i}", server.getsockname()[1]))
        probing = lambda: any(t.name.startswith("grun-probe_") for t in threading.enumerate())  # (its pool's threads)
        deadline = time.monotonic() + 10
        while not probing() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert probing(), "hearing no node, the master probes them"
        began = time.monotonic()
        master.shutdown()
        assert not [t.name for t in threading.enumerate() if t.name.startswith("grun-probe")]
        assert time.monotonic() - began < 5, "the probes left are skipped"  # (2 s for all, and a loaded machine)
    for client in clients:
        client.close()


def test_the_probe_runs_only_when_no_node_is_heard(make_master, monkeypatch):
    """It woke every 5 s anyway, taking the lock twice for an empty pool."""
    monkeypatch.setattr("grun.actors.master.PROBE_SECS", 0.1)
    master, probes = make_master(), []
    step = master._prober.step
    master._prober.step = lambda: probes.append(step())
    time.sleep(1.5)
    assert probes == [], "it probed with every node heard"
    master._prober.wake()
    deadline = time.monotonic() + 5
    while not probes and time.monotonic() < deadline:
        time.sleep(0.05)
    assert probes, "woken, it probes"


def test_reconfigure_applies_all_seven_settings(make_master):
    master = make_master(default_priority=5, reserve_after=10.0)
    changed = master.reconfigure(default_cpus=0.5, default_memory=300, default_priority=7, node_timeout=30.0,
                                 requeue=False, min_free_disk=1, reserve_after=20.0, colour="red")
    assert changed == {"default_cpus": 0.5, "default_memory": 300, "default_priority": 7, "node_timeout": 30.0,
                       "requeue": False, "min_free_disk": 1, "reserve_after": 20.0}
    assert master.reconfigure(default_priority=7) == {}
    job = master.job(master.submit(_spec()))
    assert (job["priority"], job["cpus"], job["memory"]) == (7, 0.5, 300)
    assert master.core.settings["reserve_after"] == 20.0


def test_health_names_a_damaged_journal_and_a_full_disk(make_master, tmp_path):
    """Bug 4, through the master: the lost submission is named, not skipped in silence."""
    master = make_master()
    ids = master.submit_many([_spec(name=f"j{i}") for i in range(3)])
    assert master.status()["warnings"] == []
    master.shutdown()
    for name in list((tmp_path / "master").iterdir()):
        if name.name.startswith("snapshot."):
            name.unlink()  # so the journal is replayed
    path = tmp_path / "master" / "journal.1.log"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1][:30] + b"#" + lines[1][31:]
    path.write_bytes(b"".join(lines))
    master = make_master(min_free_disk=10**12)
    problems = master.status()["warnings"]
    assert len(problems) == 2, problems
    assert "damaged journal" in problems[0] and f"submit of job {ids[1]}" in problems[0]
    assert "journal.1.log.damaged" in problems[0] and "nearly full" in problems[1]
    assert sorted(j["id"] for j in master.jobs()) == [ids[0], ids[2]]
