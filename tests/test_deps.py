"""Dependencies and retries (issue 13) through real daemons and the real `grun` command line."""
from __future__ import annotations

import json
import signal
import time

from util import nowait, wait_for


def _job(c, job_id: int) -> dict:
    return c.client().job(job_id)


def _state(c, job_id: int) -> str:
    return _job(c, job_id)["state"]


def _live(c) -> set[int]:
    return {j["id"] for j in c.client().jobs()}


def test_afterok_runs_in_order_and_a_failure_cancels_its_dependants_transitively(cluster, tmp_path):
    c, log = cluster, tmp_path / "log"
    go = tmp_path / "go"  # (A runs until it exists: a 'sleep 1' ended before the checks on a loaded machine)
    a = nowait(c, "sh", "-c", f"while [ ! -e {go} ]; do sleep 0.1; done; echo A >> {log}")
    b = nowait(c, "--afterok", str(a), "sh", "-c", f"echo B >> {log}")
    assert _state(c, b) == "waiting"
    assert "waiting" in c.grun("-q", "jobs").stdout.decode()
    why = c.grun("why", str(b)).stdout.decode()
    assert f"is waiting for job {a} to succeed (afterok)" in why, why
    go.touch()
    assert c.grun("-q", "wait", str(b)).returncode == 0
    assert log.read_text() == "A\nB\n"

    bad = nowait(c, "sh", "-c", "sleep 0.5; exit 3")
    child = nowait(c, "--afterok", str(bad), "true")
    grandchild = nowait(c, "--dependency", f"afterok:{child}", "true")
    anyway = nowait(c, "--after", str(child), "sh", "-c", f"echo anyway >> {log}")
    rescue = nowait(c, "--afternotok", str(bad), "sh", "-c", f"echo rescue >> {log}")
    assert c.grun("-q", "wait", str(child)).returncode == 1
    for job_id, reason in ((child, f"dependency {bad} failed"), (grandchild, f"dependency {child} cancelled")):
        job = _job(c, job_id)
        assert (job["state"], job["reason"]) == ("cancelled", reason)
    assert c.grun("-q", "wait", str(anyway), str(rescue)).returncode == 0
    assert sorted(log.read_text().split()) == ["A", "B", "anyway", "rescue"]
    assert f"has finished: cancelled, dependency {bad} failed" in c.grun("why", str(child)).stdout.decode()
    history = json.loads(c.grun("-q", "history", "--json").stdout)
    assert {j["id"]: j["state"] for j in history}[grandchild] == "cancelled"


def test_bad_dependencies_and_retries_are_refused_and_nothing_is_queued(cluster):
    c = cluster
    before = nowait(c, "true")
    for args, code, needle in ((["--afterok", "99999"], 1, "no job 99999"),
                               (["--after", "no-such-name"], 1, "no job named 'no-such-name'"),
                               (["--retries", "-1"], 2, "--retries"), (["--retries", "101"], 2, "0 to 100"),
                               (["--dependency", "afterany:3"], 2, "--dependency"),
                               (["--retry-delay", "soon"], 2, "--retry-delay")):
        r = c.grun("--nowait", *args, "true")
        err = r.stderr.decode()
        assert (r.returncode, err.count("\n")) == (code, 1) and needle in err, (args, r)
    assert nowait(c, "true") == before + 1, "nothing was queued"
    assert c.grun("-q", "wait", str(before), str(before + 1)).returncode == 0


def test_another_users_job_is_refused_as_a_dependency_when_the_config_says_so(tmp_path):
    from cluster import LocalCluster

    from grun.client import job_spec
    with LocalCluster({"solo": {"cpus": 2, "memory": 2000}}, master_extra={"deps_other_users": False}) as c:
        theirs = c.client().submit_spec(job_spec(["sleep", "30"], user="someone-else"))
        r = c.grun("--nowait", "--after", str(theirs), "true")
        assert (r.returncode, r.stderr) == (1, f"grun: --after: job {theirs} is someone-else's "
                                               f"(deps_other_users is off)\n".encode())
        assert _live(c) == {theirs}
        c.client().kill([theirs])


