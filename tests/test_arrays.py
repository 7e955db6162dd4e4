"""Arrays that scale (issue 13): `--array 1-100000%50` is one record at the master, its tasks made job
records as they are placed, each its own history row (`12.7`). Pure unit tests of the expansion and the
master's decisions first (no daemons), then the same through real daemons."""
from __future__ import annotations

import random
import signal
import time
import tracemalloc

import pytest

from grun import tables
from grun.core import arrays as A
from grun.core import jobs as J
from grun.core.explain import explain
from grun.core.master_state import MasterState


def _state(cpus: int = 4) -> MasterState:
    m = MasterState(random.Random(0))
    m.handle("register", {"name": "a", "uri": "PYRO:grun.node@a:1", "cpus": cpus, "memory": 64000,
                          "incarnation": "i1", "seq": 0}, 0.0)
    return m


def _submit(m: MasterState, array: str, now: float = 1.0, **spec) -> int:
    return m.handle("submit", m.requests([{"cmd": ["true"], "array": array, **spec}]), None, now).reply[0]


def _offered(step) -> list[dict]:
    return [job for kind, _, jobs in (i for i in step.do if i[0] == "offer") for job in jobs]


def _finish(m: MasterState, jobs: list[dict], now: float, code=lambda job: 0):
    return m.handle("finished", "a", [{"id": j["id"], "exit_code": code(j)} for j in jobs], now)


# ---- the expansion, pure ---------------------------------------------------------------------------

def test_task_ids_come_in_order_each_once_whatever_the_form():
    a = A.parse("1-5:2,10,20-21%2")
    assert (a["tasks"], a["limit"]) == (6, 2)
    order = []
    while A.left(a):
        order.append(A.next_task(a))
        A.take(a, order[-1])
    assert order == [1, 3, 5, 10, 20, 21]
    b = A.parse("0-9")
    A.take(b, 5)  # started out of order (killed or held one by one)
    assert not A.has_task(b, 5) and A.has_task(b, 0) and not A.has_task(b, 10)
    rest = []
    while A.left(b):
        rest.append(A.next_task(b))
        A.take(b, rest[-1])
    assert rest == [0, 1, 2, 3, 4, 6, 7, 8, 9] and b["taken"] == []


@pytest.mark.parametrize("text,needle", [
    ("5-1", "expected task ids"), ("1-10%0", "%N needs N >= 1"), ("1-10%x", "%N needs"), ("1,1", "given twice"),
    ("1-5,3-8", "given twice"), ("1-200000", "at most 100,000"), ("1-2:0", "expected task ids"), ("", "expected"),
])
def test_bad_arrays_are_one_line_value_errors(text, needle):
    with pytest.raises(ValueError, match=needle):
        J.validate_spec({"cmd": ["true"], "array": text})


def test_room_respects_the_limit_and_what_is_left():
    a = A.parse("1-100%3")
    assert A.room(a, 0) == 3 and A.room(a, 2) == 1 and A.room(a, 3) == 0
    assert A.room(A.parse("1-2"), 0) == 2


def test_a_task_gets_its_environment_and_its_output_names():
    a = dict(A.parse("1-9"), id=12, cmd=["x"], env={"A": "1"}, stdout_file="/o/%A.%a", token="t", name="n",
             state="queued")
    t = A.task_job(a, 40, 7)
    J.out_names(t, a)  # (as the job table does, for every job it takes in)
    assert (t["id"], t["array"], t["task"], t["stdout_file"]) == (40, 12, 7, "/o/12.7")
    assert t["env"] == {"A": "1", "GRUN_TASK_ID": "7", "SLURM_ARRAY_TASK_ID": "7", "SGE_TASK_ID": "7",
                        "SLURM_ARRAY_JOB_ID": "12"}
    assert not {"ranges", "token", "name", "counts"} & t.keys()


# ---- the master's decisions ------------------------------------------------------------------------

