"""Dependencies and retries (issue 13) as pure decisions: events in, records out, no sockets or clocks.
Each record a step applies is also replayed into a fresh table, which must end up the same."""
from __future__ import annotations

import random

import pytest

from grun.core import deps as D
from grun.core import jobs as J
from grun.core.explain import explain
from grun.core.master_state import MasterState


def _state(**settings) -> MasterState:
    m = MasterState(random.Random(0), **settings)
    m.handle("register", {"name": "a", "uri": "PYRO:x@a:1", "cpus": 8, "memory": 8000, "incarnation": "i"}, 0.0)
    return m


def _submit(m: MasterState, now: float = 1.0, history=None, user: str = "ann", **spec) -> int:
    reqs = m.requests([{"cmd": ["x"], "user": user, **spec}])
    return m.handle("submit", reqs, None, now, history=history).reply[0]


def _end(m: MasterState, job_id: int, code: int = 0, now: float = 5.0):
    """Run the job on node a and report its exit; returns the step of the report."""
    m.handle("schedule", now)
    m.handle("started", "a", {"started": {str(job_id): 9}, "incarnation": "i", "seq": 1}, now)
    attempt = m.table.jobs[job_id]["attempt"]
    return m.handle("finished", "a", [{"id": job_id, "exit_code": code, "attempt": attempt}], now)


def _state_of(m: MasterState, job_id: int) -> str:
    return (m.table.jobs.get(job_id) or m.recent[job_id])["state"]


def test_afterok_waits_then_queues_when_its_dependency_succeeds():
    m = _state()
    first = _submit(m)
    second = _submit(m, afterok=[first])
    assert m.table.jobs[second]["state"] == J.WAITING and m.table.jobs[second]["deps"] == [["afterok", first]]
    assert m.table.dependants == {first: {second}}
    assert [j["id"] for j in m.table.pending] == [first], "a waiting job is never placed"
    step = _end(m, first)
    assert [r["op"] for r in step.records] == ["finish", "dep"] and step.kick
    assert m.table.jobs[second]["state"] == J.QUEUED and m.table.jobs[second]["deps"] == []
    assert m.table.dependants == {} and [j["id"] for j in m.table.pending] == [second]


def test_a_failure_cancels_the_dependants_transitively_in_one_step():
    m = _state()
    a = _submit(m)
    b = _submit(m, afterok=[a])
    c = _submit(m, afterok=[b])
    d = _submit(m, after=[b])             # ends whatever b did: runs
    e = _submit(m, afternotok=[c])        # c cancelled is not ok: runs
    f = _submit(m, afterok=[a], name="f")
    step = _end(m, a, code=3)
    assert [(r["op"], r["id"]) for r in step.records] == [
        ("finish", a), ("finish", b), ("finish", f), ("finish", c), ("dep", d), ("dep", e)]
    assert [_state_of(m, i) for i in (a, b, c, d, e, f)] == [J.FAILED, J.CANCELLED, J.CANCELLED,
                                                              J.QUEUED, J.QUEUED, J.CANCELLED]
    assert m.recent[b]["reason"] == f"dependency {a} failed" and m.recent[c]["reason"] == f"dependency {b} cancelled"
    assert m.recent[b]["exit"] == 1 and not any(name == "f" for _, name in m.table.names)
    assert [i[1]["id"] for i in step.do if i[0] == "finished"] == [a, b, f, c], "each goes to history"
    assert m.table.dependants == {}


def test_afternotok_is_cancelled_by_a_success_and_a_kill_of_a_waiting_job_decides_its_dependants():
    m = _state()
    a = _submit(m)
    b = _submit(m, afternotok=[a])
    _end(m, a, code=0)
    assert m.recent[b]["state"] == J.CANCELLED and m.recent[b]["reason"] == f"dependency {a} succeeded"
    x = _submit(m, cpus=64, force=True)  # never placed
    y = _submit(m, afterok=[x])
    z = _submit(m, afternotok=[y])
    step = m.handle("kill", [y], 15, False, 7.0)
    assert [(r["op"], r["id"]) for r in step.records] == [("finish", y), ("dep", z)]
    assert _state_of(m, y) == J.KILLED and m.table.jobs[z]["state"] == J.QUEUED
    assert m.table.dependants == {}


