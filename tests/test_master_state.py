"""The master's decisions as pure code (issue 10): each event gives the records to journal and the
instructions to carry out, asserted here without sockets, files or clocks."""
from __future__ import annotations

import random

import pytest

from grun import tables
from grun.core import jobs as J
from grun.core.master_state import NODE_FORGET_SECS, START_RETRY_SECS, MasterState, Rival
from grun.core.queue import JobTable


def _info(name: str, **extra) -> dict:
    return {"name": name, "uri": f"PYRO:grun.node@{name}:1", "cpus": 4, "memory": 4000, "incarnation": "i1",
            "seq": 0, **extra}


def _state(*nodes: str, **settings) -> MasterState:
    m = MasterState(random.Random(0), **settings)
    for name in nodes:
        m.handle("register", _info(name), 0.0)
    return m


def _submit(m: MasterState, now: float = 1.0, **spec) -> int:
    return m.handle("submit", m.requests([{"cmd": ["sleep", "9"], **spec}]), None, now).reply[0]


def _ids(instructions) -> list:
    """Instructions with the jobs they offer shown as ids."""
    return [(i[0], i[1], [j["id"] for j in i[2]]) if i[0] in ("offer", "reoffer") else i for i in instructions]


def _running(m: MasterState, node: str, now: float = 2.0, **spec) -> int:
    job_id = _submit(m, now, host=node, **spec)
    m.handle("schedule", now)
    m.handle("started", node, {"started": {str(job_id): 99}, "incarnation": "i1", "seq": 1}, now)
    return job_id


def test_a_pass_offers_what_it_dispatched_and_offers_again_what_no_node_confirmed():
    m = _state("a")
    job_id = _submit(m)
    step = m.handle("schedule", 2.0)
    assert step.records == [{"op": "dispatch", "id": job_id, "node": "a", "time": 2.0}] and step.durable
    assert _ids(step.do) == [("offer", "a", [job_id])], "offered once the dispatch is on disk"
    quiet = m.handle("schedule", 2.0 + START_RETRY_SECS / 2)
    assert quiet.do == [] and not quiet.durable
    again = m.handle("schedule", 2.1 + START_RETRY_SECS)
    assert (again.records, _ids(again.do)) == ([], [("reoffer", "a", [job_id])])
    assert again.durable, "offered again once its dispatch is on disk, whoever journaled it"
    started = m.handle("started", "a", {"started": {str(job_id): 77}, "incarnation": "i1", "seq": 5}, 5.0)
    assert started.records == [{"op": "start", "id": job_id, "node": "a", "pid": 77, "time": 5.0}]
    assert not started.durable, "a confirmed start need not wait for the disk"
    assert m.launched == {job_id: ("i1", 5)} and m.unconfirmed == {}
    assert m.handle("schedule", 30.0).do == []
    assert m.handle("started", "a", {"started": {str(job_id): 77}}, 6.0).records == [], "confirmed once"


def test_a_start_the_node_refused_ends_the_job_and_waits_for_the_disk():
    m = _state("a")
    job_id = _submit(m)
    m.handle("schedule", 2.0)
    step = m.handle("started", "a", {"started": {}, "rejected": {str(job_id): "no such user"}}, 3.0)
    [(kind, job)] = step.do
    assert (kind, job["id"], job["exit"], job["error"]) == ("finished", job_id, 127, "no such user")
    assert step.durable and m.recent[job_id] is job and m.unconfirmed == {}


def test_kill_signals_running_jobs_ends_queued_ones_and_force_forgets_the_start():
    m = _state("a")
    running, queued = _running(m, "a"), _submit(m, cpus=64, force=True)
    other = _running(m, "a")
    step = m.handle("kill", [running, queued, 999], 9, False, 3.0)
    assert step.reply == {str(running): True, str(queued): True, "999": False}
    assert step.records[0] == {"op": "kill", "id": running, "signal": 9, "time": 3.0}
    assert [i for i in step.do if i[0] not in ("finished", "log")] == [("kill", "a", [running], 9)]
    assert [i[1]["id"] for i in step.do if i[0] == "finished"] == [queued]
    assert m.table.jobs[running]["state"] == J.RUNNING, "it ends when its node says so"
    forced = m.handle("kill", [other], 15, True, 4.0)
    shown = [(i[0], i[1]["id"] if i[0] == "finished" else i[1]) for i in forced.do if i[0] != "log"]
    assert shown == [("finished", other), ("kill", "a")]
    assert other not in m.launched and other not in m.table.jobs and m.recent[other]["error"] == "killed with --force"