def test_a_big_array_is_one_record_of_a_few_kilobytes():
    m = _state()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    step = m.handle("submit", m.requests([{"cmd": ["true"], "array": "1-100000"}]), None, 1.0)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(step.records) == 1 and len(m.table.jobs) == 1 and len(m.table.pending) == 1
    assert grown < 64 * 1024, f"the master grew by {grown} bytes for one array"


def test_placement_makes_tasks_jobs_as_they_fit_and_respects_percent_n():
    m = _state(cpus=8)
    array_id = _submit(m, "1-10%3")
    step = m.handle("schedule", 2.0)
    tasks = _offered(step)
    assert [(t["array"], t["task"]) for t in tasks] == [(array_id, 1), (array_id, 2), (array_id, 3)]
    assert [r["op"] for r in step.records] == ["task", "task", "task", "dispatch", "dispatch", "dispatch"]
    assert len({t["id"] for t in tasks} | {array_id}) == 4 and tasks[0]["env"]["SLURM_ARRAY_JOB_ID"] == str(array_id)
    assert _offered(m.handle("schedule", 3.0)) == [], "at most 3 at once"
    assert explain(m.table.jobs[array_id], m, 3.0) == (f"Array {array_id} waits: the array runs at most 3 tasks at "
                                                      "once (%3) and 3 are running; the next starts when one ends.")
    _finish(m, tasks[:2], 4.0)
    assert [t["task"] for t in _offered(m.handle("schedule", 5.0))] == [4, 5]
    assert m.table.jobs[array_id]["counts"] == {"done": 2}


def test_a_task_held_and_released_on_its_own_still_waits_for_percent_n():
    m = _state(cpus=8)
    array_id = _submit(m, "1-10%2")
    running = _offered(m.handle("schedule", 2.0))
    m.handle("control", "hold", [f"{array_id}.7"], 3.0)
    m.handle("control", "resume", [f"{array_id}.7"], 4.0)
    assert _offered(m.handle("schedule", 5.0)) == [], "2 of its array run: %2"
    task = m.table.jobs[m.table.tasks[array_id][7]]
    assert explain(task, m, 5.0).startswith(f"Job {array_id}.7 waits: the array runs at most 2")
    _finish(m, running[:1], 6.0)
    assert [t["task"] for t in _offered(m.handle("schedule", 7.0))] == [7], "room for one: the task released"


def test_a_held_task_takes_no_percent_n_slot_and_why_counts_only_the_running():
    m = _state(cpus=8)
    array_id = _submit(m, "1-4%1")
    first = _offered(m.handle("schedule", 2.0))
    m.handle("control", "hold", [f"{array_id}.3"], 3.0)
    _finish(m, first, 4.0)
    assert [t["task"] for t in _offered(m.handle("schedule", 5.0))] == [2], "task 3 is held: 2 runs"
    assert explain(m.table.jobs[array_id], m, 5.0) == (f"Array {array_id} waits: the array runs at most 1 task at "
                                                      "once (%1) and 1 is running; the next starts when one ends.")
    m.handle("control", "resume", [f"{array_id}.3"], 6.0)
    assert explain(m.table.jobs[array_id], m, 6.0).endswith("and 1 is running, 1 more queued to start; the next "
                                                            "starts when one ends.")


def test_an_array_ends_with_one_finish_record_its_outcome():
    m = _state(cpus=8)
    array_id = _submit(m, "1-4")
    tasks = _offered(m.handle("schedule", 2.0))
    assert m.table.jobs[array_id]["state"] == J.RUNNING and len(m.table.pending) == 0, "every task started"
    _finish(m, tasks[:3], 3.0, lambda j: 5 if j["task"] == 3 else 0)
    assert array_id in m.table.jobs
    step = _finish(m, tasks[3:], 4.0, lambda j: 9)
    assert step.records[-1] == {"op": "finish", "id": array_id, "time": 4.0,
                                "result": {"status": "failed", "exit_code": 5}}
    ended = [i[1] for i in step.do if i[0] == "finished"]
    assert [j.get("task") for j in ended] == [4, None], "the task's history row, then the array's"
    assert ended[1]["counts"] == {"done": 2, "failed": 2} and ended[1]["failures"] == [[3, 5], [4, 9]]
    assert ended[1]["exit"] == 5 and array_id not in m.table.jobs and m.table.tasks == {}


