"""Staging (issue 14, grun.stage): a node that does not share the submitter's files gets a job's inputs over
the side channel, runs the job in a work dir of its own, and sends the outputs back. Real daemons: node `far`
stages every job (`stage: always`), node `near` only jobs whose cwd it lacks or that lie under its
`fetch_path` (`stage: auto`); `--hosts` picks one. The faults of issue 14's "Bad input and faults" each
have a test: a client killed mid-transfer, a spool too small (a real tmpfs, as root), a disk that fills as
a file is written, an output never written, a symlink out of the tree, a name with spaces or non-UTF-8 bytes."""

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import psutil
import pytest
from cluster import LocalCluster
from util import wait_for

from grun import stage
from grun.client import job_spec


def _tmpfs(path: str, size: str) -> bool:
    os.makedirs(path, exist_ok=True)
    return os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=755", "tmpfs", path],
                                                capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def cluster():
    root = tempfile.mkdtemp(prefix="grun-test-stage-")
    tiny = os.path.join(root, "tiny-spool")
    nodes = {"far": {"cpus": 2, "memory": 2000, "stage": "always", "output_keep": 2},  # (its janitor: every 0.5 s)
             "near": {"cpus": 2, "memory": 2000, "stage": "auto", "fetch_path": [os.path.join(root, "fetched")]}}
    mounted = _tmpfs(tiny, "100m")
    if mounted:
        nodes["tiny"] = {"cpus": 1, "memory": 1000, "stage": "always", "spool": tiny}
    c = LocalCluster(nodes, root=root)
    c.tiny = mounted
    try:
        with c:
            yield c
    finally:
        if mounted:
            subprocess.run(["umount", "-l", tiny], check=False)
        shutil.rmtree(root, ignore_errors=True)


def grun(cluster, cwd, *args, **kw):
    return cluster.grun(*args, cwd=str(cwd), **kw)


def work_dirs(cluster, node="far"):
    jobs = os.path.join(cluster.root, node, "node", "jobs")
    return [os.path.join(jobs, j, "work") for j in os.listdir(jobs) if os.path.isdir(os.path.join(jobs, j, "work"))]


def test_make_job_input_reaches_the_node_and_its_output_comes_back_byte_exact(cluster, tmp_path):
    data = os.urandom(3 << 20) + b"\n"
    (tmp_path / "in.bin").write_bytes(data)
    r = grun(cluster, tmp_path, "--hosts", "far", "-M", "pwd; cat %i:in.bin > out.bin")
    assert r.returncode == 0, r.stderr
    # it ran in the far node's work dir: the relative in.bin it read was the staged copy, not ours
    work = r.stdout.decode().strip()
    assert work.startswith(os.path.join(cluster.root, "far")) and work.endswith("/work"), work
    assert (tmp_path / "out.bin").read_bytes() == data
    assert sorted(os.listdir(tmp_path)) == ["in.bin", "out.bin"]  # no temporary file left
    wait_for(lambda: not os.path.exists(work), 5, what="the node to remove the work dir once the output was fetched")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a job as another user")
def test_the_job_reads_its_own_copy_owned_by_its_user_not_the_submitters_file(cluster, tmp_path):
    """A job as nobody, from a directory only root may read (pytest's tmp_path): it reads the copy staged into
    its work dir, which is its own, and cannot read the file it was staged from."""
    (tmp_path / "in.txt").write_text("secret\n")
    os.chmod(tmp_path, 0o700)
    spec = job_spec(f"id -u; stat -c %u in.txt; cat in.txt > out.txt; cat {tmp_path}/in.txt 2>/dev/null || echo unreadable",
                    cwd=str(tmp_path), hosts="far", stage_in=[str(tmp_path / "in.txt")], stage_out=[str(tmp_path / "out.txt")])
    client, out = cluster.client(), []
    job = client.submit_spec(dict(spec, uid=65534, gid=65534))
    assert client.follow(job, stdout_fd=out.append) == 0
    assert b"".join(out).split() == [b"65534", b"65534", b"unreadable"]
    assert (tmp_path / "out.txt").read_text() == "secret\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a job as another user")
def test_the_node_sends_back_only_the_job_users_own_files(cluster, tmp_path):
    """An output that is a hard link to another's file (here root's, made while the job runs) is not sent back
    by the node, which reads outputs as root."""
    (tmp_path / "secret").write_text("root's\n")
    os.chmod(tmp_path / "secret", 0o600)
    spec = job_spec("echo mine > out.txt; sleep 2", cwd=str(tmp_path), hosts="far", stage_out=[str(tmp_path / "out.txt")])
    client, notes = cluster.client(), []
    job = client.submit_spec(dict(spec, uid=65534, gid=65534))
    out = os.path.join(cluster.root, "far", "node", "jobs", str(job), "work", "out.txt")
    wait_for(lambda: os.path.exists(out), 20, what="the job's output")
    os.unlink(out)
    os.link(tmp_path / "secret", out)
    assert client.follow(job, on_note=notes.append) == 0
    assert not (tmp_path / "out.txt").exists() and "out.txt is not a file of the job user's" in " ".join(notes), notes
    # a FIFO the job leaves for an output: not opened blocking (the node's open hung, the node's lock held: a review)
    fifo = client.submit_spec(job_spec("mkfifo out.txt", cwd=str(tmp_path), hosts="far",
                                       stage_out=[str(tmp_path / "out.txt")]))
    notes.clear()
    assert client.follow(fifo, on_note=notes.append) == 0 and "out.txt is not a file" in " ".join(notes), notes
    assert client.follow(client.submit_spec(job_spec("true", hosts="far"))) == 0  # (the node still serves)