def test_heartbeat_replies_repeat_a_kill_until_the_job_ends():
    m = _state("a")
    job_id = _running(m, "a")
    m.handle("kill", [job_id], 15, False, 3.0)
    for now in (4.0, 5.0):
        step = m.handle("heartbeat", "a", {"running": [job_id]}, now)
        assert step.reply["known"] and step.reply["kill"] == {str(job_id): 15} and step.reply["stale"] == []
        assert not step.durable, "a heartbeat that changes nothing waits for nobody's records"
    assert m.handle("register", _info("a", running=[job_id]), 6.0).reply["kill"] == {str(job_id): 15}
    m.handle("finished", "a", [{"id": job_id, "signal": 15, "attempt": 1}], 7.0)
    assert m.handle("heartbeat", "a", {"running": []}, 8.0).reply["kill"] == {}
    assert m.recent[job_id]["state"] == J.KILLED


def test_hold_suspends_on_the_node_and_the_record_follows_its_answer():
    m = _state("a")
    running, queued = _running(m, "a"), _submit(m, cpus=64, force=True)
    step = m.handle("control", "hold", [running, queued], 3.0)
    assert step.records == [{"op": "hold", "id": queued, "time": 3.0}]
    assert step.do == [("signal", "a", "suspend", [running], None)] and m.table.jobs[running]["state"] == J.RUNNING
    done = m.handle("signalled", "suspend", "a", [running], 3.5)
    assert done.records == [{"op": "suspend", "id": running, "time": 3.5}] and done.kick, "its cpus are free"
    step = m.handle("control", "resume", [running, queued], 4.0)
    assert (step.records, step.do) == ([{"op": "release", "id": queued, "time": 4.0}],
                                       [("signal", "a", "resume", [running], None)])


def test_an_admins_hold_is_an_admins_to_release_and_a_kill_names_who_asked():
    """QA: the owner resumed what an admin held or suspended (Slurm, SGE: a user cannot release an admin's hold); an
    admin's kill of others' jobs was said nowhere: the log says who, and so does the job's record (history --long)."""
    m = _state("a")
    running, queued, mine = _running(m, "a"), _submit(m, cpus=64, force=True), _submit(m, cpus=64, force=True)
    assert m.handle("control", "hold", [running, queued], 3.0, by=("qa3a", True)).do == [
        ("signal", "a", "suspend", [running], "qa3a")]
    m.handle("control", "hold", [mine], 3.0, by=("qa3b", False))
    m.handle("signalled", "suspend", "a", [running], 3.5, by="qa3a")
    assert [m.table.jobs[i].get("held_by") for i in (running, queued, mine)] == ["qa3a", "qa3a", None]
    step = m.handle("control", "resume", [running, queued, mine], 4.0, by=("qa3b", False))
    why = "job {} was held by an admin (qa3a): only an admin can release it"
    assert step.reply == {str(running): why.format(running), str(queued): why.format(queued), str(mine): True}
    assert step.records == [{"op": "release", "id": mine, "time": 4.0}] and step.do == []
    assert "  held      by an admin (qa3a): only an admin can release it" in tables.history_long([m.table.jobs[queued]])
    assert m.handle("control", "resume", [queued], 5.0, by=("root", True)).records == [
        {"op": "release", "id": queued, "time": 5.0}] and "held_by" not in m.table.jobs[queued]
    step = m.handle("kill", [queued, running], 15, False, 6.0, by="qa3a")
    assert _logs(step, "info") == [f"job {queued}, {running} killed by qa3a (signal 15)"]
    m.handle("finished", "a", [{"id": running, "signal": 15, "attempt": 1}], 7.0)
    for i in (running, queued):
        assert m.recent[i]["killed_by"] == "qa3a" and "  killed    by qa3a" in tables.history_long([m.recent[i]])
        assert "held_by" not in m.recent[i]  # (review: a killed job's history said "only an admin can release it")