def test_kill_the_whole_array_or_one_task():
    m = _state(cpus=2)
    array_id = _submit(m, "1-100000")
    running = _offered(m.handle("schedule", 2.0))
    assert len(running) == 2
    one = m.handle("kill", [f"{array_id}.50"], 15, False, 3.0)  # not started: made a job to end it
    assert one.reply == {f"{array_id}.50": True}
    killed = [i[1] for i in one.do if i[0] == "finished"]
    assert [(j["task"], j["state"]) for j in killed] == [(50, "killed")]
    assert m.handle("kill", [f"{array_id}.50", f"{array_id}.200000"], 15, False, 3.0).reply == {
        f"{array_id}.50": False, f"{array_id}.200000": False}
    step = m.handle("kill", [array_id], 15, False, 4.0)
    assert [i for i in step.do if i[0] == "kill"] == [("kill", "a", [t["id"] for t in running], 15)]
    assert [r["op"] for r in step.records] == ["stop", "kill", "kill"]
    assert m.table.jobs[array_id]["counts"] == {"killed": 1 + 100000 - 3}, "the rest end with it, unstarted"
    assert _offered(m.handle("schedule", 5.0)) == []
    end = _finish(m, running, 6.0, lambda j: 143)
    assert end.records[-1]["result"] == {"status": "killed", "exit_code": 143}


def test_kill_force_ends_the_array_with_its_running_tasks():
    m = _state(cpus=2)
    array_id = _submit(m, "1-10")
    m.handle("schedule", 2.0)
    step = m.handle("kill", [array_id], 9, True, 3.0)
    assert [r["op"] for r in step.records] == ["stop", "kill", "finish", "kill", "finish", "finish"]
    assert step.records[-1]["id"] == array_id and m.table.jobs == {} and m.table.tasks == {}


def test_hold_the_whole_array_then_release_it():
    m = _state(cpus=2)
    array_id = _submit(m, "1-10")
    running = _offered(m.handle("schedule", 2.0))
    m.handle("started", "a", {"started": {str(t["id"]): 9 for t in running}, "incarnation": "i1", "seq": 1}, 2.5)
    step = m.handle("control", "hold", [array_id], 3.0)
    assert m.table.jobs[array_id]["state"] == J.HELD
    assert ("signal", "a", "suspend", [t["id"] for t in running], None) in step.do  # (by: no admin)
    _finish(m, running, 4.0)
    assert _offered(m.handle("schedule", 5.0)) == []
    m.handle("control", "resume", [array_id], 6.0)
    assert [t["task"] for t in _offered(m.handle("schedule", 7.0))] == [3, 4]


def test_a_pending_only_hold_of_an_array_holds_its_tasks_not_started_and_its_running_ones_run_on():
    """Slurm's scontrol hold and SGE's qhold: a running task runs on; a task split out of it (an edit) is held too (QA)."""
    m = _state(cpus=2)
    array_id = _submit(m, "1-10")
    running = _offered(m.handle("schedule", 2.0))
    m.handle("started", "a", {"started": {str(t["id"]): 9 for t in running}, "incarnation": "i1", "seq": 1}, 2.5)
    m.handle("edit", [f"{array_id}.7"], {"priority": "10"}, 2.7)
    split = m.table.tasks[array_id][7]
    step = m.handle("control", "hold", [array_id], 3.0, True)
    assert sorted((r["op"], r["id"]) for r in step.records) == [("hold", array_id), ("hold", split)] and step.do == []
    assert m.table.jobs[array_id]["state"] == m.table.jobs[split]["state"] == J.HELD
    assert all(m.table.jobs[t["id"]]["state"] == J.RUNNING for t in running)
    _finish(m, running, 4.0)
    assert _offered(m.handle("schedule", 5.0)) == []