def test_auto_stages_a_job_whose_cwd_the_node_lacks_or_under_fetch_path(cluster, tmp_path):
    r = grun(cluster, tmp_path, "--hosts", "near", "pwd")
    assert r.returncode == 0 and r.stdout.decode().strip() == str(tmp_path), r.stderr  # shared: in place
    # a job with files to stage, whose cwd the node lacks, runs in a work dir (the one without fails: exit 2)
    client, out, notes = cluster.client(), [], []
    gone = "/nonexistent/grun-stage"
    job = client.submit_spec(job_spec("pwd; echo x > o", cwd=gone, hosts="near", stage_out=[gone + "/o"]))
    assert client.follow(job, stdout_fd=out.append, on_note=notes.append) == 0
    assert b"/near/node/jobs/" in b"".join(out)  # not "cwd ... does not exist on node near"
    assert "outputs not all received" in notes[0]  # (this submitter lacks it too)
    job = client.submit_spec(job_spec("pwd", cwd=gone, hosts="near"))
    assert client.follow(job, stderr_fd=out.append) == 2 and out[-1] == f"grun: cwd {gone} does not exist on node near\n".encode()
    fetched = os.path.join(cluster.root, "fetched", "d")
    os.makedirs(fetched)
    with open(os.path.join(fetched, "in.txt"), "w") as f:
        f.write("from far away\n")
    r = grun(cluster, fetched, "--hosts", "near", "--stage-in", "in.txt", "--stage-out", "o.txt", "pwd; cat in.txt > o.txt")
    assert r.returncode == 0 and "/work" in r.stdout.decode(), r.stderr
    assert open(os.path.join(fetched, "o.txt")).read() == "from far away\n"


def test_a_job_with_files_whose_node_shares_its_cwd_makes_no_staging_call(cluster, tmp_path, monkeypatch):
    """-M files on a node that shares the cwd run in place: the following client asks its node for a staging
    ticket neither before the job (attach says the job does not wait for inputs) nor after (nor has outputs)."""
    from grun import wire
    (tmp_path / "in.txt").write_text("here\n")
    calls, call = [], wire.WireProxy._call
    monkeypatch.setattr(wire.WireProxy, "_call", lambda self, method, *a, **k: calls.append(method) or call(
        self, method, *a, **k))
    client, out = cluster.client(), []
    job = client.submit_spec(job_spec("pwd; cat in.txt > out.txt", cwd=str(tmp_path), hosts="near",
                                      inputs=[str(tmp_path / "in.txt")], outputs=[str(tmp_path / "out.txt")]))
    assert client.follow(job, stdout_fd=out.append) == 0
    assert b"".join(out) == f"{tmp_path}\n".encode() and (tmp_path / "out.txt").read_text() == "here\n"
    assert "attach" in calls and "stage" not in calls, calls


def test_auto_stages_when_the_node_does_not_mount_the_cwds_filesystem(tmp_path):
    """(grun.mounts.shared, the NFS part's answer) even where the cwd's path exists, as here."""
    fs = {"type": "nfs4", "source": "server:/export", "root": str(tmp_path), "sub": "/"}
    job = {"cwd": str(tmp_path), "cwd_fs": fs, "inputs": [str(tmp_path / "in")]}
    assert stage.wanted(job, "auto", [], []) and not stage.wanted(job, "auto", [], [fs])
    assert not stage.wanted(dict(job, inputs=[]), "auto", [], [])  # nothing to stage: in place (or cwd not found)
    assert not stage.wanted(job, "never", [], []) and stage.wanted(dict(job, stage="always"), "never", [], [fs])