def test_an_admins_hold_of_an_array_is_refused_to_its_owner_by_the_tasks_name():
    """Review: the refusal of `resume 1.2` was filed under the task's internal id, so the id asked read True."""
    m = _state("a")
    array = m.handle("submit", m.requests([{"cmd": ["true"], "array": "1-3", "cpus": 64, "force": True}]), None, 1.0).reply[0]
    m.handle("control", "hold", [array], 2.0, by=("root", True))
    step = m.handle("control", "resume", [f"{array}.2"], 3.0, by=("alice", False))
    assert step.reply == {f"{array}.2": f"job {array}.2 was held by an admin (root): only an admin can release it"}


def test_a_job_submitted_held_is_held_in_its_own_commit_and_a_pass_leaves_it():
    m = _state("n1")
    step = m.handle("submit", m.requests([{"cmd": ["true"], "hold": True}]), None, 1.0)
    job_id = step.reply[0]
    assert [r["op"] for r in step.records] == ["submit", "hold"] and "hold" not in step.records[0]["job"]
    assert not [i for i in m.handle("schedule", 2.0).do if i[0] == "offer"]
    assert m.table.jobs[job_id]["state"] == J.HELD
    m.handle("control", "resume", [job_id], 3.0)
    assert _ids(m.handle("schedule", 4.0).do) == [("offer", "n1", [job_id])]


def test_a_silent_node_is_declared_lost_and_one_down_for_a_day_with_no_job_forgotten():
    m = _state("a", "b", node_timeout=10.0)
    job_id = _running(m, "a")
    m.handle("heartbeat", "b", {}, 9.0)
    step = m.handle("sweep", 10.5)
    assert step.records == [{"op": "requeue", "id": job_id, "node": "a", "time": 10.5,
                             "reason": "node a lost (silent for 10 s)"}]
    assert [i[0] for i in step.do] == ["log", "log"] and step.kick
    assert not m.table.nodes["a"].up and m.table.nodes["b"].up and job_id not in m.launched
    assert m.handle("sweep", 11.0).records == [], "a lost node's jobs are dealt with once"
    assert m.handle("heartbeat", "a", {}, 11.0).reply == {"known": False}, "it must register again"
    assert m.handle("kill", [job_id], 15, False, 12.0).records[0]["op"] == "finish"
    step = m.handle("sweep", NODE_FORGET_SECS + 20.0)
    assert step.records[-1] == {"op": "forget", "name": "a"} and ("forget", "a") in step.do
    assert "a" not in m.table.nodes and "b" in m.table.nodes, "b is declared lost only now"
    replay = JobTable()
    replay.apply({"op": "node", "name": "a", "cpus": 4, "memory": 4000})
    replay.apply(step.records[-1])
    assert "a" not in replay.nodes, "a restart forgets it too"