def test_references_are_checked_and_resolved_at_submit():
    m = _state()
    with pytest.raises(ValueError, match="no job 99"):
        _submit(m, afterok=[99])
    with pytest.raises(ValueError, match="no job named 'nope'"):
        _submit(m, after=["nope"])
    built = _submit(m, name="build")
    assert m.table.jobs[_submit(m, afterok=["build"])]["deps"] == [["afterok", built]]
    with pytest.raises(ValueError, match="no job named 'build' of user bob"):
        _submit(m, afterok=["build"], user="bob")  # names are looked up among one's own jobs
    assert m.table.jobs[_submit(m, after=[built], user="bob")]["deps"] == [["after", built]]
    strict = _state(deps_other_users=False)
    theirs = _submit(strict, user="bob")
    with pytest.raises(ValueError, match="is bob's"):
        _submit(strict, afterok=[theirs])
    with pytest.raises(ValueError, match="bad job id or name 0"):
        m.requests([{"cmd": ["x"], "after": [0]}])
    assert D.parse_dependency("afterok:12:13,after:14,afternotok:x") == {
        "afterok": [12, 13], "after": [14], "afternotok": ["x"]}
    with pytest.raises(ValueError, match="no `[?]`"):  # Slurm's: any one of them, not all
        D.parse_dependency("afterok:12?afterok:13")
    with pytest.raises(ValueError, match="expected after"):
        D.parse_dependency("aftercorr:3")


def test_a_dependency_on_a_finished_job_is_decided_from_history():
    m = _state()
    done = {"id": 50, "state": J.DONE, "user": "ann"}
    failed = {"id": 51, "state": J.FAILED, "user": "ann", "name": "old"}
    history = {50: done, 51: failed, ("ann", "old"): failed}
    ok = _submit(m, afterok=[50], history=history)
    assert m.table.jobs[ok]["state"] == J.QUEUED and "deps" not in m.table.jobs[ok]
    reqs = m.requests([{"cmd": ["x"], "user": "ann", "afterok": ["old"]}])
    step = m.handle("submit", reqs, None, 2.0, history=history)
    [never] = step.reply
    assert [r["op"] for r in step.records] == ["submit", "finish"], "queued and cancelled at once, on disk"
    assert m.recent[never]["reason"] == "dependency 51 failed"
    recent = _submit(m)
    _end(m, recent, code=1)
    assert _state_of(m, _submit(m, afternotok=[recent])) == J.QUEUED, "a job just ended is in `recent`"


def test_dependencies_survive_a_replay_of_the_journal():
    m, records = _state(), []
    a = _submit(m)
    for spec in ({"afterok": [a]}, {"after": [a], "retries": 2}):
        reqs = m.requests([{"cmd": ["x"], "user": "ann", **spec}])
        records += m.handle("submit", reqs, None, 2.0).records
    b, c = a + 1, a + 2
    fresh = MasterState(random.Random(0))
    fresh.recover(m.table.snapshot(), [], 3.0)
    assert fresh.table.jobs[b]["state"] == J.WAITING and fresh.table.dependants == {a: {b, c}}
    step = _end(m, a, code=1)
    fresh.recover(None, step.records, 6.0)
    assert fresh.table.dependants == {} == m.table.dependants
    assert {i: j["state"] for i, j in fresh.table.jobs.items()} == {c: J.QUEUED}
    assert fresh.recent[b]["state"] == J.CANCELLED


def test_edit_adds_and_removes_dependencies_and_refuses_a_cycle():
    m = _state()
    a, b = _submit(m), _submit(m)
    step = m.handle("edit", [b], {"after": f"{a}"}, 2.0)
    assert step.records[0]["changes"] == {"deps": [["after", a]]}
    assert m.table.jobs[b]["state"] == J.WAITING and m.table.dependants == {a: {b}}
    with pytest.raises(ValueError, match="cycle"):
        m.handle("edit", [a], {"afterok": str(b)}, 2.5)
    m.handle("edit", [b], {"after": "", "priority": "30"}, 3.0)
    job = m.table.jobs[b]
    assert (job["state"], job["deps"], job["priority"]) == (J.QUEUED, [], 30) and m.table.dependants == {}
    assert {j["id"] for j in m.table.pending} == {a, b}
    with pytest.raises(ValueError, match="dependency is never met"):
        m.handle("edit", [b], {"afterok": "51"}, 4.0, history={51: {"id": 51, "state": J.KILLED, "user": "ann"}})


