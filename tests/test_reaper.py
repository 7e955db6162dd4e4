"""The node's start path: one long-lived reaper process per node (grun.spawner) instead of a forked
Python supervisor per job, the node as child subreaper when that reaper dies, the limits a job gets
from its first instruction, the spool's few files per job, acks.log, and job actors that are objects
of the node's daemon without a name-server entry each; kills the master repeats, and a reload of the
node's config. Real daemons, real processes."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time

import psutil
import Pyro5.api
import pytest
import yaml
from cluster import LocalCluster, account
from util import group_alive, job_pid, wait_for, wait_state

from grun import registry

FAST = {"heartbeat": 0.5}
AS_US = {"cwd": "/", "uid": os.getuid(), "gid": os.getgid()}


@pytest.fixture
def c():
    cluster = LocalCluster(nodes={"n1": {"cpus": 4, "memory": 4000, **FAST}})
    cluster.start()
    yield cluster
    for proc in cluster.procs.values():
        try:
            proc.send_signal(signal.SIGCONT)
        except OSError:
            pass
    for pid in _reapers(cluster):  # a stopped reaper would keep its jobs' spools forever
        try:
            os.kill(pid, signal.SIGCONT)
        except OSError:
            pass
    cluster.stop()


def _jobs_dir(c) -> str:
    return os.path.join(c.root, "n1", "node", "jobs")


def _reapers(c) -> list[int]:
    """The pids of the reapers alive now (children of the node)."""
    node = psutil.Process(c.procs["n1"].pid)
    return [p.pid for p in node.children() if "grun.spawner" in " ".join(p.cmdline())]


def _reaper_of(c, job_id: int) -> int:
    with open(os.path.join(_jobs_dir(c), str(job_id), "pid")) as f:
        return int(f.read().split()[1].split(".")[0])


def _acks(c) -> str:
    try:
        with open(os.path.join(c.root, "n1", "node", "acks.log")) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _not_running(pid: int) -> bool:
    """Gone for good: ended and reaped (a zombie still counts as here)."""
    try:
        psutil.Process(pid).status()
        return False
    except psutil.NoSuchProcess:
        return True


def test_jobs_of_a_killed_reaper_are_waited_for_by_the_node(c, tmp_path):
    """kill -9 of the reaper while jobs run: the node (their subreaper now) records their exit codes
    and usage; the next job gets a new reaper; nothing is left as a zombie."""
    gate = tmp_path / "gate"
    client = c.client()
    ids = [client.submit_spec({"cmd": [f"echo out{k}; while [ ! -e {gate} ]; do sleep 0.05; done; exit {k}"],
                               "shell": True, **AS_US}) for k in (5, 6)]
    pids = [job_pid(c, i) for i in ids]
    reaper = _reaper_of(c, ids[0])
    assert _reaper_of(c, ids[1]) == reaper and reaper in _reapers(c)
    node_pid = c.procs["n1"].pid
    os.kill(reaper, signal.SIGKILL)
    # the jobs are the node's children now
    wait_for(lambda: all(psutil.Process(p).ppid() == node_pid for p in pids), 10,
             what="the orphaned jobs to be re-parented to the node")
    gate.touch()
    done = client.wait(ids, 30)
    for k, i in zip((5, 6), ids):
        assert (done[i]["state"], done[i]["exit"]) == ("failed", k), done[i]
        with open(os.path.join(_jobs_dir(c), str(i), "status.json")) as f:
            status = json.load(f)
        assert status["exit_code"] == k and status["usage"]["wall"] > 0
    wait_for(lambda: all(_not_running(p) for p in pids), 10, what="the jobs to be reaped, not zombies")
    r = c.grun("sh", "-c", "echo again; exit 3")
    assert (r.returncode, r.stdout) == (3, b"again\n"), r.stderr
    assert c.procs["n1"].poll() is None and reaper not in _reapers(c) and len(_reapers(c)) == 1


def test_jobs_a_killed_reaper_never_read_go_to_the_next_one(c, tmp_path):
    """A job still in the pipe of a reaper that dies is started once, by the next reaper."""
    runs = tmp_path / "runs"
    client = c.client()
    first = client.submit_spec({"cmd": ["true"], **AS_US})
    client.wait([first], 20)
    (reaper,) = _reapers(c)
    os.kill(reaper, signal.SIGSTOP)
    job_id = client.submit_spec({"cmd": [f"echo x >> {runs}; exit 4"], "shell": True, **AS_US})
    wait_state(c, job_id, "running")
    time.sleep(0.3)  # the line is in the stopped reaper's pipe: not claimed
    assert not os.path.exists(os.path.join(_jobs_dir(c), str(job_id), "pid"))
    os.kill(reaper, signal.SIGKILL)
    done = client.wait([job_id], 30)[job_id]
    assert (done["state"], done["exit"], done.get("attempt", 1)) == ("failed", 4, 1), done
    assert runs.read_text() == "x\n"


def test_a_job_gets_its_limits_as_hard_limits_and_the_reaper_keeps_its_own(c):
    script = ("import resource as r; print(*(v // 2**20 for v in r.getrlimit(r.RLIMIT_DATA)));"
              "r.setrlimit(r.RLIMIT_DATA, (r.RLIM_INFINITY, r.RLIM_INFINITY))")
    client = c.client()
    job_id = client.submit_spec({"cmd": ["python3", "-c", script], "memory": 100, **AS_US})
    done = client.wait([job_id], 30)[job_id]
    with open(os.path.join(_jobs_dir(c), str(job_id), "stdout")) as f:
        assert f.read() == "150 150\n"  # -m 100 x hard_factor 1.5, soft and hard
    assert done["exit"] == 1  # the job cannot raise its hard limit back
    (reaper,) = _reapers(c)
    assert psutil.Process(reaper).rlimit(psutil.RLIMIT_DATA) == psutil.Process(c.procs["n1"].pid).rlimit(
        psutil.RLIMIT_DATA)


def test_spool_files_acks_log_and_job_objects_without_name_server_entries(c, tmp_path):
    gate = tmp_path / "gate"
    client = c.client()
    job_id = client.submit_spec({"cmd": [f"echo hi; while [ ! -e {gate} ]; do sleep 0.05; done"],
                                 "shell": True, **AS_US})
    job_pid(c, job_id)
    view = client.job(job_id)
    # the job actor is an object of the node's daemon, reachable by the URI the client derives ...
    location = view["node_uri"].split("@", 1)[1]
    with registry.proxy(f"PYRO:{registry.job_name(job_id)}@{location}") as sup:
        assert sup.info()["status"] is None and sup.info()["stdout"] == 3
    # ... and not one name-server entry per job
    with registry.locate_ns("127.0.0.1", c.port) as ns:
        assert ns.list(prefix=registry.JOB_PREFIX) == {}
        assert registry.node_name("n1") in ns.list(prefix=registry.NODE_PREFIX)
    gate.touch()
    client.wait([job_id], 20)
    job_dir = os.path.join(_jobs_dir(c), str(job_id))
    wait_for(lambda: f"r {job_id} 1\n" in _acks(c), 10, what="the master's acknowledgement in acks.log")
    assert sorted(os.listdir(job_dir)) == ["job.json", "pid", "status.json", "stderr", "stdout"]
    r = c.grun("--attach", str(job_id))
    assert (r.returncode, r.stdout) == (0, b"hi\n"), r.stderr
    # the client's release is one-way: it may land just after the client has exited
    wait_for(lambda: f"f {job_id} 1\n" in _acks(c), 10, what="the fetch in acks.log")
    wait_for(lambda: not os.path.exists(job_dir), 15, what="the fetched spool to be removed")
    wait_for(lambda: not os.listdir(_jobs_dir(c)), 15, what="the sweeper to empty what it was renamed to")


def test_a_restarted_node_keeps_acks_and_the_old_reaper_finishes_its_job(c, tmp_path):
    """The node is killed; its reaper and job go on; the new node hears the old reaper's report, and
    a job the master had acknowledged before is not reported again."""
    gate = tmp_path / "gate"
    client = c.client()
    early = client.submit_spec({"cmd": ["sh", "-c", "exit 2"], **AS_US})
    client.wait([early], 20)
    wait_for(lambda: f"r {early} 1\n" in _acks(c), 10, what="the ack")
    job_id = client.submit_spec({"cmd": [f"while [ ! -e {gate} ]; do sleep 0.05; done; exit 9"],
                                 "shell": True, **AS_US})
    job_pid(c, job_id)
    (old_reaper,) = _reapers(c)
    c.kill("n1", signal.SIGKILL)
    assert psutil.pid_exists(old_reaper)
    os.makedirs(f"{_jobs_dir(c)}/.gone-1-1/tmp")  # (what a remove left in the last life: swept at the start)
    c.start_node("n1")
    wait_for(lambda: not os.path.exists(f"{_jobs_dir(c)}/.gone-1-1"), 5, what="the sweep at the node's start")
    gate.touch()
    done = client.wait([job_id], 30)[job_id]
    assert (done["state"], done["exit"]) == ("failed", 9), done
    wait_for(lambda: not psutil.pid_exists(old_reaper) or
             psutil.Process(old_reaper).status() == psutil.STATUS_ZOMBIE, 10,
             what="the old reaper to exit once its job has ended")
    assert _acks(c).count(f"r {early} 1\n") == 1  # compacted on restart, never reported again


def test_a_kill_before_the_reaper_started_the_job_ends_it_at_its_start(c):
    """The job waits in the pipe of a busy (here: stopped) reaper when the kill comes: the node leaves
    `killreq`, and the reaper signals the job as soon as it has started it."""
    client = c.client()
    client.wait([client.submit_spec({"cmd": ["true"], **AS_US})], 20)
    (reaper,) = _reapers(c)
    os.kill(reaper, signal.SIGSTOP)
    job_id = client.submit_spec({"cmd": ["sleep", "30"], **AS_US})
    wait_state(c, job_id, "running")
    client.kill([job_id])
    wait_for(lambda: os.path.exists(os.path.join(_jobs_dir(c), str(job_id), "killreq")), 10,
             what="the kill request in the spool")
    t0 = time.monotonic()
    os.kill(reaper, signal.SIGCONT)
    done = client.wait([job_id], 20)[job_id]
    assert done["state"] == "killed" and time.monotonic() - t0 < 10, done


def test_a_job_claimed_by_an_earlier_node_life_s_reaper_that_then_dies(c, tmp_path):
    """Two jobs wait in the pipe of a stopped reaper when the node is killed; the restarted node sends both
    to its own reaper, which claims one and hangs opening its -o file (a FIFO nobody reads). The old reaper
    resumes and claims the other: the node learns that claimant from its pid file, and when it is killed
    ends that job's group and reports it failed; the first job runs once its FIFO has a reader."""
    client = c.client()
    client.wait([client.submit_spec({"cmd": ["true"], **AS_US})], 20)
    (old_reaper,) = _reapers(c)
    os.kill(old_reaper, signal.SIGSTOP)
    ids = []
    for k in (1, 2):
        os.mkfifo(tmp_path / f"out{k}")
        ids.append(client.submit_spec({"cmd": [f"echo {k}; sleep 60"], "shell": True,
                                       "stdout_file": str(tmp_path / f"out{k}"), **AS_US}))
        wait_state(c, ids[-1], "running")
    time.sleep(0.3)
    c.kill("n1", signal.SIGKILL)
    c.start_node("n1")
    claimant = {}
    def claimed():
        for k, i in zip((1, 2), ids):
            with contextlib.suppress(OSError, IndexError):
                claimant[k] = _reaper_of(c, i)
        return len(claimant) == 1 and claimant
    wait_for(claimed, 10, what="the new reaper's claim")
    os.kill(old_reaper, signal.SIGCONT)
    wait_for(lambda: len(claimed() or claimant) == 2, 10, what="the old reaper's claim")
    (k_old,) = [k for k, r in claimant.items() if r == old_reaper]
    (k_new,) = [k for k, r in claimant.items() if r != old_reaper]
    readers = [open(os.open(tmp_path / f"out{k}", os.O_RDONLY | os.O_NONBLOCK), "rb") for k in (k_old, k_new)]
    pid = job_pid(c, ids[k_old - 1])
    wait_for(lambda: readers[0].read() == f"{k_old}\n".encode(), 10, what="the old reaper's job to start")
    time.sleep(1.5)  # (the node reads that job's claimant meanwhile)
    os.kill(old_reaper, signal.SIGKILL)
    done = client.wait([ids[k_old - 1]], 30)[ids[k_old - 1]]
    assert (done["state"], done["exit"]) == ("failed", 255) and "vanished" in done["error"], done
    wait_for(lambda: not group_alive(pid), 10, what="the orphaned job's group to be killed")
    assert client.job(ids[k_new - 1])["state"] == "running"
    client.kill([ids[k_new - 1]])
    assert client.wait([ids[k_new - 1]], 30)[ids[k_new - 1]]["state"] == "killed"
    for r in readers:
        r.close()