def test_failed_job_outputs_come_back_and_those_it_cannot_send_are_in_its_record(cluster, tmp_path):
    (tmp_path / "a b").mkdir()
    (tmp_path / "a b" / "in x.txt").write_text("hello\n")
    r = grun(cluster, tmp_path, "-v", "--hosts", "far", "--stage-out", "link", "--stage-out", "never.txt", "--stage-out",
             "log.txt", "-M", "cat < 'a b/in x.txt' > 'a b/out x.txt'; ln -s /etc/passwd link; echo hi > log.txt; exit 3")
    assert r.returncode == 3
    lines = r.stderr.decode().splitlines()
    assert any("link is a symlink to /etc/passwd, outside the staged tree: not sent back" in l for l in lines), lines
    assert any("never.txt was never written by the job" in l for l in lines), lines
    assert (tmp_path / "a b" / "out x.txt.failed").read_text() == "hello\n"  # a failed make output, renamed
    assert (tmp_path / "log.txt.failed").read_text() == "hi\n"  # (`> log.txt` makes it a make output too)
    assert not (tmp_path / "link").exists() and not (tmp_path / "a b" / "out x.txt").exists()
    job_id = int(lines[0].split()[2])  # `grun: job N queued`
    error = cluster.client().wait([job_id], 10)[job_id]["error"]
    assert "staging:" in error and "never.txt was never written" in error and "outside the staged tree" in error


def test_the_jobs_output_files_come_back_and_one_it_removed_is_named(cluster, tmp_path):
    """-o/--err files (relative to its cwd: the work dir) come back as --stage-out's; an appending one is sent
    to the node first, if the submitter has it, so it gains this run's output."""
    (tmp_path / "in.txt").write_text("in\n")
    (tmp_path / "had.log").write_text("before\n")
    r = grun(cluster, tmp_path, "--hosts", "far", "--stage-in", "in.txt", "--stage-out", "out.txt", "-o", "log.txt",
             "--err", "err.txt", "cat in.txt > out.txt; pwd; echo oops >&2")
    assert r.returncode == 0 and r.stdout == b"", r.stderr
    assert (tmp_path / "out.txt").read_text() == "in\n" and (tmp_path / "err.txt").read_text() == "oops\n"
    assert (tmp_path / "log.txt").read_text().strip().endswith("/work")  # (staged: it ran in the work dir)
    for name, before in (("had.log", "before\n"), ("new.log", "")):
        r = grun(cluster, tmp_path, "--hosts", "far", "--out-err-append", name, "echo run; echo e >&2")
        assert r.returncode == 0 and (tmp_path / name).read_text() == before + "run\ne\n", r.stderr
    (tmp_path / "dir.log").mkdir()  # one it has but cannot send: never replaced by this run's part
    r = grun(cluster, tmp_path, "--hosts", "far", "--out-append", "dir.log", "true")
    assert r.returncode == 255 and b"staging: dir.log is not a regular file" in r.stderr, r.stderr
    r = grun(cluster, tmp_path, "-v", "--hosts", "far", "-o", "gone.log", "rm gone.log")
    assert r.returncode == 0 and "gone.log was never written by the job" in r.stderr.decode(), r.stderr
    job_id = int(r.stderr.split()[2])  # `grun: job N queued`
    assert "staging: gone.log was never written" in cluster.client().wait([job_id], 10)[job_id]["error"]


def test_jobs_no_grun_follows_write_their_output_files_in_place(cluster, tmp_path):
    """An array's tasks and an sbatch job: nobody would fetch them from a work dir, so they run in their cwd."""
    r = grun(cluster, tmp_path, "--hosts", "far", "--array", "1-3", "-o", "out.%a", "echo task $GRUN_TASK_ID")
    assert r.returncode == 0, r.stderr
    assert [(tmp_path / f"out.{t}").read_text() for t in (1, 2, 3)] == [f"task {t}\n" for t in (1, 2, 3)]
    bin_dir = tmp_path / "bin"
    install = "import sys; from grun.integrate import install_shims; sys.exit(install_shims(sys.argv[1:]))"
    subprocess.run([sys.executable, "-c", install, "install", str(bin_dir)], check=True, capture_output=True,
                   env=dict(cluster.env, PATH=f"{bin_dir}:/nonexistent"))  # (not shadowed by a real Slurm's)
    r = subprocess.run([str(bin_dir / "sbatch"), "--parsable", "-W", "-w", "far", "-o", "s-%j.out", "--wrap", "pwd"],
                       env=cluster.env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / f"s-{r.stdout.strip()}.out").read_text() == f"{tmp_path}\n"


def test_outputs_come_back_to_a_reattached_client_and_through_a_symlinked_dir(cluster, tmp_path):
    """The client that ran the job was killed: `grun --attach` brings the outputs back (into a directory the
    submitter reaches through a symlink: the client, as its user, follows it)."""
    (tmp_path / "real").mkdir()
    (tmp_path / "out").symlink_to(tmp_path / "real")
    proc = cluster.popen("-v", "--hosts", "far", "--stage-out", "out/o.txt", "sleep 1; mkdir out; echo done > out/o.txt",
                         cwd=str(tmp_path))
    job_id = int(proc.stderr.readline().split()[2])  # `grun: job N queued`
    proc.kill()
    proc.communicate()
    r = grun(cluster, tmp_path, "--attach", str(job_id))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "real" / "o.txt").read_text() == "done\n"


