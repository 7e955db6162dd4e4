"""QA findings of 2026-12-06 on the core: job names are per user (uniqueness, lookup, --after); names that read as
ids or lists are refused; -c 0 and -m 0 are refused; an edit is checked as a submission is (force=yes escapes);
after= replaces all a job waits for; a job that never started has no exit status. Pure decisions first, then
the same through real daemons."""
from __future__ import annotations

import json
import random

import pytest
from util import assert_one_error_line, nowait

from grun.client import current_user, job_spec
from grun.core import jobs as J
from grun.core.master_state import MasterState
from grun.core.queue import JobTable


def _state() -> MasterState:
    m = MasterState(random.Random(0))
    m.handle("register", {"name": "a", "uri": "PYRO:x@a:1", "cpus": 4, "memory": 4000, "incarnation": "i"}, 0.0)
    return m


def _submit(m: MasterState, user: str = "ann", **spec) -> int:
    return m.handle("submit", m.requests([{"cmd": ["x"], "user": user, **spec}]), None, 1.0).reply[0]


def test_names_are_per_user_for_uniqueness_and_after():
    m = _state()
    anns = _submit(m, name="common", hold=True)
    bobs = _submit(m, user="bob", name="common", hold=True)  # another user's name is no clash
    assert bobs != anns and m.table.names == {("ann", "common"): anns, ("bob", "common"): bobs}
    with pytest.raises(ValueError, match=rf"a job named 'common' already exists \(job {bobs}\)"):
        _submit(m, user="bob", name="common")
    waiter = _submit(m, user="bob", after=["common"])
    assert m.table.jobs[waiter]["deps"] == [["after", bobs]], "bob's --after common is bob's job"


@pytest.mark.parametrize("name", ["65", "12.3", "a,b", "*", "x?", "n[1]", "a b", "tab\tbed"])
def test_a_name_that_reads_as_an_id_a_list_or_a_glob_is_refused(name):
    with pytest.raises(ValueError, match=r"^bad job name .*: a name is not a number and has no blank or any of"):
        J.validate_spec({"cmd": ["x"], "name": name})


def test_names_like_versions_and_paths_are_fine():
    for name in ("build-1.2", "a.b", "v2", "1.2.3", "x_y/z"):
        assert J.validate_spec({"cmd": ["x"], "name": name})["name"] == name


def test_no_cpus_or_no_memory_is_refused_at_submit_and_at_edit():
    with pytest.raises(ValueError, match=r"^-c 0: cpus must be above 0 \(fractions allowed: -c 0.5\)$"):
        J.validate_spec({"cmd": ["x"], "cpus": 0})
    with pytest.raises(ValueError, match=r"^-m 0: memory must be above 0 \(give a size, like -m 500M\)$"):
        J.validate_spec({"cmd": ["x"], "memory": 0})
    m = _state()
    held = _submit(m, hold=True)
    for change, what in (({"cpus": "0"}, "-c 0: cpus"), ({"memory": "0"}, "-m 0: memory")):
        with pytest.raises(ValueError, match=f"job {held}: {what} must be above 0"):
            m.handle("edit", [held], change, 2.0)


def test_an_edit_no_node_could_run_is_refused_even_for_a_job_forced_at_submit_unless_forced():
    m = _state()
    forced = _submit(m, cpus=8, force=True)  # no node has 8 cpus: queued only because of --force
    for change in ({"cpus": "100"}, {"memory": "1T"}, {"hosts": "nosuch"}, {"p.gpu": "1"}):
        with pytest.raises(ValueError, match=r"no node .*\(add force=yes to edit it anyway\)$"):
            m.handle("edit", [forced], change, 2.0)
    assert m.handle("edit", [forced], {"priority": "30"}, 2.0).reply == {str(forced): True}, \
        "what it was forced past stays allowed"
    assert m.handle("edit", [forced], {"p.gpu": "1", "force": "yes"}, 2.0).reply == {str(forced): True}
    assert m.table.jobs[forced]["params"] == {"gpu": 1}
    plain = _submit(m)
    assert m.handle("edit", [plain], {"memory": "1T", "force": "yes"}, 3.0).reply == {str(plain): True}
    assert m.handle("edit", [plain], {"priority": "3"}, 3.0).reply == {str(plain): True}, "forced once: as at submit"