def test_a_master_that_hears_no_node_is_cut_off_itself_and_declares_none_lost():
    """QA: a master restarted with a wrong `bind:` declared its three nodes lost at node_timeout; back, it ran their
    jobs again on the first to register. A node's silence counts while another is heard, from when one is again."""
    m = _state("a", "b", "c", node_timeout=10.0)
    on_a, on_b = _running(m, "a"), _running(m, "b")
    fresh = MasterState(random.Random(0))
    fresh.configure(node_timeout=10.0)
    fresh.recover(m.table.snapshot(), [], 100.0)
    step = fresh.handle("sweep", 125.0)
    assert step.records == [] and _logs(step) == [
        ("no node heard for 25 s: this master seems cut off from them (its network? its bind:?); none is declared "
         "lost until one is heard")]
    assert fresh.handle("sweep", 126.0).do == [], "said once"
    step = fresh.handle("register", _info("a", running=[on_a]), 130.0)
    assert _logs(step, "info")[0] == "a node heard after 30 s with none: the silence of the others counts from now"
    for t in (134.0, 138.0):
        fresh.handle("heartbeat", "a", {"running": [on_a]}, t)
    assert fresh.handle("sweep", 139.5).records == [], "b and c have node_timeout from when a was heard"
    assert fresh.handle("register", _info("b", running=[on_b]), 139.8).records == []
    fresh.handle("heartbeat", "a", {"running": [on_a]}, 140.2)
    step = fresh.handle("sweep", 140.5)
    assert step.records == [] and not fresh.table.nodes["c"].up, "c (holding no job) is lost, the others not"
    assert [fresh.table.jobs[i]["state"] for i in (on_a, on_b)] == [J.RUNNING, J.RUNNING]
    for t in (144.0, 148.0, 150.0):
        fresh.handle("heartbeat", "a", {"running": [on_a]}, t)
    assert fresh.handle("sweep", 150.5).records == [{"op": "requeue", "id": on_b, "node": "b", "time": 150.5,
                                                     "reason": "node b lost (silent for 11 s)"}], "b is dead: lost"
    cut = _state("a", "b", node_timeout=10.0)  # cut off at 1.0, with a last heard at 0.0 and b at 0.9: a is not
    _running(cut, "a")  # lost at 10.0, before the master could tell it hears none (a heartbeat apart)
    cut.handle("heartbeat", "b", {}, 0.9)
    assert cut.handle("sweep", 10.5).records == []
    alone = _state("a", node_timeout=10.0)  # one node: a master cannot tell, and its jobs could go nowhere else
    assert alone.handle("sweep", 11.0).records == [] and not alone.table.nodes["a"].up, "lost"
    paused = _state("a", "b", "c", node_timeout=10.0)  # a review: a master stopped (SIGSTOP, its host asleep) runs
    on_b = _running(paused, "b")  # no sweep meanwhile; a heartbeat handled first must start the others' silence
    paused.handle("sweep", 5.0)
    paused.handle("heartbeat", "a", {}, 60.0)
    assert paused.handle("sweep", 60.1).records == [] and paused.table.jobs[on_b]["state"] == J.RUNNING
    poked = _state("a", "b", node_timeout=10.0)  # `grun -k -n USR1` asks no end: lost, the job is re-queued
    job = _running(poked, "a")
    poked.handle("kill", [job], 10, False, 1.0)
    assert poked.handle("heartbeat", "a", {"running": [job]}, 2.0).reply.get("kill") == {}, "sent once, not repeated"
    poked.handle("heartbeat", "b", {}, 12.0)
    assert [r["op"] for r in poked.handle("sweep", 12.5).records] == ["requeue"]


def test_hearing_none_a_node_whose_daemon_is_gone_is_lost_and_a_rival_for_a_live_nodes_name_refused():
    """QA: all node daemons killed, none was declared lost (the master's probe finds them gone: Hearing.gone); and a
    second daemon taking a live node's name (a copied config) ran its jobs twice."""
    m = _state("a", "b", node_timeout=10.0)
    job_id = _running(m, "a", 1.0)
    assert not m.handle("sweep", 30.0).records and not m.table.nodes["a"].lost, "cut off: none lost"
    m.hearing.gone = {"a"}
    assert [r["op"] for r in m.handle("sweep", 31.0).records] == ["requeue"] and m.table.jobs[job_id]["node"] is None
    assert m.table.nodes["a"].lost and not m.table.nodes["b"].lost
    m.handle("register", _info("a", incarnation="i2"), 32.0)
    assert m.hearing.gone == set(), "a node heard: the next spell is probed anew"
    node = m.table.nodes["a"]
    assert "a live daemon at PYRO:grun.node@a:1" in node.rival("PYRO:grun.node@a:2", "i3", 35.0, 10.0)
    assert node.rival("PYRO:grun.node@a:1", "i3", 35.0, 10.0) is None, "its restart, at its address"
    assert node.rival("PYRO:grun.node@a:2", "i3", 43.0, 10.0) is None, "silent past its timeout"
    with pytest.raises(Rival) as refused:  # (judged with the registration: two daemons at once, one name)
        m.handle("register", _info("a", uri="PYRO:grun.node@a:2", incarnation="i3"), 35.0)
    assert refused.value.uri == "PYRO:grun.node@a:1" and node.uri == refused.value.uri and node.incarnation == "i2"
    m.handle("register", _info("a", uri="PYRO:grun.node@a:2", incarnation="i3"), 35.0, dead=refused.value.uri)
    assert node.uri == "PYRO:grun.node@a:2", "that address refuses connections (the master probed it): its daemon is gone"