def test_a_job_claimed_but_never_started_by_a_reaper_that_died(c, tmp_path):
    """The reaper claims a job and dies before starting it (here: stuck opening its -o file, a FIFO nobody
    reads, then killed): the node reports it failed, and the next jobs go to a new reaper."""
    fifo = tmp_path / "out"
    os.mkfifo(fifo)
    client = c.client()
    client.wait([client.submit_spec({"cmd": ["true"], **AS_US})], 20)
    (reaper,) = _reapers(c)
    job_id = client.submit_spec({"cmd": [f"touch {tmp_path}/ran"], "shell": True, "stdout_file": str(fifo),
                                 **AS_US})
    pid_file = os.path.join(_jobs_dir(c), str(job_id), "pid")
    wait_for(lambda: os.path.exists(pid_file), 10, what="the claim")
    time.sleep(0.3)
    with open(pid_file) as f:
        assert f.read().split()[0] == "-"  # claimed, not started
    os.kill(reaper, signal.SIGKILL)
    done = client.wait([job_id], 30)[job_id]
    assert (done["state"], done["exit"], done["error"]) == (
        "failed", 255, "job supervisor vanished while starting the job"), done  # (it may have started: not run again)
    assert not (tmp_path / "ran").exists()
    r = c.grun("sh", "-c", "echo next; exit 3")
    assert (r.returncode, r.stdout) == (3, b"next\n"), r.stderr
    assert reaper not in _reapers(c) and len(_reapers(c)) == 1