def test_edit_changes_what_a_job_waits_for_and_names_work_for_wait_and_kill(cluster):
    c = cluster
    blocker = nowait(c, "-j", "blocker", "sleep", "60")
    waiter = nowait(c, "--afterok", "blocker", "true")
    held_back = nowait(c, "-c", "64", "--force", "true")  # never fits: queued
    assert (_state(c, waiter), _job(c, waiter)["deps"]) == ("waiting", [["afterok", blocker]])
    r = c.grun("-e", f"after={blocker},{waiter}", str(held_back))
    assert r.returncode == 0, r.stderr
    assert _state(c, held_back) == "waiting"
    assert sorted(d[1] for d in _job(c, held_back)["deps"]) == [blocker, waiter]
    r = c.grun("-e", f"afterok={held_back}", str(waiter))
    assert r.returncode == 1 and b"cycle" in r.stderr, r
    assert c.grun("-e", "afterok=", str(waiter)).returncode == 0
    assert c.grun("-q", "wait", str(waiter)).returncode == 0, "no longer waits: it ran"
    assert c.grun("-k", "blocker").returncode == 0
    assert c.grun("-q", "wait", "blocker").returncode == 128 + signal.SIGTERM, "by name, once finished too"
    wait_for(lambda: _state(c, held_back) == "queued", 20, what="its after dependencies to be met")
    assert c.grun("-k", str(held_back)).returncode == 0
    r = c.grun("-q", "wait", "never-was")
    assert r.returncode == 1 and b"no job named 'never-was'" in r.stderr


def test_a_failing_job_is_retried_with_its_attempts_counted(cluster, tmp_path):
    c, count = cluster, tmp_path / "count"
    script = f"n=$(cat {count} 2>/dev/null || echo 0); echo $((n+1)) > {count}; echo run $n; [ $n -ge 2 ]"
    job_id = nowait(c, "--retries", "3", "--retry-delay", "1", "sh", "-c", script)
    after = nowait(c, "--afterok", str(job_id), "true")
    started = time.monotonic()
    assert c.grun("-q", "wait", str(job_id)).returncode == 0
    assert time.monotonic() - started >= 2.0, "two retries, a second apart"
    job = _job(c, job_id)
    assert (job["state"], job["attempt"], job["retried"], count.read_text()) == ("done", 3, 2, "3\n")
    assert job["retry_reason"] == "attempt 2 failed: exit 1"
    assert c.grun("-q", "wait", str(after)).returncode == 0, "final for its dependants only at the last attempt"
    hist = {j["id"]: j for j in json.loads(c.grun("-q", "history", "--json").stdout)}
    assert hist[job_id]["retried"] == 2 and hist[job_id]["attempt"] == 3

    count.unlink()
    # streams each run and exits with the last one's code (a node keeps one spool per job: each run
    # lasts long enough for the client, slow to start on a loaded machine, to attach to it)
    r = c.grun("--retries", "1", "--retry-delay", "1", "sh", "-c", script.replace("; [", "; sleep 2; ["))
    assert r.returncode == 1 and r.stdout == b"run 0\nrun 1\n", r
    assert b"it is retried" in r.stderr
    killed = nowait(c, "--retries", "5", "sleep", "60")
    wait_for(lambda: _state(c, killed) == "running", 20, what="the job to run")
    assert c.grun("-k", str(killed)).returncode == 0
    assert c.grun("-q", "wait", str(killed)).returncode == 128 + signal.SIGTERM
    assert "retried" not in _job(c, killed), "a kill is not retried"


def test_dependencies_survive_a_master_restart_and_finished_ones_are_decided_from_history(fresh_cluster, tmp_path):
    c, log = fresh_cluster, tmp_path / "log"
    ok = nowait(c, "-j", "ok-step", "true")
    bad = nowait(c, "sh", "-c", "exit 2")
    assert c.grun("-q", "wait", str(ok)).returncode == 0 and c.grun("-q", "wait", str(bad)).returncode == 2
    running = nowait(c, "sh", "-c", f"sleep 2; echo first >> {log}")
    waiting = nowait(c, "--afterok", str(running), "sh", "-c", f"echo second >> {log}")
    c.kill("master", signal.SIGKILL)  # the waiting job is in the journal only
    c.start_master()
    assert _state(c, waiting) == "waiting"
    assert c.grun("-q", "wait", str(waiting)).returncode == 0
    assert log.read_text() == "first\nsecond\n"

    c.kill("master", signal.SIGTERM)  # a clean stop: snapshot; the next master's `recent` is empty
    c.start_master()
    c.wait_nodes(list(c.node_specs))
    by_id = nowait(c, "--afterok", str(ok), "true")
    by_name = nowait(c, "--afterok", "ok-step", "true")
    never = nowait(c, "--afterok", str(bad), "true")
    assert c.grun("-q", "wait", str(by_id), str(by_name)).returncode == 0
    assert (_state(c, never), _job(c, never)["reason"]) == ("cancelled", f"dependency {bad} failed")