def test_a_lost_job_not_run_again_takes_the_end_its_node_reports_when_back():
    """QA: a --norequeue job's node silent past node_timeout, then back with the run's end (exit 32): the master ignored
    it, history said `lost 255`. Still lost (its waiters and dependants went by that), with the run's exit and usage."""
    m = _state("a", node_timeout=10.0)
    job_id, plain = _running(m, "a", requeue=False), _running(m, "a")
    m.handle("sweep", 11.0)
    assert (m.recent[job_id]["state"], m.recent[job_id]["exit"]) == (J.LOST, 255)
    m.handle("register", _info("a", running=[plain], finished=[job_id]), 12.0)
    step = m.handle("finished", "a", [{"id": job_id, "attempt": 1, "exit_code": 32, "usage": {"wall": 20.0}}], 13.0)
    assert [(r["op"], r["job"]) for r in step.records] == [("late", m.recent[job_id])] and step.reply == [job_id]
    [(kind, late)] = [i for i in step.do if i[0] != "log"]
    assert kind == "history" and late is m.recent[job_id] and (late["state"], late["exit"], late["usage"]) == (
        J.LOST, 32, {"wall": 20.0})
    assert _logs(step) == [f"job {job_id}: node a lost (silent for 11 s); its run ended there later: exit 32"]
    assert [i for i in m.handle("finished", "a", [{"id": job_id, "attempt": 1, "exit_code": 32}], 14.0).do
            if i[0] != "log"] == [], "once"
    other = _state("a", node_timeout=10.0)
    killed = _running(other, "a", requeue=False)
    other.handle("sweep", 11.0)
    copy = {"id": killed, "attempt": 1, "signal": 15, "superseded": True}  # the copy it killed when the node came back
    assert other.handle("finished", "a", [copy], 13.0).do == [] and other.recent[killed]["exit"] == 255


def test_a_node_holding_a_job_is_never_forgotten():
    m = _state("a", node_timeout=10.0, requeue=False)
    job_id = _running(m, "a", requeue=False)
    m.handle("sweep", 11.0)  # lost: finished as lost, not re-queued
    assert m.recent[job_id]["state"] == J.LOST
    lost_from = _submit(m)
    m.table.apply({"op": "dispatch", "id": lost_from, "node": "a", "time": 12.0})
    assert m.handle("sweep", NODE_FORGET_SECS + 20.0).records == [], "the node holds a job"


def test_registration_offers_missed_starts_names_stale_copies_and_is_durable():
    m = _state("a")
    missed = _submit(m, host="a")
    m.handle("schedule", 2.0)
    step = m.handle("register", _info("a", running=[555], finished=[]), 3.0)
    assert [j["id"] for j in step.reply["start"]] == [missed] and step.reply["stale"] == [555]
    assert step.reply["start"][0]["env"] == {}, "the node gets the whole job"
    assert step.durable and step.kick and step.records == []


def test_nested_grun_lends_and_takes_back_through_the_events():
    m = _state("a")
    parent = _running(m, "a", cpus=4)
    child = m.handle("submit", m.requests([{"cmd": ["x"], "parent": parent}]), None, 3.0)
    assert [r["op"] for r in child.records] == ["submit", "lend"]
    assert m.table.nodes["a"].free_cpus == 4


def _logs(step, level: str = "warning") -> list[str]:
    return [i[2] for i in step.do if i[:2] == ("log", level)]