@Pyro5.api.expose
class RepeatingMaster:
    """Stands in for the master towards one real node daemon: offers one job at registration, then
    repeats a kill of it in every heartbeat reply, as the master does for each kill it holds until
    the job has ended (issue 10, bug 3)."""

    def __init__(self, job: dict, ready=None):
        self.job, self.beats, self.reports, self.ready = job, 0, [], ready  # (a file: kill once it exists)

    def register_node(self, info: dict) -> dict:
        self.uri = info["uri"]
        return {"start": [self.job], "kill": {}, "stale": []}

    def heartbeat(self, name: str, info: dict) -> dict:
        self.beats += 1
        kill = {str(self.job["id"]): int(signal.SIGTERM)} if self.ready is None or self.ready.exists() else {}
        return {"known": True, "stale": [], "kill": kill}

    def finished(self, name: str, reports: list) -> list:
        self.reports.extend(reports)
        return [r["id"] for r in reports]


def test_a_kill_the_master_repeats_in_every_heartbeat_is_applied_once(tmp_path):
    """The job traps SIGTERM and lives on: it must hear it once, however often the master repeats
    the kill, and the node's SIGKILL must still come a grace period after it started (not be put off). Under load
    the kill can find no pid yet and be sent by the reaper once it has one: its KILL then waited two graces (a CI
    run's failure; not reproducible at will). The kills begin once the job's trap is set: a TERM before it ended the
    job (a loaded full run)."""
    terms, ready = tmp_path / "terms", tmp_path / "ready"
    loop = f"trap 'echo TERM >> {terms}' TERM; : > {ready}; while :; do sleep 0.05; done"
    job = {"id": 7, "attempt": 1, "cmd": [loop],
           "shell": True, "cwd": "/", "env": {"PATH": os.environ["PATH"]}, "memory": 100, **AS_US}
    c = LocalCluster(nodes={"n1": {"cpus": 2, "memory": 2000, "heartbeat": 0.2}})
    master = RepeatingMaster(job, ready)
    daemon = registry.start_master_daemon("127.0.0.1", c.port, "127.0.0.1")
    try:
        daemon.register(master, registry.MASTER_NAME)
        registry.serve_in_thread(daemon, "test-master")
        c.start_node("n1", wait=False)
        wait_for(lambda: terms.exists(), 20, what="the job to get its SIGTERM")
        heard = master.beats
        t0 = time.monotonic()
        wait_for(lambda: master.beats >= heard + 10, 10, what="ten more heartbeats, each repeating the kill")
        with registry.proxy(master.uri) as node:  # the master's own kill call, after its repeat came first
            assert node.kill([7], int(signal.SIGTERM)) == {"7": True}
        time.sleep(0.5)
        assert terms.read_text() == "TERM\n"
        (report,) = wait_for(lambda: master.reports, 15, what="the job's end")
        assert report["id"] == 7 and report["signal"] == signal.SIGKILL, report
        assert time.monotonic() - t0 < 7.5, "the KILL escalation was put off (the grace is 5 s from the job's start)"
    finally:
        c.stop()
        daemon.shutdown()