def test_a_replayed_journal_or_a_snapshot_gives_the_same_array():
    m, journal = MasterState(random.Random(0)), []

    def handle(*event):
        step = m.handle(*event)
        journal.extend(step.records)
        return step
    handle("register", {"name": "a", "uri": "PYRO:n@a:1", "cpus": 2, "memory": 9000, "incarnation": "i"}, 0.0)
    array_id = handle("submit", m.requests([{"cmd": ["true"], "array": "1-6%2", "stdout_file": "/o.%a"}]),
                      None, 1.0).reply[0]
    tasks = _offered(handle("schedule", 2.0))
    handle("finished", "a", [{"id": tasks[0]["id"], "exit_code": 3}], 3.0)
    handle("kill", [f"{array_id}.6"], 15, False, 3.5)
    handle("schedule", 4.0)
    replayed, restored = MasterState(), MasterState()
    replayed.recover(None, journal, 5.0)
    restored.recover(m.table.snapshot(), [], 5.0)
    for other in (replayed, restored):
        assert other.table.next_id == m.table.next_id and other.table.tasks == m.table.tasks
        assert other.table.jobs == m.table.jobs and other.table.jobs[array_id]["failures"] == [[1, 3], [6, 143]]
        assert _offered(other.handle("schedule", 6.0)) == [], "still 2 live: %2"
    assert m.table.jobs[array_id]["stdout_file"] == "/o.%a" and tasks[1]["stdout_file"] == "/o.2"


def test_jobs_fold_an_array_into_one_line_with_counts():
    m = _state(cpus=2)
    array_id = _submit(m, "1-10")
    running = _offered(m.handle("schedule", 2.0))
    _finish(m, running[:1], 3.0)
    m.handle("schedule", 4.0)
    m.handle("kill", [f"{array_id}.9"], 15, False, 4.5)
    shown = tables.jobs_table([m.view(j) for j in sorted(m.table.jobs.values(), key=lambda j: j["id"])])
    lines = shown.splitlines()
    assert len(lines) == 2 and lines[1].startswith(f"{array_id} ")
    assert "2 dispatched, 6 queued, 1 done, 1 killed" in lines[1], shown
    assert tables.label({"id": 40, "array": 12, "task": 7}) == "12.7"


# ---- through real daemons ---------------------------------------------------------------------------

def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _job_id(r) -> int:
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Job_ID: "), lines
    return int(lines[0].split()[1])


def _spans(directory) -> list[tuple[float, float]]:
    return [tuple(map(float, p.read_text().split())) for p in sorted(directory.glob("span.*"))]


def test_100k_tasks_submit_in_under_a_second_and_the_master_grows_by_kilobytes(cluster, tmp_path):
    client, master = cluster.client(), cluster.procs["master"].pid
    client.wait([client.submit_spec({"cmd": ["true"]})])  # (the master's first submit and finish behind it)
    before = _rss_kb(master)
    started = time.perf_counter()
    array_id = client.submit_spec({**_spec(tmp_path), "cmd": ["sleep", "30"], "array": "1-100000%2"})
    took = time.perf_counter() - started
    grown = _rss_kb(master) - before
    try:
        assert took < 1.0, f"submitting 100,000 tasks took {took:.2f} s"
        assert grown < 2048, f"the master grew by {grown} KB for an array of 100,000 tasks"
        assert client.job(array_id)["tasks"] == 100000
    finally:
        assert client.kill([array_id]) == {array_id: True}
        end = client.wait([array_id], timeout=30)[array_id]
    assert end["state"] == "killed" and sum(end["counts"].values()) == 100000


def _spec(cwd) -> dict:
    from grun.client import job_spec
    return job_spec(["true"], cwd=str(cwd))