def test_a_failed_job_is_retried_with_its_attempts_counted_and_is_final_only_at_the_last():
    m = _state()
    job_id = _submit(m, retries=2)
    waiter = _submit(m, afterok=[job_id])
    step = _end(m, job_id, code=4, now=5.0)
    assert [r["op"] for r in step.records] == ["retry"] and not [i for i in step.do if i[0] == "finished"]
    job = m.table.jobs[job_id]
    assert (job["state"], job["retried"], job["attempt"]) == (J.QUEUED, 1, 1)
    assert job["retry_reason"] == "attempt 1 failed: exit 4" and job["node"] is None
    assert m.table.jobs[waiter]["state"] == J.WAITING, "not final for its dependants while it has retries"
    _end(m, job_id, code=4, now=6.0)
    step = _end(m, job_id, code=4, now=7.0)
    assert [r["op"] for r in step.records] == ["finish", "finish"]
    assert (m.recent[job_id]["state"], m.recent[job_id]["retried"], m.recent[job_id]["attempt"]) == (J.FAILED, 2, 3)
    assert m.recent[waiter]["state"] == J.CANCELLED


def test_a_retry_waits_its_delay_and_a_killed_job_is_not_retried():
    m = _state(default_retries=1)
    assert [r.get("retries") for r in m.requests([{"cmd": ["x"]}, {"cmd": ["x"], "retries": 0}])] == [1, 0]
    job_id = _submit(m, retry_delay=30.0)
    _end(m, job_id, code=1, now=10.0)
    job = m.table.jobs[job_id]
    assert job["state"] == J.WAITING and m.table.delayed == {job_id: 40.0}
    assert "retried in 30 s (retry 1 of 1; attempt 1 failed: exit 1)" in explain(job, m, 10.0)
    assert m.handle("sweep", 39.0).records == []
    assert m.handle("sweep", 40.0).records == [{"op": "ready", "id": job_id, "time": 40.0}]
    assert job["state"] == J.QUEUED and m.table.delayed == {} and job["queued_time"] == 40.0
    killed = _submit(m, retries=3)
    m.handle("schedule", 41.0)
    m.handle("kill", [killed], 15, False, 42.0)
    step = m.handle("finished", "a", [{"id": killed, "exit_code": None, "signal": 15}], 43.0)
    assert [r["op"] for r in step.records] == ["finish"] and m.recent[killed]["state"] == J.KILLED


def test_a_job_killed_for_its_reader_gone_fails_and_is_neither_retried_nor_learned_from():
    """`grun --retries 2 CMD | head -1`: a re-run had nobody reading, and its cut-short run taught a low memory limit."""
    m = _state()
    job_id = _submit(m, retries=2, cmd=["python3", "align.py"])
    m.handle("schedule", 2.0)
    m.handle("started", "a", {"started": {str(job_id): 9}, "incarnation": "i", "seq": 1}, 2.0)
    m.handle("kill", [job_id], 13, False, 3.0)
    usage = {"wall": 1.0, "utime": 0.5, "stime": 0.0, "maxrss_kb": 1024}
    step = m.handle("finished", "a", [{"id": job_id, "exit_code": None, "signal": 13, "usage": usage}], 4.0)
    assert [r["op"] for r in step.records] == ["finish"] and m.recent[job_id]["state"] == J.FAILED
    assert not m.table.learned.keys


def test_a_job_ended_by_its_own_time_or_memory_limit_is_not_retried_and_says_why():
    m = _state()
    for limit, state in (("time", J.TIMEOUT), ("memory", J.KILLED), ("cpu", None)):
        job_id = _submit(m, retries=2)
        m.handle("schedule", 1.0)
        m.handle("started", "a", {"started": {str(job_id): 9}, "incarnation": "i", "seq": 1}, 1.0)
        step = m.handle("finished", "a", [{"id": job_id, "exit_code": None, "signal": 9, "limit": limit}], 2.0)
        if state is None:  # (another limit, e.g. cpu, is retried as before)
            assert [r["op"] for r in step.records] == ["retry"]
            continue
        assert [r["op"] for r in step.records] == ["finish"] and m.recent[job_id]["state"] == state
        assert m.recent[job_id]["not_retried"] == f"it reached its {limit} limit, as a retry would"


def test_why_names_what_a_job_waits_for_and_why_it_was_cancelled():
    m = _state()
    a, b = _submit(m), _submit(m)
    c = _submit(m, afterok=[a], afternotok=[b])
    text = explain(m.table.jobs[c], m, 2.0)
    assert text.startswith(f"Job {c} is waiting for job {a} to succeed (afterok), job {b} to fail (afternotok).")
    m.handle("kill", [a], 15, False, 3.0)
    assert explain(m.recent[c], m, 4.0) == f"Job {c} has finished: cancelled, dependency {a} killed."