def test_a_reload_applies_resources_labels_limits_and_outside_load(tmp_path):
    """SIGHUP after editing the node's config: resources and labels reach the master (placement),
    hard_factor and ulimit apply to jobs started from then on, count_outside_load to the heartbeat."""
    total_mb = psutil.virtual_memory().total // 2**20  # outside load shows only where the machine is all offered
    with LocalCluster(nodes={"n1": {"cpus": 2, "memory": total_mb, "heartbeat": 0.3}}) as c:
        def limits_of_a_job() -> bytes:
            r = c.grun("-m", "100", "sh", "-c", "ulimit -n; ulimit -d")
            assert r.returncode == 0, r.stderr
            return r.stdout

        def outside_memory() -> int:
            return next(n for n in c.client().nodes() if n["name"] == "n1").get("outside_memory", 0)

        before = limits_of_a_job()
        assert before.split()[1] == b"%d" % (150 << 10), before  # -m 100 x hard_factor 1.5, in KiB
        assert c.grun("-p", "gpu=1", "-p", "os=debian12", "true").returncode != 0
        assert outside_memory() == 0
        def reload(**keys) -> None:
            with open(c.configs["n1"]) as f:
                cfg = yaml.safe_load(f)
            with open(c.configs["n1"], "w") as f:
                yaml.safe_dump({**cfg, **keys}, f)
            c.procs["n1"].send_signal(signal.SIGHUP)

        reload(resources={"gpu": 1}, labels={"os": "debian12"}, hard_factor=2, ulimit={"nofile": 100})
        wait_for(lambda: c.grun("-p", "gpu=1", "-p", "os=debian12", "true").returncode == 0, 10,
                 what="a job placed by the reloaded resources and labels")
        assert limits_of_a_job() == b"100\n%d\n" % (200 << 10)
        # last: counting the machine's other load may leave no cpu to offer (other tests' clusters run here too)
        reload(count_outside_load=True)
        wait_for(lambda: outside_memory() > 0, 10, what="the outside load in the heartbeat")


def test_the_claimant_of_a_job_sent_in_this_node_life_is_not_read_at_every_check(tmp_path, monkeypatch):
    """A job sent to our reaper is claimed by it: the janitor and each heartbeat do not read its pid file
    (12 us a job a tick); an adopted job that an earlier reaper may claim is read until its claimant shows."""
    from grun import spool
    from grun.actors.node_jobs import LiveJob, NodeJobs
    sent, adopted = str(tmp_path / "1"), str(tmp_path / "2")
    for d in (sent, adopted):
        os.mkdir(d)
        open(os.path.join(d, spool.JOB), "w").close()  # (what a reaper locks as it claims)
    for fd in spool.claim(sent, "1.1"):
        os.close(fd)
    node, reads, read_pid = NodeJobs.__new__(NodeJobs), [], spool.read_pid
    monkeypatch.setattr(spool, "read_pid", lambda d: reads.append(d) or read_pid(d))
    node.live = {1: LiveJob(1, sent, {}, reaper="1.1"), 2: LiveJob(2, adopted, {}, reaper="2.2", unsure=True)}
    node._check_jobs()
    assert reads == [adopted] and (node.live[2].reaper, node.live[2].unsure) == ("2.2", True)
    for fd in spool.claim(adopted, "3.3"):  # the earlier reaper claims it
        os.close(fd)
    node._check_jobs()
    node._check_jobs()
    assert reads == [adopted, adopted] and (node.live[2].reaper, node.live[2].unsure) == ("3.3", False)


def test_acks_log_rewrites_itself_with_the_jobs_still_here_once_it_is_big(tmp_path, monkeypatch):
    from grun import spool
    monkeypatch.setattr(spool, "ACKS_COMPACT_BYTES", 60)
    here = {(9, 1): {"r", "f"}}
    acks = spool.Acks(str(tmp_path), lambda: here)
    acks.add("r", [(i, 1) for i in range(5)])  # 30 bytes: kept as appended
    assert open(acks.path).read() == "".join(f"r {i} 1\n" for i in range(5))
    acks.add("f", [(i, 1) for i in range(10)])
    assert open(acks.path).read() == "f 9 1\nr 9 1\n"