def test_percent_n_bounds_the_tasks_running_at_once_and_each_gets_its_ids(cluster, tmp_path):
    script = 'echo "$GRUN_TASK_ID $SLURM_ARRAY_TASK_ID $SLURM_ARRAY_JOB_ID $SGE_TASK_ID"; ' \
             'a=$(date +%s.%N); sleep 0.4; echo "$a $(date +%s.%N)" > span.$GRUN_TASK_ID'
    r = cluster.grun("-v", "--array", "1-6%2", "-o", str(tmp_path / "out.%a"), script, cwd=tmp_path)
    array_id = _job_id(r)
    spans = _spans(tmp_path)
    assert len(spans) == 6
    overlap = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert overlap == 2, f"{overlap} tasks ran at once with %2: {spans}"
    assert [(tmp_path / f"out.{t}").read_text() for t in range(1, 7)] == [f"{t} {t} {array_id} {t}\n" for t in range(1, 7)]
    rows = cluster.grun("-q", "history", "-c", "7").stdout.decode()
    assert all(f"{array_id}.{t} " in rows for t in range(1, 7)) and f"\n{array_id} " in rows, rows


def test_kill_one_task_then_the_whole_array_and_jobs_fold_it(cluster, tmp_path):
    client = cluster.client()
    array_id = _job_id(cluster.grun("--nowait", "--array", "1-50%2", "sleep", "30", cwd=tmp_path))
    deadline = time.monotonic() + 20
    while sum(1 for j in client.jobs() if j.get("array") == array_id and j["state"] == "running") < 2:
        assert time.monotonic() < deadline, client.jobs()
        time.sleep(0.05)
    shown = cluster.grun("-q", "jobs").stdout.decode().splitlines()
    assert len(shown) == 2 and shown[1].split()[0] == str(array_id) and "2 running, 48 queued" in shown[1], shown
    # a task not begun, by its N.T reference (was 'bad job id', then 'no such job'): split out of its array to edit
    r = cluster.grun("-e", "priority=5", f"{array_id}.40")
    assert r.returncode == 0 and client.job(client.job_id(f"{array_id}.40"))["priority"] == 5, r.stderr
    r = cluster.grun("-k", f"{array_id}.1", f"{array_id}.30")
    assert r.returncode == 0, r.stderr
    assert cluster.grun("-k", f"{array_id}.30").returncode == 1, "ended already"
    assert client.job(array_id)["counts"] == {"killed": 2}
    assert cluster.grun("-k", str(array_id)).returncode == 0
    r = cluster.grun("-q", "wait", str(array_id), timeout=30)
    end = client.job(array_id)
    assert r.returncode == 143 and end["state"] == "killed" and sum(end["counts"].values()) == 50, (r.stderr, end)
    assert [j for j in client.jobs() if j.get("array") == array_id or j["id"] == array_id] == []