def test_a_client_killed_while_outputs_come_back_leaves_them_whole_for_attach(cluster):
    cwd = os.path.join(cluster.root, "fetched", "pull")  # staged on near (fetch_path), which keeps outputs a day
    os.makedirs(cwd)
    proc = cluster.popen("-v", "--hosts", "near", "--stage-out", "big.out", "truncate -s 1G big.out", cwd=cwd)
    job_id = int(proc.stderr.readline().split()[2])  # `grun: job N queued`
    wait_for(lambda: any(n.startswith(stage.PART) and os.path.getsize(os.path.join(cwd, n)) > 10 << 20
                         for n in os.listdir(cwd)), 30, 0.005, "an output half received")
    proc.kill()
    proc.communicate()
    assert "big.out" not in os.listdir(cwd)  # nothing under the final name
    with open(live := os.path.join(cwd, stage.PART + "live"), "w") as f:  # another pull's, under way: locked
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write("x")
        f.flush()
        r = cluster.grun("--attach", str(job_id), cwd=cwd)
    assert r.returncode == 0 and os.path.getsize(os.path.join(cwd, "big.out")) == 1 << 30, r.stderr
    assert sorted(os.listdir(cwd)) == [stage.PART + "live", "big.out"]  # (QA: the killed pull's part stayed for ever)
    os.unlink(live)


def test_a_pull_sweeps_each_directory_once_before_its_first_part(tmp_path):
    """(Review) On NFS, flock is a POSIX lock, one a process: the sweep ran once our part was made and locked, opened it
    and its close let our lock go (another grun's sweep could remove it mid-file). A pull sweeps each directory once,
    before its first part is made: a part left there later is the next pull's to sweep."""
    (tmp_path / (stage.PART + "old")).write_text("x")  # a killed pull's: unlocked, not empty

    def send(sock):
        for name in (b"one", b"two"):
            if name == b"two":
                wait_for(lambda: (tmp_path / "one").exists(), 10, 0.01, "the first file")
                (tmp_path / (stage.PART + "later")).write_text("x")
            stage._head(sock, stage.FILE, name, 3, 0o644)
            sock.sendall(name)
        stage._end(sock)

    a, b = socket.socketpair()
    with a, b:
        sender = threading.Thread(target=send, args=(a,))
        sender.start()
        assert stage._receive(b, str(tmp_path), {"one", "two"}, node=False) == []
        sender.join()
    assert sorted(os.listdir(tmp_path)) == [stage.PART + "later", "one", "two"]


def test_client_killed_or_job_killed_mid_transfer_ends_it_and_leaves_no_partial_file(cluster, tmp_path):
    with open(tmp_path / "big.bin", "wb") as f:
        f.truncate(8 << 30)  # sparse: cheap to read, slow enough to write on the node
    for how in ("client", "job"):
        proc = cluster.popen("--hosts", "far", "-v", "-M", "wc -c %i:big.bin", cwd=str(tmp_path))
        job_id = int(proc.stderr.readline().split()[2])  # `grun: job N queued`
        work = os.path.join(cluster.root, "far", "node", "jobs", str(job_id), "work")
        wait_for(lambda work=work: any(n.startswith(stage.PART) and os.path.getsize(os.path.join(work, n)) > 10 << 20
                             for n in (os.listdir(work) if os.path.isdir(work) else ())), 30, 0.005, "a file half sent")
        if how == "client":
            proc.kill()
        else:
            proc.send_signal(signal.SIGSTOP)
            assert grun(cluster, tmp_path, "-k", str(job_id)).returncode == 0
        final = cluster.client().wait([job_id], 30)[job_id]
        assert final["state"] in ("failed", "killed") and final["error"].startswith("staging: "), final
        assert ("went away while big.bin was sent" if how == "client" else "killed (signal 15)") in final["error"]
        assert wait_for(lambda work=work: os.listdir(work) == [], 5, what="the half-written file to go")  # (client still stopped)
        proc.kill()
        proc.communicate()


@pytest.mark.skipif(os.geteuid() != 0, reason="a small tmpfs needs root to mount")
def test_a_spool_too_small_refuses_the_file_and_a_full_disk_leaves_no_partial_file(cluster, tmp_path):
    if not cluster.tiny:
        pytest.skip("cannot mount a tmpfs here")
    with open(tmp_path / "in.bin", "wb") as f:
        f.truncate(50 << 20)
    r = grun(cluster, tmp_path, "--hosts", "tiny", "-M", "wc -c %i:in.bin")
    assert r.returncode == 255 and b"in.bin (50 MB) does not fit: the node's spool has" in r.stderr, r.stderr
    # a disk that fills while a file is written (past the check): ENOSPC, and the part file goes
    full = tmp_path / "full"
    assert _tmpfs(str(full), "1m")
    try:
        a, b = socket.socketpair()
        with a, b:
            sender = subprocess.Popen([sys.executable, "-c", "import os,sys; os.write(1, b'x' * (2 << 20))"],
                                      stdout=a.fileno())
            with pytest.raises(stage.Refused, match="cannot store x.bin: No space left on device"):
                stage._store(b, str(full), "x.bin", 2 << 20, 0o644)
            sender.kill()
        assert os.listdir(full) == []
    finally:
        subprocess.run(["umount", "-l", str(full)], check=False)