def test_the_stderr_tail_of_a_job_that_left_a_fifo_there_does_not_block(tmp_path):
    """limit_hit reads a job's -e file as root (the reaper, the node's orphan path under its reaper lock): a FIFO
    the job left at that path must give b"" at once, not block the sampler and every spawn."""
    import threading

    from grun.limits import _tail
    fifo, regular = str(tmp_path / "err"), tmp_path / "out"
    os.mkfifo(fifo)
    regular.write_bytes(b"x" * 10000 + b"Cannot allocate memory\n")
    got = []
    reader = threading.Thread(target=lambda: got.append(_tail(fifo)), daemon=True)
    reader.start()
    reader.join(5)
    if reader.is_alive():  # unblock the reader so the test process can end
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(5)
        pytest.fail("_tail blocked on a FIFO")
    assert got == [b""]
    assert _tail(str(regular)) == (b"x" * 10000 + b"Cannot allocate memory\n")[-8192:]
    assert _tail(str(tmp_path / "missing")) == b"" and _tail(None) == b""
    os.symlink(regular, tmp_path / "link")  # (the user's -e file, a link to a file of root's: not read)
    assert _tail(str(tmp_path / "link"), owner=65534) == b"" and _tail(str(tmp_path / "link"), owner=os.geteuid())


def test_what_a_job_leaves_running_in_its_session_is_killed_when_it_ends(c, tmp_path):
    """`sleep 100 &` in a job's script, even one that ignores TERM or moved to a process group of its own (`set -m`),
    ends with the job (as under Slurm and SGE): nothing of a finished job runs on outside the job table, where `grun -k`
    cannot reach it."""
    regroup = f"import os, time; os.setpgid(0, 0); open('{tmp_path}/c', 'w').write(str(os.getpid())); time.sleep(100)"
    script = (f"sleep 100 & echo $! > {tmp_path}/a; (trap '' TERM INT HUP; sleep 100) & echo $! > {tmp_path}/b; "
              f"{sys.executable} -c \"{regroup}\" & while [ ! -s {tmp_path}/c ]; do sleep 0.05; done; echo started")
    started = time.monotonic()
    r = c.grun("sh", "-c", script)
    assert (r.returncode, r.stdout) == (0, b"started\n"), r.stderr
    assert time.monotonic() - started < 20
    left = [int((tmp_path / name).read_text()) for name in "abc"]
    wait_for(lambda: all(_not_running(p) for p in left), 10, what="the job's background processes to be killed")


def test_a_job_waited_for_by_the_node_has_its_leftovers_killed_too(c, tmp_path):
    """The same when the job's reaper died and the node (its subreaper) waits for it."""
    gate = tmp_path / "gate"
    client = c.client()
    job_id = client.submit_spec({"cmd": [f"sleep 100 & echo $! > {tmp_path}/bg; while [ ! -e {gate} ]; do sleep 0.05; done"],
                                 "shell": True, **AS_US})
    pid = job_pid(c, job_id)
    os.kill(_reaper_of(c, job_id), signal.SIGKILL)
    wait_for(lambda: psutil.Process(pid).ppid() == c.procs["n1"].pid, 10, what="the job to be the node's child")
    bg = int(wait_for(lambda: (tmp_path / "bg").exists() and (tmp_path / "bg").read_text().strip(), 10))
    gate.touch()
    assert client.wait([job_id], 30)[job_id]["state"] == "done"
    wait_for(lambda: _not_running(bg), 10, what="the job's background sleep to be killed")