def test_a_node_beating_slower_than_node_timeout_allows_is_judged_by_three_of_its_beats():
    """QA: a node with `heartbeat:` longer than node_timeout flapped up and down, its jobs re-queued and run twice."""
    m = _state(node_timeout=10.0)
    assert _logs(m.handle("register", _info("fast", heartbeat=3.0), 0.0)) == [], "3 beats fit in node_timeout"
    step = m.handle("register", _info("slow", heartbeat=8.0), 0.0)
    assert _logs(step) == ["node slow: heartbeat 8 s, so down after 24 s unheard, not node_timeout"]
    job_id = _running(m, "slow")
    m.handle("register", _info("ear"), 0.0)
    for t in range(3, 19, 3):  # (a node heard: the master is not cut off from them all)
        m.handle("heartbeat", "ear", {}, float(t))
    assert m.handle("sweep", 20.0).records == [] and m.table.nodes["slow"].up, "silent for 20 s: 2.5 of its beats"
    assert not m.table.nodes["fast"].up, "the others keep node_timeout"
    for t in (21.0, 24.0):
        m.handle("heartbeat", "ear", {}, t)
    assert m.handle("sweep", 24.5).records[0]["op"] == "requeue" and not m.table.nodes["slow"].up
    assert job_id not in m.launched
    again = _state(node_timeout=10.0)  # a master restarted: the node's beat comes with its record, before it registers
    again.handle("register", _info("slow", heartbeat=8.0), 0.0)
    job_id = _running(again, "slow")
    fresh = MasterState()
    fresh.configure(node_timeout=10.0)
    fresh.recover(again.table.snapshot(), [], 100.0)
    assert fresh.handle("sweep", 111.0).records == [], "silent 11 s after the restart: under 3 of its beats"


def test_a_node_that_stops_is_told_when_its_jobs_are_re_queued():
    """QA: `grun -d -k` of a node logged that its jobs "stay there"; they are re-queued after node_timeout."""
    m = _state("a", node_timeout=10.0)
    job_id = _running(m, "a")
    step = m.handle("leave", "a", "i1", 3.0)
    assert _logs(step, "info") == [(f"node a stopped: down, no new jobs go there until it registers again; its jobs "
                                    f"[{job_id}] are re-queued if it is not back within 10 s (node_timeout)")]


def test_the_end_of_a_run_the_master_re_ran_elsewhere_is_logged_not_counted():
    """QA: a job that finished on a node whose daemon was dead, while the master ran it again elsewhere, lost its
    first run without a word. (Every run in history, as sacct -D, is not kept.)"""
    m = _state("a", "b", node_timeout=10.0)
    job_id = _submit(m)
    m.handle("schedule", 2.0)
    first = m.table.jobs[job_id]["node"]
    m.handle("started", first, {"started": {str(job_id): 99}, "incarnation": "i1", "seq": 1}, 2.0)
    other = ({"a", "b"} - {first}).pop()
    m.handle("heartbeat", other, {}, 9.0)
    assert m.handle("sweep", 10.5).records[0]["op"] == "requeue"
    m.handle("schedule", 11.0)
    assert m.table.jobs[job_id]["node"] == other and m.table.jobs[job_id]["attempt"] == 2
    step = m.handle("finished", first, [{"id": job_id, "exit_code": 3, "attempt": 1}], 12.0)
    assert step.records == [] and step.reply == [job_id], "acknowledged, not counted"
    assert _logs(step) == [f"job {job_id}: node {first} ended run 1 (3), superseded by run 2 on {other}: not counted"]
    report = [{"id": job_id, "exit_code": 0, "attempt": 2}]
    assert m.handle("finished", other, report, 13.0).records[0]["op"] == "finish"
    again = m.handle("finished", other, report, 14.0)
    assert again.records == [] and _logs(again) == [], "a repeated report of the run that counted: silent"