def test_the_client_waits_for_every_task_and_a_hold_stops_new_ones(cluster, tmp_path):
    p = cluster.popen("--array", "1-4%1", "sh", "-c", "sleep 0.3; exit $((GRUN_TASK_ID == 3 ? 7 : 0))",
                      cwd=tmp_path)
    client = cluster.client()
    deadline = time.monotonic() + 20
    while not (found := [j for j in client.jobs() if "ranges" in j]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    array_id = found[0]["id"]
    assert cluster.grun("-e", "hold", str(array_id)).returncode == 0
    time.sleep(1.0)
    held = client.job(array_id)
    assert held["state"] == "held" and held["started"] <= 2, held
    assert cluster.grun("-e", "resume", str(array_id)).returncode == 0
    _, err = p.communicate(timeout=30)
    assert p.returncode == 7, err
    note = "grun: tasks' output is not shown here; give -o out.%a (and --err err.%a) to keep it"
    assert err.decode().splitlines() == [note, f"grun: 1 of 4 tasks failed: {array_id}.3 (exit 7)"]


def test_a_master_restarted_mid_array_runs_each_task_once(fresh_cluster, tmp_path):
    c = fresh_cluster
    array_id = _job_id(c.grun("--nowait", "--array", "1-8%3", f"echo $GRUN_TASK_ID >> {tmp_path}/ran; sleep 0.5",
                              cwd=tmp_path))
    time.sleep(1.0)
    c.kill("master", signal.SIGKILL)
    c.start_master()
    r = c.grun("-q", "wait", str(array_id), timeout=60)
    assert r.returncode == 0, r.stderr
    assert sorted(int(t) for t in (tmp_path / "ran").read_text().split()) == list(range(1, 9))
    assert c.client().job(array_id)["counts"] == {"done": 8}


@pytest.mark.parametrize("array,needle", [("5-1", "expected task ids"), ("1-5%0", "%N needs N >= 1")])
def test_bad_arrays_are_refused_on_one_line_and_queue_nothing(cluster, array, needle):
    r = cluster.grun("--array", array, "true")
    err = r.stderr.decode()
    assert r.returncode == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(Exception, match=needle):  # the master refuses it too, from any client
        cluster.client().submit_spec({**_spec("/tmp"), "array": array})
    assert cluster.client().jobs() == []


def test_a_task_held_before_it_starts_does_not_stop_its_array(cluster, tmp_path):
    array_id = _job_id(cluster.grun("--nowait", "--array", "1-4%1", "sleep", "0.5", cwd=tmp_path))
    assert cluster.grun("-e", "hold", f"{array_id}.3").returncode == 0
    client, deadline = cluster.client(), time.monotonic() + 20
    while client.job(array_id)["counts"].get("done", 0) < 3:
        assert time.monotonic() < deadline, (client.job(array_id), cluster.grun("why", str(array_id)).stdout)
        time.sleep(0.1)
    task = next(j for j in client.jobs() if j.get("array") == array_id)
    assert (task["task"], task["state"]) == (3, "held")
    assert cluster.grun("-e", "resume", f"{array_id}.3").returncode == 0
    assert cluster.grun("-q", "wait", str(array_id), timeout=30).returncode == 0


def test_dash_j_names_the_array_job_and_not_its_tasks(cluster, tmp_path):
    """QA: `grun -j NAME --array 1-4` was refused. As `sbatch -J NAME --array`, the name is the array job's (its one
    record): --after NAME, -q jobs NAME and kill by name find the array; its tasks take no name (names are unique)."""
    array_id = _job_id(cluster.grun("--nowait", "-j", "sweep", "--array", "1-4%1", "sleep", "30", cwd=tmp_path))
    after = _job_id(cluster.grun("--nowait", "--after", "sweep", "true", cwd=tmp_path))
    client, deadline = cluster.client(), time.monotonic() + 20
    while not (tasks := [j for j in client.jobs() if j.get("array") == array_id and j["state"] == "running"]):
        assert time.monotonic() < deadline, client.jobs()
        time.sleep(0.05)
    assert client.job(array_id)["name"] == "sweep" and "name" not in tasks[0], tasks
    assert client.job(after)["state"] == "waiting" and array_id in [d[1] for d in client.job(after)["deps"]]
    shown = cluster.grun("-q", "jobs", "sweep").stdout.decode().splitlines()
    assert [line.split()[0] for line in shown[1:]] == [str(array_id)], shown
    r = cluster.grun("--nowait", "-j", "sweep", "true", cwd=tmp_path)
    assert r.returncode != 0 and f"a job named 'sweep' already exists (job {array_id})" in r.stderr.decode(), r.stderr
    assert cluster.grun("-k", "sweep").returncode == 0
    assert cluster.grun("-q", "wait", str(array_id), timeout=30).returncode == 143
    assert cluster.grun("-q", "wait", str(after), timeout=30).returncode == 0, "--after sweep: the array's end"