def test_the_reaper_s_own_peak_is_not_its_starter_s():
    """The reaper is started by a node daemon many times its size: getrusage's ru_maxrss counts the daemon's memory
    (the child's before exec), which marked real job peaks below it as bounds only. VmHWM is the reaper's own."""
    import subprocess
    import sys
    big = bytearray(300 << 20)
    big[::4096] = b"1" * len(big[::4096])  # (touched: resident)
    out = subprocess.run([sys.executable, "-c", "from grun.spawner import _own_peak_kb; print(_own_peak_kb())"],
                         capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    del big
    assert 0 < int(out.stdout) < 100 << 10, out


def test_a_maxrss_no_larger_than_the_reaper_s_own_is_marked_as_at_most_that(c):
    """Linux counts the reaper's memory (the child's before exec) in each job's ru_maxrss: `true` shows the
    reaper's size, so its usage says that this is only a bound; a job that used more has its own peak."""
    client = c.client()
    small = client.submit_spec({"cmd": ["true"], **AS_US})
    big = client.submit_spec({"cmd": ["python3", "-c", "x = bytearray(200 << 20); x[::4096] = b'1' * len(x[::4096])"],
                              **AS_US})
    done = client.wait([small, big], 60)
    assert done[small]["usage"]["maxrss_at_most"] is True, done[small]["usage"]
    assert "maxrss_at_most" not in done[big]["usage"] and done[big]["usage"]["maxrss_kb"] > 200 << 10, done[big]
    from grun.tables import fmt_rss, history_long, history_table
    assert fmt_rss(done[small]["usage"]).startswith("<=") and not fmt_rss(done[big]["usage"]).startswith("<=")
    assert "max rss <=" in history_long([done[small]]) and " <=" in history_table([done[small]])


@pytest.mark.parametrize("death", ["reaper", "node and reaper"])
def test_a_failed_make_job_of_a_dead_reaper_leaves_file_failed(c, death):
    """-M: the outputs of a failed make job become FILE.failed, also when its reaper died and the node ended
    it: waited for as the node's child (the reaper killed), or declared ended by a restarted node (the node
    killed too: the job is nobody's child then). As the job's user: nobody, when we are root."""
    where = tempfile.mkdtemp(prefix="grun-make-")  # (pytest's temp root is private to root)
    os.chmod(where, 0o777)
    gate, out = os.path.join(where, "gate"), os.path.join(where, "out")
    who = {"uid": 65534, "gid": 65534} if os.geteuid() == 0 else {"uid": os.getuid(), "gid": os.getgid()}
    try:
        client = c.client()
        job_id = client.submit_spec({"cmd": ["echo half > out; while [ ! -e gate ]; do sleep 0.05; done; exit 3"],
                                     "shell": True, "cwd": where, "make": True, "outputs": [out], **who})
        pid = job_pid(c, job_id)
        wait_for(lambda: os.path.exists(out), 10, what="the job's output")
        reaper = _reaper_of(c, job_id)
        if death == "node and reaper":
            c.kill("n1", signal.SIGKILL)
        os.kill(reaper, signal.SIGKILL)
        if death == "node and reaper":
            c.start_node("n1")
            want = ("failed", 255)
        else:
            wait_for(lambda: psutil.Process(pid).ppid() == c.procs["n1"].pid, 10, what="the job to be the node's child")
            open(gate, "w").close()
            want = ("failed", 3)
        done = client.wait([job_id], 30)[job_id]
        assert (done["state"], done["exit"]) == want, done
        assert not os.path.exists(out) and open(out + ".failed").read() == "half\n"
        assert os.stat(out + ".failed").st_uid == who["uid"]
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates a real user (CI runs as root)")
def test_a_job_s_user_can_plant_nothing_in_its_spool_for_the_root_reaper():
    """A job's spool directory is root's (0711), not its user's: they can put there no link (tmp -> a directory of root's,
    which the reaper chowned to them; stdout, stderr, status.json -> a file of root's, which it wrote into), no FIFO (at
    stdout or status.json it hung the reaper), no job.json of theirs (with "uid": 0 it ran as root), nor move its pid
    file. Its job gets a TMPDIR of its own, emptied at its end as its user, and writes nothing else there; a script
    it may run but not read does not show its #! line in why it cannot start."""
    import pwd
    import subprocess
    import sys

    from grun import spool
    name = f"grunt{os.getpid() % 100000}"
    account("useradd", "-M", "-s", "/usr/sbin/nologin", name)
    spool_dir = tempfile.mkdtemp(prefix="grun-spool-")
    try:
        os.chmod(spool_dir, 0o711)  # (its user must reach the job's TMPDIR, as in a spool)
        user = pwd.getpwnam(name)
        job = {"id": 7, "cmd": ["sh", "-c", 'touch "$TMPDIR/made"; echo "$(id -u)" > "$TMPDIR/../made"; exit 3'], "cwd": "/",
               "uid": user.pw_uid, "gid": user.pw_gid, "env": {"GRUN_COMPAT": "slurm", "PATH": os.defpath}}
        job_dir = os.path.join(spool_dir, "7")
        spool.create(job_dir, job, json.dumps(job))
        assert (os.stat(job_dir).st_uid, os.stat(job_dir).st_mode & 0o777) == (0, 0o711)
        plant = ('cd "$1" && for f in tmp stdout stderr status.json pid; do ln -s /etc/passwd "$f" && echo "linked $f"; '
                 'mkfifo "$f" && echo "fifo $f"; done 2>/dev/null; for f in job.json stdout.pipe; do mv "$f" x && echo '
                 '"moved $f"; rm -f "$f" && echo "removed $f"; done 2>/dev/null; { echo > job.json; } 2>/dev/null && echo wrote; true')
        r = subprocess.run(["sh", "-c", plant, "sh", job_dir], user=user.pw_uid, group=user.pw_gid, extra_groups=[],
                           capture_output=True, text=True, timeout=30)
        assert (r.returncode, r.stdout) == (0, ""), r
        with open(os.open(os.path.join(spool_dir, "s"), os.O_WRONLY | os.O_CREAT, 0o711), "w") as f:
            f.write("#!/nonexistent/secret-word\n")
        other = dict(job, id=8, cmd=[os.path.join(spool_dir, "s")], env={"PATH": os.defpath})
        spool.create(os.path.join(spool_dir, "8"), other, json.dumps(other))
        reaper = subprocess.Popen([sys.executable, "-m", "grun.spawner"], stdin=subprocess.PIPE)
        reaper.communicate(f"{job_dir}\t\n{spool_dir}/8\t\n".encode(), timeout=60)  # (ends once the ends are written)
        assert "secret" not in open(f"{spool_dir}/8/stderr").read() and spool.read(f"{spool_dir}/8", spool.STATUS)
        assert spool.read(job_dir, spool.STATUS)["exit_code"] == 3 and not os.path.exists(f"{job_dir}/made")
        assert os.stat(f"{job_dir}/tmp").st_uid == user.pw_uid
        wait_for(lambda: not os.listdir(f"{job_dir}/tmp"), timeout=10, what="its TMPDIR emptied")
        ro = 'mkdir -p "$1/tmp/ro/d" && touch "$1/tmp/ro/d/f" && chmod -R a-w "$1/tmp/ro" && chmod 0 "$1/tmp/ro/d"'
        subprocess.run(["sh", "-c", ro, "sh", job_dir], user=user.pw_uid, group=user.pw_gid, extra_groups=[], check=True)
        os.makedirs(f"{job_dir}/tmp/root's")  # the node removes what its user owns as its user: what they cannot, stays
        open(f"{job_dir}/tmp/root's/f", "w").close()
        spool.remove(job_dir)
        spool.sweep(spool_dir)
        [gone] = [f"{spool_dir}/{n}" for n in os.listdir(spool_dir) if n.startswith(".gone-7-")]
        assert os.listdir(gone) == ["tmp"] and os.listdir(f"{gone}/tmp") == ["root's"]
        shutil.rmtree(f"{gone}/tmp/root's")
        spool.sweep(spool_dir)
        assert not os.path.exists(gone)
        theirs = f"{spool_dir}/theirs"  # a node run by the user themselves (a personal cluster): a read-only tree too
        os.mkdir(theirs)
        os.chown(theirs, user.pw_uid, user.pw_gid)
        subprocess.run(["sh", "-c", ro, "sh", theirs + "/7"], user=user.pw_uid,
                       group=user.pw_gid, extra_groups=[], check=True)
        if (child := os.fork()) == 0:  # (our python is root's: the user may not run it)
            try:
                os.setgroups([])
                os.setgid(user.pw_gid)
                os.setuid(user.pw_uid)
                spool.remove(f"{theirs}/7")
                spool.sweep(theirs)
            finally:
                os._exit(0)
        os.waitpid(child, 0)
        assert os.listdir(theirs) == []
    finally:
        account("userdel", name, check=False)
        shutil.rmtree(spool_dir)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates a real user (CI runs as root)")
def test_a_running_job_writes_its_tmpdir_and_work_dir_and_nothing_else_of_its_spool():
    """On a node run as root, a job of a real user (a Slurm job: a TMPDIR; on a staging node: a work dir) writes both,
    but renames, replaces, links or makes nothing else in its job directory, which goes whole once its output was
    fetched; and a `-t 2` job that moves its pid file aside for one dated 2100 (its start, for -t) is killed at 2 s."""
    import pwd
    name = f"grunt{os.getpid() % 100000}"
    account("useradd", "-M", "-s", "/usr/sbin/nologin", name)
    c = LocalCluster(nodes={"n1": {"cpus": 2, "memory": 2000, "stage": "always", **FAST}})
    try:
        c.start()
        os.chmod(c.root, 0o711)  # (a spool its jobs can reach, as /var/spool/grun)
        user, client = pwd.getpwnam(name), c.client()
        who = {"uid": user.pw_uid, "gid": user.pw_gid, "user": name, "cwd": "/",
               "env": {"GRUN_COMPAT": "slurm", "PATH": os.defpath}}
        tries = ('d=$(dirname "$TMPDIR"); touch "$TMPDIR/t" && echo tmpdir; touch made && echo work; '
                 'for f in pid job.json stdout stderr stdin limit.json status.json killreq; do ln -s /etc/passwd "$d/$f.l" '
                 '&& echo "linked $f"; mv -f "$d/$f" "$d/$f.x" && echo "moved $f"; { echo > "$d/$f"; } && echo "wrote $f"; '
                 'done 2>/dev/null; ls "$d" > /dev/null 2>&1 && echo listed; true')
        job = client.submit_spec({"cmd": [tries], "shell": True, **who})
        out = []
        assert client.follow(job, stdout_fd=out.append) == 0
        assert b"".join(out).decode().split() == ["tmpdir", "work"]
        # (fetched: the node forgets it, and its sweeper removes its user's tmp/ and work/ too)
        wait_for(lambda: not os.listdir(_jobs_dir(c)), 25, what="its spool removed")
        swap = 'd=$(dirname "$TMPDIR"); mv "$d/pid" "$d/old"; touch -d 2100-01-01 "$d/pid"; sleep 60'
        swap = client.submit_spec({"cmd": [swap], "shell": True, "time": 2, **who})
        job_dir = os.path.join(_jobs_dir(c), str(swap))
        wait_for(lambda: os.path.isdir(f"{job_dir}/work"), 10, what="its work dir")
        assert [os.stat(f"{job_dir}/{p}").st_uid for p in (".", "work")] == [0, user.pw_uid]
        done = client.wait([swap], 30)[swap]
        assert done["state"] == "timeout" and done["usage"]["wall"] < 10, done
    finally:
        c.stop()
        account("userdel", name, check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates a real user (CI runs as root)")
def test_a_user_who_stops_their_rm_holds_up_no_remove_and_what_they_kept_goes_later():
    """spool.remove (the node's janitor, once per ended job, and its start, under the node lock) waited 10 s for each
    `rm` of its user's tmp/ and work/, which the user may SIGSTOP: 20 s per job, and what was left stayed for good.
    It only renames now; sweep (the node's sweeper) gives their rm 10 s, and takes the rest at a later round."""
    import pwd
    import threading

    from grun import spool
    name = f"grunt{os.getpid() % 100000}"
    account("useradd", "-M", "-s", "/usr/sbin/nologin", name)
    spool_dir = tempfile.mkdtemp(prefix="grun-spool-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)  # (fast)
    stop = threading.Event()
    try:
        os.chmod(spool_dir, 0o711)  # (as a node's: its jobs reach their TMPDIR)
        user, job_dir = pwd.getpwnam(name), os.path.join(spool_dir, "7")
        spool.create(job_dir, {"id": 7}, "{}")
        for sub in ("tmp", "work"):  # (files enough that their rm takes a while: it is stopped on its way)
            os.makedirs(f"{job_dir}/{sub}/d")
            for i in range(20000):
                os.close(os.open(f"{job_dir}/{sub}/d/{i}", os.O_CREAT | os.O_WRONLY))
            for path in (sub, f"{sub}/d"):
                os.chown(f"{job_dir}/{path}", user.pw_uid, user.pw_gid)

        def stopper():  # the user's: SIGSTOP their every rm
            while not stop.is_set():
                for proc in psutil.process_iter(["name", "uids"]):
                    if proc.info["name"] == "rm" and proc.info["uids"] and proc.info["uids"].real == user.pw_uid:
                        with contextlib.suppress(psutil.Error):
                            proc.send_signal(signal.SIGSTOP)
        (thread := threading.Thread(target=stopper, daemon=True)).start()
        started = time.monotonic()
        spool.remove(job_dir)
        assert time.monotonic() - started < 1 and not os.path.exists(job_dir)
        [gone] = [f"{spool_dir}/{n}" for n in os.listdir(spool_dir)]
        assert os.path.basename(gone).startswith(".gone-7-")
        spool.sweep(spool_dir)  # (their rm stopped: killed at 10 s, what it left stays for the next round)
        assert sorted(os.listdir(gone)) == ["tmp", "work"]
        stop.set()
        thread.join()
        spool.sweep(spool_dir)
        assert os.listdir(spool_dir) == []
    finally:
        stop.set()
        account("userdel", name, check=False)
        shutil.rmtree(spool_dir)


def test_a_tmpdir_left_in_the_job_s_directory_does_not_stop_its_next_run(tmp_path):
    """A Slurm or SGE job's TMPDIR already there (left by an earlier run whose user kept it from going) failed the
    next run at its mkdir (File exists)."""
    import subprocess
    import sys

    from grun import spool
    job = {"id": 7, "cmd": ["sh", "-c", 'test -d "$TMPDIR"'], "cwd": "/",
           "env": {"GRUN_COMPAT": "slurm", "PATH": os.defpath}}
    job_dir = str(tmp_path / "7")
    spool.create(job_dir, job, json.dumps(job))
    os.mkdir(f"{job_dir}/tmp")
    reaper = subprocess.Popen([sys.executable, "-m", "grun.spawner"], stdin=subprocess.PIPE)
    reaper.communicate(f"{job_dir}\t\n".encode(), timeout=60)  # (ends once the end is written)
    assert spool.read(job_dir, spool.STATUS)["exit_code"] == 0, open(f"{job_dir}/stderr").read()


def test_a_node_started_under_umask_077_leaves_its_jobs_their_tmpdir():
    """The daemon's umask made the jobs dir and each job's 0700 (UMask=077): its jobs reached neither their TMPDIR
    nor work/. They are 0755 and 0711 whatever it is, the node's own spool 0755, the daemon's searchable by all."""
    old = os.umask(0o077)
    try:
        c = LocalCluster(nodes={"n1": {"cpus": 1, "memory": 1000, **FAST}})
        c.start()
    finally:
        os.umask(old)
    try:
        client = c.client()
        job = client.submit_spec({"cmd": ['cd "${TMPDIR%/tmp}" && stat -c %a . .. ../.. ../../..'], "shell": True, **AS_US,
                                  "env": {"GRUN_COMPAT": "slurm", "PATH": os.environ["PATH"]}})
        out = []
        assert client.follow(job, stdout_fd=out.append) == 0
        assert b"".join(out).split() == [b"711", b"755", b"755", b"711"]
    finally:
        c.stop()


def test_two_threads_writing_one_file_atomically_do_not_share_its_temp(tmp_path):
    """write_atomic's temp was `<name>.tmp<pid>`, opened O_TRUNC: two threads (spool.write of a KILL from two RPC
    threads) truncated and renamed each other's (a torn file, or a rename of a temp gone)."""
    import threading

    from grun.files import write_atomic
    path, errors = str(tmp_path / "killreq"), []

    def writer(byte: bytes):
        try:
            for _ in range(300):
                write_atomic(path, byte * (1 << 18), durable=False)
                with open(path, "rb") as f:
                    data = f.read()
                assert len(data) == 1 << 18 and len(set(data)) == 1
        except Exception as exc:
            errors.append(exc)
    threads = [threading.Thread(target=writer, args=(b,)) for b in (b"a", b"b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and os.listdir(tmp_path) == ["killreq"]


def test_a_node_whose_spool_is_too_deep_for_a_socket_s_name_hears_its_reaper(tmp_path):
    """The reapers ping a socket file in the node's spool: past sun_path's 108 bytes, the node and its reapers name it
    through a descriptor of its directory (grun.spool.socket_addr). A slow heartbeat: no other way to an end in 5 s."""
    c = LocalCluster(nodes={"n1": {"cpus": 1, "memory": 1000, "heartbeat": 30, "output_keep": 3600}},
                     root=str(tmp_path / ("d" * 100)))
    try:
        c.start()
        job_id = c.client().submit_spec({"cmd": ["true"], **AS_US})
        assert c.client().wait([job_id], 5)[job_id]["exit"] == 0
    finally:
        c.stop()