def test_after_replaces_every_dependency_and_empty_clears_them():
    m = _state()
    first, second = _submit(m, hold=True), _submit(m, hold=True)
    waiter = _submit(m, afterok=[first], afternotok=[second])
    m.handle("edit", [waiter], {"after": str(second)}, 2.0)
    assert m.table.jobs[waiter]["deps"] == [["after", second]], "afterok and afternotok are gone"
    m.handle("edit", [waiter], {"after": ""}, 3.0)
    assert (m.table.jobs[waiter]["state"], m.table.jobs[waiter]["deps"]) == (J.QUEUED, [])


def test_a_job_that_never_started_has_no_exit_status():
    m = _state()
    queued = _submit(m, hold=True)
    failing = _submit(m, hold=True)
    cancelled = _submit(m, afterok=[failing])
    m.handle("kill", [queued], 15, False, 2.0)
    m.handle("kill", [failing], 2, False, 2.0)  # ends it killed: its afterok dependant is cancelled
    for job_id, code, state in ((queued, 143, J.KILLED), (failing, 130, J.KILLED), (cancelled, 1, J.CANCELLED)):
        record = m.recent[job_id]
        assert (record["state"], record["exit_code"], J.describe_exit(record)) == (state, None, "-")
        assert record["exit"] == code, "whoever waits for it exits non-zero, as for a job killed or failed"
        assert "signal" not in record and not record.get("start_time")
    assert m.recent[queued]["reason"] == "killed while held (signal 15)"
    assert m.recent[cancelled]["reason"] == "dependency 2 killed"


def test_output_names_take_the_job_id_and_name_arrays_their_tasks_and_percent_percent_a_percent():
    m = _state()
    plain = _submit(m, name="nm", stdout_file="o.%j.%x.%%j.%q", stderr_file="e.%A.%a")
    line = _submit(m, env={"GRUN_TASK_ID": "3"}, stdout_file="c.%a.%j")  # a --cmds line
    array = _submit(m, name="arr", array="5-6", stdout_file="a.%A.%a.%j.%x")
    m.handle("schedule", 2.0)
    jobs = m.table.jobs
    assert (jobs[plain]["stdout_file"], jobs[plain]["stderr_file"]) == (f"o.{plain}.nm.%j.%q", f"e.{plain}.%a")
    assert jobs[line]["stdout_file"] == f"c.3.{line}" and jobs[array]["stdout_file"] == "a.%A.%a.%j.%x"
    assert [jobs[i]["stdout_file"] for i in m.table.tasks[array].values()] == [
        f"a.{array}.{task}.{i}.arr" for task, i in m.table.tasks[array].items()] and len(m.table.tasks[array]) == 2
    again = JobTable()  # a master restarted from its snapshot: the names stay (%% was % once: not expanded twice)
    again.restore(json.loads(json.dumps(m.table.snapshot())))
    assert {i: j.get("stdout_file") for i, j in again.jobs.items()} == {i: j.get("stdout_file") for i, j in jobs.items()}


def test_a_held_job_takes_a_dependency_edit_and_a_started_one_is_told_what_can_be_edited():
    m = _state()
    first, held = _submit(m, hold=True), _submit(m, hold=True)
    assert m.handle("edit", [held], {"after": str(first)}, 2.0).reply == {str(held): True}
    assert (m.table.jobs[held]["state"], m.table.jobs[held]["deps"]) == (J.HELD, [["after", first]])
    m.handle("control", "resume", [held], 3.0)
    assert m.table.jobs[held]["state"] == J.WAITING, "released: it waits for what the edit named"
    started = _submit(m)
    m.handle("schedule", 4.0)
    with pytest.raises(ValueError, match=rf"^job {started} is dispatched: only queued, waiting or held jobs can be "
                                         r"edited$"):
        m.handle("edit", [started], {"after": str(first)}, 5.0)


# ---- through real daemons ---------------------------------------------------------------------------------