def test_a_job_that_traps_the_kill_and_exits_0_was_killed_and_its_afterok_dependents_never_run():
    m = _state("a")
    trapper, signalled, hup = _running(m, "a"), _running(m, "a"), _running(m, "a")
    dependent = _submit(m, afterok=[trapper])
    m.handle("kill", [trapper], 15, False, 3.0)
    m.handle("kill", [trapper], 10, False, 3.0)  # a later USR1 keeps the TERM's ending
    m.handle("kill", [signalled], 10, False, 3.0)  # USR1: a signal to the job, not a request that it end
    m.handle("kill", [hup], 1, False, 3.0)  # HUP: often a server job's "reload"
    m.handle("finished", "a", [{"id": i, "exit_code": 0, "attempt": 1} for i in (trapper, signalled, hup)], 4.0)
    assert [m.recent[i]["state"] for i in (trapper, signalled, hup)] == [J.KILLED, J.DONE, J.DONE]
    # as Slurm's scancel: CANCELLED at once, its exit code kept (sacct's 0:0); history's "killed, exit 0"
    assert (tables.state_of(m.recent[trapper]), tables.FIELDS["2"][3](m.recent[trapper])) == ("CANCELLED", "0:0")
    assert J.describe_exit(m.recent[trapper]) == "0"
    m.handle("schedule", 5.0)
    assert dependent not in m.table.jobs and m.recent[dependent]["state"] == J.CANCELLED


def test_the_end_of_a_run_whose_job_was_re_queued_then_killed_says_so():
    """QA: the log said "superseded by run 1 on None" for a job killed while queued after its node was lost."""
    m = _state("a", node_timeout=10.0)
    job_id = _running(m, "a")
    assert m.handle("sweep", 12.5).records[0]["op"] == "requeue"
    m.handle("kill", [job_id], 15, False, 13.0)
    step = m.handle("finished", "a", [{"id": job_id, "exit_code": 0, "attempt": 1}], 14.0)
    assert step.records == [] and _logs(step) == [
        f"job {job_id}: node a ended run 1 (0), superseded by a re-queue (now killed): not counted"]


def test_an_edit_of_a_task_not_started_splits_it_out_of_its_array_alone():
    """QA: `grun -e priority=5 12.7` said "no such job" for a task not begun (kill and hold made it a job, edit did
    not). As Slurm's `scontrol update jobid=12_7`, the edit makes that task a job; an edit of the whole array still
    changes the array's record only (its tasks not started), not its live tasks; a held array's task stays held."""
    m = _state("a")
    array_id = _submit(m, array="1-10", hold=True)
    step = m.handle("edit", [f"{array_id}.7"], {"priority": "5"}, 2.0)
    task_id = m.table.tasks[array_id][7]
    assert step.reply == {f"{array_id}.7": True} and [r["op"] for r in step.records] == ["task", "edit"]
    assert (m.table.jobs[task_id]["priority"], m.table.jobs[task_id]["state"]) == (5, J.HELD)
    m.handle("control", "resume", [array_id], 3.0)
    m.handle("control", "hold", [f"{array_id}.7"], 3.0)
    m.handle("schedule", 4.0)
    live = list(m.table.tasks[array_id].values())
    step = m.handle("edit", [array_id], {"priority": "9"}, 5.0)
    assert [(r["op"], r["id"]) for r in step.records] == [("edit", array_id)], "not its live tasks"
    assert len(live) == 5 and 9 not in [m.table.jobs[i]["priority"] for i in live]
    with pytest.raises(ValueError, match=f"job {array_id}.9: .*cpus"):  # refused (named as users know it): the task made
        # a job stays so
        m.handle("edit", [f"{array_id}.9"], {"cpus": "99"}, 6.0)
    assert m.table.jobs[m.table.tasks[array_id][9]]["cpus"] == m.table.jobs[array_id]["cpus"], "and nothing else"