def test_names_travel_as_bytes_and_bad_input_is_one_line(cluster, tmp_path):
    name = b"caf\xe9 \xff.txt"  # not UTF-8: the wire carries it; a job record cannot
    with open(os.path.join(os.fsencode(tmp_path), name), "wb") as f:
        f.write(b"bytes\n")
    rel = os.fsdecode(name)
    a, b = socket.socketpair()
    with a, b:
        (tmp_path / "dst").mkdir()
        stage._send(a, os.open(os.path.join(tmp_path, rel), os.O_RDONLY), rel, None)
        stage._head(a, stage.END, b"", 0)
        assert stage._receive(b, str(tmp_path / "dst"), {rel}, node=False) == []
    assert open(os.path.join(os.fsencode(tmp_path / "dst"), name), "rb").read() == b"bytes\n"
    for args, needle in [(["--stage-in", os.fsencode(rel), "cat"], b"caf\\xe9 \\xff.txt': not UTF-8"),
                         (["--noio", "--stage", "always", "true"], b"need grun to follow the job"),
                         (["--stage-in", "/etc/hostname", "true"], b"only files under the working directory"),
                         (["--stage", "sometimes", "true"], b"stage must be auto, always or never")]:
        r = subprocess.run([sys.executable, "-m", "grun.cli", *args], cwd=tmp_path, env=cluster.env,
                           capture_output=True, timeout=60)
        assert r.returncode != 0 and r.stderr.count(b"\n") == 1 and needle in r.stderr, (args, r.stderr)


def test_with_nowait_a_process_of_the_submitters_own_serves_the_files(cluster, tmp_path):
    """`grun --nowait` with staging asked for: a detached process of the submitter's serves the job's files
    (pushes the inputs once it reached its node, pulls the outputs once it ended) and then exits."""
    data = os.urandom(1 << 20)
    (tmp_path / "in.bin").write_bytes(data)
    env = dict(cluster.env, XDG_STATE_HOME=str(tmp_path / "state"))
    # (far forgets an unread output 2 s after its end was told, which waited for the stager: it looks every 5 s)
    r = grun(cluster, tmp_path, "--nowait", "--hosts", "far", "--stage-in", "in.bin", "--stage-out", "out.bin",
             "sleep 1; cat in.bin > out.bin; pwd", env=env)
    assert r.returncode == 0 and r.stdout.startswith(b"Job_ID: "), r.stderr
    job_id = int(r.stdout.split()[-1])
    assert not (tmp_path / "out.bin").exists()  # (the job sleeps: its grun has gone, the stager waits)
    assert cluster.client().wait([job_id], 60)[job_id]["exit"] == 0
    wait_for(lambda: (tmp_path / "out.bin").exists(), 30, what="the stager to bring the output back")
    assert (tmp_path / "out.bin").read_bytes() == data
    out = grun(cluster, tmp_path, "--attach", str(job_id), env=env)  # its output stayed on the node
    assert out.stdout.decode().strip().endswith("/work"), out
    assert (tmp_path / "state" / "grun" / "stage.log").read_text() == ""  # nothing went wrong


@pytest.mark.parametrize("nowait", [False, True])
def test_a_pipeline_step_waits_until_the_previous_steps_staged_output_is_back(cluster, tmp_path, nowait):
    """Step 2 waits for step 1 (a -M reader of its output, not there yet). Step 1 ends while its client (its grun,
    or the --nowait stager) is stopped: its end reaches the master only once its output is back (Staged.holds), so
    step 2 is not released to find it missing (or stale)."""
    cwd, gate = tmp_path / "cwd", tmp_path / "gate"
    cwd.mkdir()
    (cwd / "in.txt").write_text("in\n")
    env = dict(cluster.env, XDG_STATE_HOME=str(tmp_path / "state"))
    mode = ["--nowait"] if nowait else ["-v"]
    run = lambda *args: cluster.popen(*mode, "--stage", "always", "--hosts", "far", "-M", *args, cwd=str(cwd), env=env)
    step1 = run(f"while [ ! -e {gate} ]; do sleep 0.05; done; cat %i:in.txt %i:in.txt > %o:step1.bin")
    job_id = lambda proc: int((proc.stdout if nowait else proc.stderr).readline().split()[-1 if nowait else 2])
    step1_id = job_id(step1)
    wait_for(lambda: os.path.exists(os.path.join(cluster.root, "far", "node", "jobs", str(step1_id), "work", "in.txt")),
             20, what="step 1 to get its input")
    client = wait_for(lambda: next((p for p in psutil.process_iter(["cmdline", "cwd"]) if p.info["cwd"] == str(cwd)
                                    and "--nowait" in (p.info["cmdline"] or ())), None), 10, what="the stager"
                      ) if nowait else psutil.Process(step1.pid)
    step2 = run("wc -c < %i:step1.bin > %o:step2.txt")
    step2_id = job_id(step2)  # (queued: waiting for step 1)
    client.suspend()
    try:
        gate.touch()
        status = os.path.join(cluster.root, "far", "node", "jobs", str(step1_id), "status.json")
        wait_for(lambda: os.path.exists(status), 20, what="step 1 to end")
        time.sleep(2)  # (long enough for step 2 to be released, and fail, if step 1's end were reported)
    finally:
        client.resume()
    if nowait:
        assert cluster.client().wait([step2_id], 60)[step2_id]["exit"] == 0
    else:
        assert step2.wait(60) == 0 and step1.wait(60) == 0, step2.stderr.read()
    wait_for(lambda: (cwd / "step2.txt").exists(), 30, what="step 2's output")
    assert (cwd / "step2.txt").read_text().strip() == "6"