def test_output_names_expand_per_job_for_plain_array_and_cmds_jobs(cluster, tmp_path):
    plain = [nowait(cluster, "-o", str(tmp_path / "log.%j"), "sh", "-c", "echo job $GRUN_JOB_ID") for _ in range(3)]
    array = nowait(cluster, "--array", "1-2", "-j", "arr", "-o", str(tmp_path / "a.%x.%A.%a.%j"), "sh", "-c",
                   "echo $GRUN_JOB_ID")
    (tmp_path / "cmds").write_text("echo one\necho two\n")
    r = cluster.grun("--cmds", str(tmp_path / "cmds"), "-o", str(tmp_path / "c.%a.%j.100%%"))
    assert r.returncode == 0, r.stderr
    assert {s["state"] for s in cluster.client().wait([*plain, array], 30).values()} == {"done"}
    assert [(tmp_path / f"log.{j}").read_text() for j in plain] == [f"job {j}\n" for j in plain]
    tasks = sorted(p.name.split(".")[3:] + [p.read_text()] for p in tmp_path.glob(f"a.arr.{array}.*"))
    assert [task for task, _, _ in tasks] == ["1", "2"] and all(out == f"{i}\n" for _, i, out in tasks), tasks
    lines = sorted(p.name.split(".")[1:] + [p.read_text()] for p in tmp_path.glob("c.*"))
    assert [(n, i.isdigit(), pct, out) for n, i, pct, out in lines] == [("1", True, "100%", "one\n"),
                                                                       ("2", True, "100%", "two\n")], lines


def test_a_held_job_waits_for_what_an_edit_names(cluster):
    blocker, held = nowait(cluster, "--hold", "true"), nowait(cluster, "--hold", "true")
    try:
        r = cluster.grun("-e", f"after={blocker}", str(held))
        assert r.returncode == 0, r.stderr
        assert cluster.grun("-e", "resume", str(held)).returncode == 0
        assert cluster.client().job(held)["state"] == "waiting"
        assert cluster.grun("-e", "resume", str(blocker)).returncode == 0
        assert cluster.client().wait([held], 30)[held]["state"] == "done"
    finally:
        cluster.client().kill([blocker, held])


def test_names_per_user_and_bad_requests_on_a_cluster(cluster):
    theirs = cluster.client().submit_spec(job_spec(["sleep", "30"], user="someone-else", name="common", hold=True))
    try:
        mine = nowait(cluster, "-j", "common", "true")  # the same name, another user's job has it
        assert mine != theirs
        client = cluster.client()
        assert client.lookup("common", "someone-else", False) == theirs
        assert client.lookup("common", current_user()) == mine, "our own, finished or not"
        client.wait([mine], 20)
        assert_one_error_line(cluster.grun("-k", str(mine)), f"job {mine} has already ended (done)")  # not "no such"
        own = cluster.grun("-j", "common", "-W", "sh", "-c", "exit 7", timeout=20)  # theirs is held: not waited for
        assert own.returncode == 7, own.stderr
        ours = nowait(cluster, "-j", "common", "sleep", "30")  # live, as theirs is: -k by name takes ours, not theirs
        assert cluster.grun("-k", "-j", "common").returncode == 0
        assert client.wait([ours], 20)[ours]["state"] == "killed" and client.job(theirs)["state"] == "held"
        for args, needle in ((("-j", "65"), "bad job name '65'"), (("-j", "a,b"), "bad job name 'a,b'"),
                             (("-m", "0"), "-m: memory must be above 0"), (("-c", "0"), "-c: cpus must be above 0")):
            assert_one_error_line(cluster.grun("--nowait", *args, "true"), needle)
        forced = nowait(cluster, "--force", "-c", "64", "true")
        try:
            assert_one_error_line(cluster.grun("-e", "memory=1T", str(forced)), "no node has", "force=yes")
            assert cluster.grun("-e", "priority=3", str(forced)).returncode == 0
        finally:
            assert cluster.grun("-k", str(forced)).returncode == 0
        assert J.describe_exit(cluster.client().wait([forced], 20)[forced]) == "-"
        history = cluster.grun("-q", "history", "-c", "5").stdout.decode().splitlines()
        assert next(line for line in history if line.startswith(f"{forced} ")).split()[2:4] == ["killed", "-"], history
    finally:
        cluster.client().kill([theirs])