def test_what_the_core_refuses_it_refuses_whole_and_in_one_line():
    """A review: an edit's priority=3.7 became 3; a cwd_fs with keys of mixed types off the wire raised TypeError,
    not a one-line refusal; a submission refused on a full disk had already split the task it named out of its array."""
    m = _state("a")
    queued = _submit(m)
    with pytest.raises(ValueError, match="whole number"):
        m.handle("edit", [queued], {"priority": 3.7}, 2.0)  # (typed, as the Python API sends it)
    assert m.table.jobs[queued]["priority"] == 20
    with pytest.raises(ValueError, match="lease must be 0 .none. or at least 1 s"):  # (QA: 1e-4 killed a live caller's)
        m.requests([{"cmd": ["true"], "lease": 0.001}])
    with pytest.raises(ValueError, match="cwd_fs must map"):
        m.requests([{"cmd": ["true"], "cwd_fs": {1: "x", "type": "nfs", "source": "s", "root": "/"}}])
    array_id = _submit(m, array="1-10")
    requests = m.requests([{"cmd": ["true"], "afterok": [f"{array_id}.7"]}])
    with pytest.raises(ValueError, match="disk"):
        m.handle("submit", requests, "the master's disk is full", 3.0)
    assert m.table.tasks.get(array_id, {}) == {} and m.table.next_id == array_id + 1, "nothing split, no id taken"


def test_a_lease_not_renewed_ends_its_job_and_a_restart_starts_each_lease_again():
    """grun.core.leases: a job whose submitter stopped renewing its lease ends at the first sweep past it (queued:
    cancelled; on a node: killed, its node told); a renewal puts it off; jobs without one are not in the index."""
    m = _state("a")
    running = _running(m, "a", 2.0, cpus=4, lease=10)  # due at 12
    queued, renewed, plain = _submit(m, 2.0, lease=10), _submit(m, 2.0, lease=10), _submit(m, 2.0)
    with pytest.raises(ValueError, match="lease: a number"):
        m.requests([{"cmd": ["true"], "lease": "10"}])
    assert m.handle("renew", [renewed, plain, 999], 9.0).reply == {str(renewed): True, str(plain): False, "999": False}
    assert m.handle("sweep", 11.9).records == []
    step = m.handle("sweep", 12.0)
    reason = "its caller stopped renewing its lease"
    assert [(r["id"], r["result"]["status"], r["result"]["reason"]) for r in step.records] == [
        (running, J.KILLED, reason), (queued, J.CANCELLED, reason)] and step.durable
    assert [i for i in step.do if i[0] == "kill"] == [("kill", "a", [running], 15)]
    assert ("log", "info", f"job {running} and 1 more: {reason}") in step.do
    assert m.recent[queued]["error"] == reason and set(m.leases) == {renewed} and plain in m.table.jobs
    assert m.recent[running]["usage"] == {"wall": 10.0} and not m.table.learned.keys, "its wall: ours; nothing learned"
    assert "10.00s  -    -" in tables.history_table([m.recent[running]]), "WALL ours; CPU and MAXRSS unknown, not 0"
    assert m.handle("renew", [running], 13.0).reply == {str(running): False}
    fresh = MasterState(random.Random(0))
    fresh.recover(m.table.snapshot(), [], 100.0)  # a restart: not 19, as before it
    assert fresh.leases == {renewed: 110.0}
    assert [r["id"] for r in [r for t in (14.0, 16.0, 18.0, 19.0) for r in m.handle("sweep", t).records]] == [renewed]
    # time the master did not run (stopped, a VM paused, a clock step) pushes every lease on (a review: stopped 5 s,
    # it killed a live caller's calls of a 3 s lease)
    paused = _submit(m, 20.0, lease=10)
    m.handle("sweep", 20.0)
    assert m.handle("sweep", 40.0).records == [] and m.leases[paused] == 50.0


def test_a_requeued_job_killed_before_its_next_run_has_no_wait():
    """Review: its old start (before the re-queue) made WAIT negative, shown as 0; it never started again: none."""
    m = _state("a")
    job_id = _running(m, "a")
    m.table.apply({"op": "requeue", "id": job_id, "node": "a", "reason": "node a lost", "time": 5.0})
    m.handle("kill", [job_id], 15, False, 6.0)
    assert m.recent[job_id]["state"] == J.KILLED and "queue_wait" not in m.recent[job_id]