def test_nowait_frees_the_work_dir_once_its_outputs_are_back(cluster):
    """The --nowait stager releases the staged outputs on the node once it has them (near keeps a job's spool a
    day): the work dir goes (inputs and outputs), its output stays for `grun --attach`."""
    cwd = os.path.join(cluster.root, "fetched", "release")  # staged on near (fetch_path)
    os.makedirs(cwd)
    with open(os.path.join(cwd, "in.txt"), "w") as f:
        f.write("in\n")
    env = dict(cluster.env, XDG_STATE_HOME=os.path.join(cluster.root, "state-release"))
    r = cluster.grun("--nowait", "--hosts", "near", "--stage-in", "in.txt", "--stage-out", "out.txt",
                     "cat in.txt > out.txt; pwd", cwd=cwd, env=env)
    assert r.returncode == 0, r.stderr
    job_id = int(r.stdout.split()[-1])
    wait_for(lambda: os.path.exists(os.path.join(cwd, "out.txt")), 30, what="the stager to bring the output back")
    work = os.path.join(cluster.root, "near", "node", "jobs", str(job_id), "work")
    wait_for(lambda: not os.path.exists(work), 10, what="the node to drop the delivered job's work dir")
    assert cluster.client().wait([job_id], 10)[job_id]["exit"] == 0
    assert cluster.grun("--attach", str(job_id), cwd=cwd, env=env).stdout.decode().strip() == work


def test_attach_does_not_fetch_delivered_outputs_again(cluster):
    """Outputs once fetched (the following grun released the job) are not sent again to a `grun --attach`, which
    would overwrite the user's later edits (near keeps a job's spool a day; its janitor looks every 10 s)."""
    cwd = os.path.join(cluster.root, "fetched", "again")
    os.makedirs(cwd)
    r = cluster.grun("--nowait", "--hosts", "near", "--stage-out", "o.txt", "echo hi; echo done > o.txt", cwd=cwd)
    assert r.returncode == 0, r.stderr
    job_id = int(r.stdout.split()[1])
    cluster.client().wait([job_id], 30)  # (its stager pulled o.txt first: the node held the job's end until then)
    with open(os.path.join(cwd, "o.txt")) as f:
        assert f.read() == "done\n"
    with open(os.path.join(cwd, "o.txt"), "w") as f:
        f.write("edited\n")
    r = cluster.grun("--attach", str(job_id), cwd=cwd)  # (the stager released its outputs only: its output stays)
    assert (r.returncode, r.stdout) == (0, b"hi\n"), r.stderr
    with open(os.path.join(cwd, "o.txt")) as f:
        assert f.read() == "edited\n"