def test_the_end_of_a_job_nobody_waits_for_costs_no_dependency_work():
    m = _state()
    a = _submit(m)
    step = _end(m, a)
    assert [r["op"] for r in step.records] == ["finish"] and m.table.dependants == {} and m.table.delayed == {}


def test_a_missing_make_input_waits_for_the_newest_live_job_of_the_user_that_makes_it():
    m = _state()

    def submit(user="ann", **keys):  # (make's keys as grun.core.jobs validates them; the client sets them)
        reqs = [{**m.requests([{"cmd": ["x"], "user": user}])[0], **keys}]
        return m.handle("submit", reqs, None, 1.0).reply[0]

    older, newer = submit(outputs=["/d/a.txt"]), submit(outputs=["/d/a.txt", "/d/b.txt"])
    submit(user="bob", outputs=["/d/c.txt"])
    assert m.table.makers["/d/a.txt"] == {older, newer}
    sorter = submit(needs=["/d/a.txt"], inputs=["/d/a.txt"])
    assert m.table.jobs[sorter]["deps"] == [["afterok", newer]] and "needs" not in m.table.jobs[sorter]
    with pytest.raises(ValueError, match="^no input /d/c.txt$"):
        submit(needs=["/d/c.txt"])  # bob's job makes it, not one of ann's
    m.handle("kill", [older, newer], 15, False, 2.0)
    assert "/d/a.txt" not in m.table.makers and _state_of(m, sorter) == J.CANCELLED
    with pytest.raises(ValueError, match="^no input /d/a.txt$"):
        submit(needs=["/d/a.txt"])


def test_the_command_line_builds_the_spec_keys():
    from grun import running, verbs
    from grun.options import UsageError
    args = verbs.parse(verbs.NAMES.get("run"), ["--afterok", "1,2", "--after", "build", "--dependency",
                                           "afterok:3:4,afternotok:5", "--retries", "2", "--retry-delay", "1m", "true"])
    spec = running.cli_spec(args, args["cmd"])
    assert {k: spec[k] for k in (*J.DEP_KINDS, "retries", "retry_delay")} == {
        "after": ["build"], "afterok": [1, 2, 3, 4], "afternotok": [5], "retries": 2, "retry_delay": 60.0}
    assert "retries" not in running.cli_spec(verbs.parse(verbs.NAMES.get("run"), ["true"]), ["true"])
    edit = verbs.parse(verbs.NAMES.get("edit"), ["priority=3,after=12,13,afterok=", "7"])
    assert edit["changes"] == {"priority": "3", "after": "12,13", "afterok": ""}
    assert J.parse_edit(edit["changes"]) == {"priority": 3, "after": [12, 13], "afterok": []}
    assert verbs.parse(verbs.NAMES.get("kill"), ["3", "build"]) == {"ids": [3], "names": ["build"]}
    for bad in (["--retries", "-1"], ["--retries", "101"], ["--afterok", "0"], ["--dependency", "afterok"]):
        with pytest.raises(UsageError, match=f"bad value for {bad[0]}"):
            verbs.parse(verbs.NAMES.get("run"), [*bad, "true"])


def test_a_held_waiting_job_keeps_its_dependencies_and_settles_when_released():
    m = _state()
    first, other = _submit(m), _submit(m)
    second = _submit(m, afterok=[first, other])
    m.handle("control", "hold", [second], 2.0)
    assert m.table.jobs[second]["state"] == J.HELD
    _end(m, first)
    assert m.table.jobs[second]["state"] == J.HELD and m.table.jobs[second]["deps"] == [["afterok", other]]
    m.handle("control", "resume", [second], 6.0)
    assert m.table.jobs[second]["state"] == J.WAITING, "released with a dependency unmet: waiting again"
    _end(m, other)
    assert m.table.jobs[second]["state"] == J.QUEUED


def test_a_dependency_on_an_array_task_not_started_makes_the_task_a_job_first():
    m = _state()
    array = _submit(m, array="1-3")
    after = _submit(m, afterok=[f"{array}.2"])
    task_job = m.table.tasks[array][2]
    assert after > task_job and m.table.jobs[after]["deps"] == [["afterok", task_job]]
    with pytest.raises(ValueError, match="no task"):
        _submit(m, afterok=[f"{array}.7"])