def test_a_waiting_job_can_be_held_and_a_dependency_can_be_an_array_task(cluster, tmp_path):
    c = cluster
    gate = tmp_path / "go"  # (not a sleep: under load the hold below came after its dependency had ended)
    first = nowait(c, "sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.1; done")
    held = nowait(c, "--afterok", str(first), "true")
    assert c.grun("-e", "hold", str(held)).returncode == 0 and _state(c, held) == "held"
    gate.touch()
    assert c.grun("-q", "wait", str(first)).returncode == 0
    time.sleep(0.5)
    assert _state(c, held) == "held", "its dependency was met, but it is held"
    c.grun("-e", "resume", str(held))
    assert c.grun("-q", "wait", str(held)).returncode == 0

    blocker = nowait(c, "sleep", "60")  # killed below
    held = nowait(c, "--afterok", str(blocker), "true")  # released before its dependency is met: waiting again
    c.grun("-e", "hold", str(held))
    c.grun("-e", "resume", str(held))
    assert _state(c, held) == "waiting"
    c.grun("-k", str(blocker))
    wait_for(lambda: _state(c, held) == "cancelled", timeout=10)

    array = nowait(c, "--array", "1-3", "sh", "-c", "sleep 1; exit $((GRUN_TASK_ID == 3))")
    after_two = nowait(c, "--afterok", f"{array}.2", "true")
    after_three = nowait(c, "--afterok", f"{array}.3", "true")
    assert len({array, after_two, after_three}) == 3
    assert c.grun("-q", "wait", str(after_two)).returncode == 0
    assert c.grun("-q", "wait", str(after_three)).returncode == 1
    assert _job(c, after_three)["reason"].startswith("dependency ") and _job(c, after_three)["state"] == "cancelled"
    r = c.grun("--nowait", "--afterok", f"{array}.9", "true")
    assert r.returncode == 1 and "no task" in r.stderr.decode()
    # an ended task is judged by its end, as an ended plain job is (it was refused: "no live task")
    assert c.grun("--afterok", f"{array}.2", "true").returncode == 0
    blocker = nowait(c, "sleep", "60")
    waiting = nowait(c, "--afterok", str(blocker), "true")  # an edit names an ended task too
    assert c.grun("-e", f"afterok={array}.2", str(waiting)).returncode == 0
    assert c.grun("-q", "wait", str(waiting)).returncode == 0
    waiting, running = nowait(c, "--afterok", str(blocker), "true"), nowait(c, "--array", "1-2", "sleep", "1")
    c.client().job_id(f"{running}.1", deadline=time.monotonic() + 20)  # (begun)
    assert c.grun("-e", f"afterok={running}.1", str(waiting)).returncode == 0, "an edit names a live task too"
    assert c.grun("-q", "wait", str(waiting)).returncode == 0
    c.grun("-k", str(blocker))
    r = c.grun("--afterok", f"{array}.3", "true")
    assert r.returncode == 1 and "dependency" in r.stderr.decode() and "failed" in r.stderr.decode(), r


def test_a_task_a_job_waits_for_is_named_as_people_know_it(cluster, tmp_path):
    """QA: what a job waits for showed an array task's internal id where users know 12.7 (-q jobs -F after, --long,
    --json; the cancel's "dependency 3 failed"). Now as people name it wherever it is shown."""
    c, gate = cluster, tmp_path / "go"
    array = nowait(c, "--array", "1-2", "sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.1; done; exit $((GRUN_TASK_ID == 2))")
    after = nowait(c, "--afterok", f"{array}.2", "true")
    task = f"{array}.2"
    assert c.grun("-q", "jobs", "-F", "id,after", str(after)).stdout.decode().split()[-2:] == [str(after), f"afterok:{task}"]
    assert f"after     job {task} to succeed (afterok)" in c.grun("-q", "jobs", "--long", str(after)).stdout.decode()
    assert json.loads(c.grun("-q", "jobs", "--json", str(after)).stdout)[0]["deps"] == [["afterok", task]]
    assert f"is waiting for job {task} to succeed (afterok)" in c.grun("why", str(after)).stdout.decode()
    gate.touch()
    assert c.grun("-q", "wait", str(after)).returncode == 1
    assert _job(c, after)["reason"] == f"dependency {task} failed" and _job(c, after)["deps"] == [["afterok", task]]
    [ended] = json.loads(c.grun("-q", "history", "--json", str(after)).stdout)
    assert ended["deps"] == [["afterok", task]] and ended["error"] == f"dependency {task} failed"


def test_a_following_grun_says_why_it_waits_once_not_every_5_s(cluster):
    """QA: `grun --afterok` printed the same "is waiting for job 55 to succeed (afterok)" line every 5 s."""
    c = cluster
    a = nowait(c, "sleep", "9")
    out, err = c.popen("-v", "--afterok", str(a), "echo", "B").communicate(timeout=60)  # (-v: lines, not a terminal)
    why = f"is waiting for job {a} to succeed (afterok)"
    assert out == b"B\n" and err.decode().count(why) == 1, err  # (asked at 3 s, 8 s: said once)