@pytest.mark.alone
def test_staging_runs_at_least_half_as_fast_as_the_output_stream(cluster, tmp_path):
    """bench scenario 10 measures 2 GiB; here 256 MiB, each the best of 2 alternated runs (the machine is shared)."""
    size = 256 << 20
    subprocess.run(["head", "-c", str(size), "/dev/zero"], stdout=open(tmp_path / "big", "wb"), check=True)

    def job(*args) -> dict:  # (its output through a pipe, as `grun ... | cat >/dev/null`: the client splices)
        r = subprocess.run(["bash", "-c", 'set -o pipefail; "$0" -m grun.cli "$@" | cat >/dev/null', sys.executable,
                            "-v", "--hosts", "far", *args], cwd=tmp_path, env=cluster.env, stderr=subprocess.PIPE)
        end = time.time()
        assert r.returncode == 0, r.stderr
        return dict(cluster.client().job(int(r.stderr.split()[2])), client_end=end)
    staged, streamed = [], []
    for _ in range(2):
        base = job("true")
        lag = base["start_time"] - base["dispatch_time"]
        run = job("--stage-in", "big", "true")
        staged.append(size / (run["start_time"] - run["dispatch_time"] - lag))
        run = job("head", "-c", str(size), "/dev/zero")
        streamed.append(size / (run["client_end"] - run["start_time"]))
    print(f"staged {[round(x / 1e6) for x in staged]} MB/s, streamed {[round(x / 1e6) for x in streamed]} MB/s")
    assert max(staged) >= 0.5 * max(streamed), (staged, streamed)


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs openssl to make certificates")
def test_staging_over_tls_with_a_cluster_secret(tmp_path):
    """The side channel's TLS (grun.stream.connect, the server's wrap) carries staged files too, byte-exact."""
    from cluster import tls_ca, tls_signed

    from grun import auth
    root = tempfile.mkdtemp(prefix="grun-stage-tls-")
    keys = {"tls": tls_signed(root, "host", tls_ca(root, "ca")), "auth": "secret", "secret_file": os.path.join(root, "secret")}
    with open(os.open(keys["secret_file"], os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(os.urandom(32).hex())
    c = LocalCluster(nodes={"n1": {"cpus": 1, "memory": 1000, "stage": "always", **keys}}, master_extra=keys)
    c.client_config = c.write_config("client", {"services": "exec", **keys})
    auth.use(keys["secret_file"], None, keys["tls"])  # (this process's client, which waits for the master)
    try:
        with c:
            data = os.urandom(5 << 20)
            (tmp_path / "in.bin").write_bytes(data)
            r = c.grun("-M", "pwd; cat %i:in.bin > out.bin", cwd=str(tmp_path))
            assert r.returncode == 0 and r.stdout.endswith(b"/work\n"), r.stderr
            assert (tmp_path / "out.bin").read_bytes() == data
    finally:
        auth.use(None)
        shutil.rmtree(root, ignore_errors=True)


def test_the_work_dir_and_dirs_staged_into_it_are_the_job_users_alone(cluster, tmp_path):
    """(QA) They were 0755: another user read the staged copy of a file from a 0700 cwd."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "in.txt").write_text("private\n")
    r = grun(cluster, tmp_path, "--hosts", "far", "-M", "stat -c %a . sub; cat %i:sub/in.txt > out.txt")
    assert r.returncode == 0 and r.stdout.split() == [b"700", b"700"], r


def test_a_make_jobs_appended_files_gain_this_runs_lines(cluster, tmp_path):
    """(QA) `>> %o:log` came back holding only this run's lines, a plain `>> log` (neither input nor output) never."""
    (tmp_path / "in.txt").write_text("in\n")
    (tmp_path / "log.txt").write_text("old\n")
    (tmp_path / "plain.log").write_text("p\n")
    r = grun(cluster, tmp_path, "--hosts", "far", "-M",
             "cat %i:in.txt > out.txt; echo new >> %o:log.txt; echo run >> plain.log; echo e 2>>new.log >&2")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "log.txt").read_text() == "old\nnew\n" and (tmp_path / "plain.log").read_text() == "p\nrun\n"
    assert (tmp_path / "new.log").read_text() == "e\n" and (tmp_path / "out.txt").read_text() == "in\n"


def test_staged_files_named_by_absolute_path_are_the_work_dirs_copies(cluster, tmp_path):
    """(QA) `%i:$PWD/in.txt` was staged, but the job read (and wrote) the submitter's path on its node."""
    (tmp_path / "in.txt").write_text("in\n")
    r = grun(cluster, tmp_path, "-v", "--hosts", "far", "-M", f"echo %i:{tmp_path}/in.txt; cat %i:{tmp_path}/in.txt > "
             f"%o:{tmp_path}/out.txt; cat --in={tmp_path}/in.txt.bak 2>&1 | grep -c {tmp_path}/in")
    assert r.returncode == 0 and "never written" not in r.stderr.decode(), r.stderr
    read, unstaged = r.stdout.decode().split()
    assert read.startswith(os.path.join(cluster.root, "far")) and read.endswith("/work/in.txt") and unstaged == "1", read
    assert (tmp_path / "out.txt").read_text() == "in\n"


def test_a_plain_jobs_appended_files_gain_this_runs_lines(cluster, tmp_path):
    """(QA) A job not -M's lost its `>> log` (its grun serves it as -M's); a job no grun follows does not wait for it."""
    (tmp_path / "plain.log").write_text("p\n")
    r = grun(cluster, tmp_path, "--hosts", "far", "echo run >> plain.log; echo e 2>>new.log >&2")
    assert r.returncode == 0, r.stderr
    assert [(tmp_path / n).read_text() for n in ("plain.log", "new.log")] == ["p\nrun\n", "e\n"]
    r = grun(cluster, tmp_path, "--nowait", "--hosts", "far", "echo run >> plain.log")  # (its log does not come back)
    job_id = int(r.stdout.split()[-1])
    assert cluster.client().wait([job_id], 30)[job_id]["state"] == "done"


def test_an_output_that_is_a_symlink_in_the_cwd_is_written_through_it(cluster, tmp_path):
    """(QA) It became a regular file; in place, the job writes through it, wherever it points (even nowhere yet)."""
    (tmp_path / "results").mkdir()
    (tmp_path / "out.txt").symlink_to("results/out.txt")
    (tmp_path / "away.txt").symlink_to(away := tmp_path.parent / f"{tmp_path.name}-away.txt")  # (out of the cwd)
    r = grun(cluster, tmp_path, "--hosts", "far", "--stage-out", "out.txt", "--stage-out", "away.txt",
             "echo o > out.txt; echo a > away.txt")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.txt").is_symlink() and (tmp_path / "away.txt").is_symlink()
    assert (tmp_path / "results" / "out.txt").read_text() == "o\n" and away.read_text() == "a\n"
    away.unlink()


def test_a_failed_staged_make_job_hides_its_outputs_as_in_place(cluster, tmp_path):
    """(QA) An older FILE.failed of other content is kept as FILE.failed.1 (make.rename_failed), and no output,
    written or stale, stays under its own name for a downstream step to take for a good one."""
    (tmp_path / "in.txt").write_text("in\n")
    (tmp_path / "out.txt.failed").write_text("older\n")
    (tmp_path / "stale.txt").write_text("stale\n")
    os.utime(tmp_path / "stale.txt", (1, 1))  # (older than in.txt: make runs the job)
    for where in ("near", "far"):  # in place, then staged: the same files
        r = grun(cluster, tmp_path, "--hosts", where, "-M", "cat %i:in.txt > %o:out.txt; test -e %o:stale.txt; exit 1")
        assert r.returncode == 1, r.stderr
        assert sorted(os.listdir(tmp_path)) == ["in.txt", "out.txt.failed", "out.txt.failed.1", "stale.txt.failed"]
        assert [(tmp_path / n).read_text() for n in ("out.txt.failed", "out.txt.failed.1", "stale.txt.failed")] == [
            "in\n", "older\n", "stale\n"], where
        (tmp_path / "out.txt.failed").write_text("older\n")
        os.unlink(tmp_path / "out.txt.failed.1")
        os.rename(tmp_path / "stale.txt.failed", tmp_path / "stale.txt")


def test_outputs_in_a_subdirectory_are_written_when_staged(cluster, tmp_path):
    """(QA) `-o logs/j.out`, `%o:sub/count.txt`, `--stage-out sub/x.txt`: their directories are made in the work dir."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "sub").mkdir()
    r = grun(cluster, tmp_path, "--hosts", "far", "-o", "logs/j.out", "--stage-out", "sub/x.txt", "-M",
             "echo 1 > %o:sub/count.txt; echo x > sub/x.txt; echo hi")
    assert r.returncode == 0, r.stderr
    assert [(tmp_path / p).read_text() for p in ("logs/j.out", "sub/count.txt", "sub/x.txt")] == ["hi\n", "1\n", "x\n"]


def test_a_python_reader_of_a_staged_job_s_output_gets_its_outputs_and_its_end_at_once(cluster, tmp_path):
    """Job.stdout() follows without releasing the job's spool; its pull of the outputs must still end the node's hold
    of the job's end (it held it for stage_wait, 5 min, and stdout() waited that long for the master)."""
    from grun.job import Job
    spec = job_spec("echo made > out.txt; echo hello", cwd=str(tmp_path), hosts="far",
                    stage_out=[str(tmp_path / "out.txt")])
    client = cluster.client()
    job, start = Job(client, client.submit_spec(spec)), time.monotonic()
    assert job.stdout() == b"hello\n" and time.monotonic() - start < 30
    assert (tmp_path / "out.txt").read_text() == "made\n"
    assert client.wait([job.id], 10)[job.id]["state"] == "done"


def test_outputs_come_back_to_a_cwd_of_another_user_and_a_killed_staged_job_s_end_is_not_held(cluster, tmp_path):
    """A job of ours in a directory that is not (/tmp, a group's project dir) gets its outputs back: only another's job
    in another's cwd (root's attach) leaves them on the node. A staged job killed with no follower is ended at once:
    its dependants are cancelled, nothing waits for its files (its end was held for stage_wait, 5 min)."""
    os.chown(tmp_path, 65534, 65534)
    os.chmod(tmp_path, 0o777)
    client, out = cluster.client(), str(tmp_path / "out.txt")
    start = time.monotonic()
    assert client.follow(client.submit_spec(job_spec("echo made > out.txt", cwd=str(tmp_path), hosts="far",
                                                     stage_out=[out]))) == 0 and time.monotonic() - start < 30
    assert (tmp_path / "out.txt").read_text() == "made\n"
    job_id = client.submit_spec(job_spec("sleep 60 > out.txt", cwd=str(tmp_path), hosts="far", stage_out=[out]))
    client.wait_started(job_id)
    client.kill([job_id])
    assert client.wait([job_id], 30)[job_id]["state"] == "killed"
