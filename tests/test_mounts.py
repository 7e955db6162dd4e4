"""NFS and the working directory (issue 14): grun/mounts.py on real mountinfo text and real files, the
placement condition in the core, and (at the end) two real nodes whose mounts differ.

This machine's kernel has no NFS client (no `nfs` in /proc/filesystems), so no NFS export can be mounted
here. The end-to-end part uses the network filesystem that can be: sshfs (FUSE, over ssh to a private
sshd on 127.0.0.1), mounted in the test's namespace, with one node started in its own mount namespace
(`unshare -m`) where that mount is taken away. It is skipped, saying why, without root, sshd, sshfs or
/dev/fuse. README "NFS and the working directory" gives the manual check on a real NFS cluster.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from cluster import LocalCluster, free_port
from util import wait_for

from grun import mounts as M
from grun.core import explain as E
from grun.core.nodes import NodeIndex, NodeView
from grun.core.placement import place
from grun.core.queue import JobTable

# Real mountinfo lines: this CI machine's (ext4 root, cgroup, a bind mount with an optional field), a real
# sshfs mount made here (tests below), and, from real hosts' /proc/self/mountinfo as published, a
# Kubernetes node's nfs4 volume, a cifs share, an autofs map, Lustre and a path with a space (\040).
MOUNTINFO = r"""22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard,resv_strict,resuid=65534,resgid=65534
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
45 27 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw,discard,resv_strict
47 27 0:41 / /tmp/sshfs-try.qzIz/mnt rw,nosuid,nodev,relatime - fuse.sshfs root@127.0.0.1:/tmp/sshfs-try.qzIz/export rw,user_id=0,group_id=0
3417 2892 0:212 / /kaiwudb/certs rw,relatime - nfs4 20.20.20.43:/data/k8s/nfs_share/pvc-2108ee90 rw,vers=4.1,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,clientaddr=20.20.20.27,local_lock=none,addr=20.20.20.43
58 44 0:52 / /share/nas rw,relatime shared:31 master:7 - cifs //192.0.2.9/backup rw,vers=3.1.1
38 25 0:33 / /net rw,relatime shared:22 - autofs /etc/auto.net rw,fd=12,pgrp=1,timeout=300,minproto=5,maxproto=5,indirect
61 27 0:55 / /lustre/scratch rw,relatime - lustre 10.0.0.1@o2ib:/scratch rw,flock
62 27 0:56 /alice /home/alice\040smith rw,relatime shared:40 - nfs server:/home rw,vers=3
garbage without the separator
63 27 0:57 / /short - nfs
"""


def test_parse_real_mountinfo():
    mounts = M.parse(MOUNTINFO)
    assert len(mounts) == 10  # the last two lines are not mountinfo lines
    assert mounts[1] == {"type": "ext4", "source": "/dev/vda", "root": "/", "sub": "/"}
    assert mounts[3]["root"] == "/run/netns" and mounts[3]["sub"] == "/run/netns"  # optional field shared:1
    assert mounts[9] == {"type": "nfs", "source": "server:/home", "root": "/home/alice smith", "sub": "/alice"}
    net = M.network(mounts)
    assert [m["type"] for m in net] == ["fuse.sshfs", "nfs4", "cifs", "autofs", "lustre", "nfs"]
    assert net[2] == {"type": "cifs", "source": "//192.0.2.9/backup", "root": "/share/nas", "sub": "/"}
    assert M.network(None) is None
    assert M.reported(net) == net and M.reported([{"type": 1}]) is None and M.reported("x") is None


def test_a_mount_point_that_is_not_utf8_is_never_matched(tmp_path):
    """The kernel shows such bytes as they are; read as UTF-8 with replacement, they match no real path
    (whose undecodable bytes Python holds as surrogates), so a cwd under one is taken as local: no error."""
    point = os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9")
    os.mkdir(point)
    text = (b"70 27 0:40 / " + os.fsencode(point) + b" rw - nfs4 nas:/export rw\n").decode("utf-8", "replace")
    mounts = M.parse(text)
    assert mounts[0]["root"].endswith("caf\ufffd") and M.identity(point, mounts) is None


def test_this_hosts_table_is_read():
    mounts = M.table()
    assert mounts and any(m["root"] == "/" for m in mounts)


def test_identity_on_real_files(tmp_path):
    """The filesystem of a real directory: the longest mount point above it after its symlinks, only a network one."""
    export = tmp_path / "nfs"
    (export / "proj" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(export / "proj")
    (tmp_path / "local").mkdir()
    mounts = M.parse(f"27 1 254:0 / / rw - ext4 /dev/vda rw\n"
                     f"70 27 0:40 / {export} rw shared:3 - nfs4 nas:/export rw\n"
                     f"71 70 0:41 / {export}/proj/sub rw - tmpfs tmpfs rw\n")
    fs = {"type": "nfs4", "source": "nas:/export", "root": str(export), "sub": "/"}
    assert M.identity(str(export / "proj"), mounts) == fs
    assert M.identity(str(tmp_path / "link"), mounts) == fs  # through the symlink
    assert M.identity(str(export / "proj" / "sub"), mounts) is None  # a local fs mounted inside the export
    assert M.identity(str(tmp_path / "local"), mounts) is None
    assert M.where(fs) == f"{export} (nfs4 nas:/export)"


def test_shared():
    fs = {"type": "nfs", "source": "nas:/export/home", "root": "/home", "sub": "/"}
    def node(*rows):
        return [dict(zip(("type", "source", "root", "sub"), r)) for r in rows]
    assert M.shared(fs, node(("nfs", "nas:/export/home", "/home", "/"))) is True
    assert M.shared(fs, node(("nfs4", "nas:/export/", "/export", "/"))) is True  # an export that holds it
    assert M.shared(fs, node(("nfs", "nas:/export/homes", "/homes", "/"))) is False  # not a path prefix
    assert M.shared(fs, node(("nfs", "other:/export/home", "/data", "/"))) is False
    assert M.shared(fs, node()) is False  # a node that mounts nothing over the network
    assert M.shared(fs, node(("nfs", "10.0.0.5:/export/home", "/home", "/"))) is None  # its server by another name?
    assert M.shared(fs, node(("autofs", "/etc/auto.master", "/home", "/"))) is None  # mounted on demand
    assert M.shared(fs, None) is None and M.shared(None, node()) is None
    bind = {"type": "nfs", "source": "server:/home", "root": "/home/alice", "sub": "/alice"}
    assert M.shared(bind, node(("nfs", "server:/home", "/home", "/"))) is True
    assert M.shared(fs, node(("nfs", "server:/home", "/home/bob", "/bob"))) is False  # below it, not at it
    lacking = lambda stage: NodeView("n", 1, 100, mounts=node(), stage=stage)  # a node without the export
    where = "/home (nfs nas:/export/home)"
    assert M.unmounted({"cwd_fs": fs}, lacking("auto")) == where  # no files to stage: it cannot run there
    assert M.unmounted({"cwd_fs": fs, "stage": "always"}, lacking("never")) is None  # (issue 14's staging)
    assert M.unmounted({"cwd_fs": fs, "inputs": ["/home/a"]}, lacking("auto")) is None  # its files are staged
    assert M.unmounted({"cwd_fs": fs, "inputs": ["/home/a"]}, lacking("never")) == where
    assert M.unmounted({"cwd_fs": fs, "inputs": ["/home/a"], "stage": "never"}, lacking("auto")) == where


def test_job_paths_and_sync_on_real_files(tmp_path):
    export = tmp_path / "export"
    (export / "bin").mkdir(parents=True)
    mounts = M.parse(f"70 27 0:40 / {export} rw - nfs4 nas:/export rw\n")
    job = {"cwd": str(export), "cmd": ["./bin/run.sh", "-x", "/usr/bin/env", "in.txt"],
           "inputs": [str(export / "in.txt"), "/etc/hostname"]}
    assert M.job_paths(job, mounts) == [str(export), str(export / "in.txt"), str(export / "bin")]
    assert M.job_paths({**job, "shell": True, "cmd": ["cd /tmp && ./bin/x < in.txt"]}, mounts) == \
        [str(export), str(export / "in.txt"), str(export / "bin")]
    assert M.job_paths(job, []) == [] and M.job_paths(job, None) == []  # a node without network mounts
    assert M.job_paths({**job, "cwd_fs": NFS}, []) == [str(export)]  # (the client found it on one)
    ended = {**job, "outputs": [str(export / "out"), "/tmp/out"]}
    assert M.job_paths(ended, mounts, ended=True) == [str(export / "out"), str(export)]
    (export / "in.txt").write_text("x")
    started = time.monotonic()
    M.sync([str(export / "in.txt"), str(export / "bin"), str(export / "missing" / "deep"), "/proc/1/root/x"])
    assert time.monotonic() - started < 1.0 and not M._idle.locked()  # never raises; no thread left behind


# ---- the placement condition in the core ----------------------------------------------------------------

NFS = {"type": "nfs4", "source": "nas:/export", "root": "/data", "sub": "/"}


def _job(job_id=1, **extra):
    return {"id": job_id, "cpus": 1.0, "memory": 100, "priority": 20, "cwd": "/data/p", "cwd_fs": NFS, **extra}


def _nodes():
    with_it = NodeView("a", 8, 8000, mounts=[{"type": "nfs4", "source": "nas:/export", "root": "/data", "sub": "/"}])
    without = NodeView("b", 1, 8000, mounts=[])  # best fit (fewest cpus left) would pick it
    unknown = NodeView("c", 2, 8000)
    return with_it, without, unknown


def test_placement_only_on_nodes_that_mount_the_cwd():
    a, b, _ = _nodes()
    plan = place([_job(1), _job(2, cwd_fs=None)], NodeIndex([a, b]))
    assert [(j["id"], n.name) for j, n in plan.placed] == [(1, "a"), (2, "b")]
    plan = place([_job(3)], NodeIndex(_nodes()[1:]))
    assert [n.name for _, n in plan.placed] == ["c"]  # mounts not known: allowed
    plan = place([_job(4)], NodeIndex([_nodes()[1]]))
    assert plan.placed == []


def test_refusal_and_why_name_the_filesystem():
    a, b, c = _nodes()
    assert E.impossible(_job(), [b]) == "no node mounts /data (nfs4 nas:/export)"
    assert E.impossible(_job(), [a, b]) is None and E.impossible(_job(), [b, c]) is None
    table = JobTable()
    table.nodes = NodeIndex([b])
    assert E.refusal(_job(), table) == "no node mounts /data (nfs4 nas:/export)"
    b.mounts = a.mounts  # its mounts changed: the remembered answer goes
    assert E.refusal(_job(), table) is None

    master = SimpleNamespace(settings={"reserve_after": 300.0}, table=JobTable())  # (what explain reads of it)
    master.table.nodes["b"] = NodeView("b", 1, 8000, mounts=[])
    master.table.apply({"op": "submit", "job": {**_job(), "state": "queued", "user": "u"}})
    text = E.explain(master.table.jobs[1], master, time.time())
    assert "excluded: b (does not mount /data (nfs4 nas:/export))" in text
    assert "No node up mounts /data (nfs4 nas:/export)." in text


def test_a_node_without_the_cwd_is_excluded_when_another_could_run_it():
    table = JobTable()
    for node in _nodes()[:2]:
        node.mounts = None  # (the cwd's absence was found by running there, whatever the mounts said)
        table.nodes[node.name] = node
    table.apply({"op": "submit", "job": {**_job(), "cwd_fs": None, "state": "queued", "user": "u"}})
    table.apply({"op": "dispatch", "id": 1, "node": "b", "time": 1.0})
    why = "cwd /data/p does not exist on node b"
    rec = table.elsewhere_record(table.jobs[1], "b", why, 2.0)
    assert rec == {"op": "retry", "id": 1, "time": 2.0, "at": 2.0, "reason": why, "exclude": "b"}
    table.apply(rec)
    job = table.jobs[1]
    assert job["state"] == "queued" and job["exclude"] == ["b"]
    assert [n.name for _, n in place([job], table.nodes).placed] == ["a"]
    assert table.elsewhere_record(job, "a", why, 3.0) is None  # no other node left: it fails as before
    from grun.core.deps import retry_or_finish
    finish = {"op": "finish", "id": 1, "result": {"exit_code": 2}, "time": 3.0}
    assert retry_or_finish(job, finish) is finish  # the exclusion did not use a retry the job did not have


# ---- two real nodes whose mounts differ -------------------------------------------------------------------

def _tools() -> str | None:
    """Why the end-to-end part cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (a mount namespace, a FUSE mount)"
    missing = [t for t in ("sshfs", "ssh-keygen", "unshare", "fusermount3") if not shutil.which(t)]
    missing += [p for p in ("/usr/sbin/sshd", "/usr/lib/openssh/sftp-server", "/dev/fuse") if not os.path.exists(p)]
    return f"no {', '.join(missing)} (apt-get install sshfs openssh-server)" if missing else None


class SshfsCluster(LocalCluster):
    """Nodes "a" (4 cpus) and "b" (1 cpu: best fit's first choice); "b" runs in its own mount namespace
    without the sshfs mount and with a tmpfs over `hidden`, so it lacks what lies under either."""

    def __init__(self, root: str, hide: list[str], cover: str):
        super().__init__({"a": {"cpus": 4, "memory": 2000}, "b": {"cpus": 1, "memory": 2000}}, root=root)
        self.hide, self.cover = hide, cover

    def _spawn(self, name: str, config: str) -> None:
        if name != "b":
            return super()._spawn(name, config)
        script = "".join(f"umount -l '{p}' && " for p in self.hide) + f"mount -t tmpfs none '{self.cover}' && " \
            f"exec '{sys.executable}' -m grun.daemon '{config}'"
        with open(os.path.join(self.root, "b.out"), "ab") as log:
            self.procs[name] = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                                                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)


@pytest.fixture(scope="module")
def sshfs(tmp_path_factory):
    """A private sshd on 127.0.0.1 whose sftp-server logs each request, an sshfs mount of its `export` at
    `mnt` (no caches: every stat reaches the server, which logs it), and the SshfsCluster."""
    if why := _tools():
        pytest.skip(why)
    root = tmp_path_factory.mktemp("nfs")
    export, mnt, hidden = root / "export", root / "m nt", root / "hidden"  # (a space: \040 in mountinfo)
    for d in (export / "proj", mnt, hidden / "proj"):
        d.mkdir(parents=True)
    for key in ("host", "user"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / key)], check=True)
    port, log = free_port(), root / "sftp.log"
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root}/host\nAuthorizedKeysFile {root}/user.pub\n"
        f"PermitRootLogin yes\nPasswordAuthentication no\nUsePAM no\nPidFile none\nStrictModes no\n"
        f"Subsystem sftp /usr/lib/openssh/sftp-server -e -l VERBOSE 2>>{log}\n")
    os.makedirs("/run/sshd", exist_ok=True)  # (sshd's privilege separation directory)
    procs = [subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(root / "sshd_config"), "-E", str(root / "sshd.log")])]
    cluster = None
    try:
        wait_for(lambda: subprocess.run(["sh", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"], executable="/bin/bash",
                                        capture_output=True).returncode == 0, 10, what="sshd")

        def mount(there, here):
            procs.append(subprocess.Popen(
                ["sshfs", "-f", "-p", str(port), "-o", f"IdentityFile={root}/user,StrictHostKeyChecking=no,"
                 + "UserKnownHostsFile=/dev/null,BatchMode=yes,LogLevel=ERROR,cache=no,attr_timeout=0,entry_timeout=0,"
                 + "negative_timeout=0", f"root@127.0.0.1:{there}", str(here)], stderr=subprocess.DEVNULL))
            wait_for(lambda: M.identity(str(here), M.table()), 10, what="the sshfs mount")
            return procs[-1]
        ns = SimpleNamespace(export=export, mnt=mnt, hidden=hidden, log=log, root=root, sshfs=mount(export, mnt))
        ns.mount, ns.cluster = mount, SshfsCluster(str(root / "cluster"), [str(mnt)], str(hidden))
        cluster = ns.cluster.start()
        yield ns
    finally:
        if cluster is not None:
            cluster.stop()
        for point in (mnt, root / "mnt2"):
            subprocess.run(["fusermount3", "-u", "-z", str(point)], capture_output=True)
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=10)


def test_jobs_go_only_where_their_cwd_is_mounted(sshfs):
    cluster, export, mnt = sshfs.cluster, sshfs.export, sshfs.mnt
    fs = M.identity(str(mnt / "proj"), M.table())
    assert fs == {"type": "fuse.sshfs", "source": f"root@127.0.0.1:{export}", "root": str(mnt), "sub": "/"}
    nodes = {n["name"]: n for n in cluster.client().nodes()}
    assert set(nodes) == {"a", "b"}
    for _ in range(2):  # without the condition, best fit sends it to b, where the cwd is missing (exit 2)
        r = cluster.grun("-v", "pwd", cwd=str(mnt / "proj"))
        assert r.returncode == 0 and r.stdout.decode() == f"{mnt}/proj\n" and b" on a" in r.stderr, r.stderr
    r = cluster.grun("-v", "pwd", cwd=str(export))  # (a local directory: anywhere; best fit: b)
    assert r.returncode == 0 and b" on b" in r.stderr, r.stderr


def test_no_node_mounts_it(sshfs):
    cluster, export, mnt = sshfs.cluster, sshfs.export, sshfs.mnt
    where = f"{mnt} (fuse.sshfs root@127.0.0.1:{export})"
    r = cluster.grun("--nowait", "-H", "b", "pwd", cwd=str(mnt / "proj"))
    assert r.returncode == 1 and r.stderr.decode() == f"grun: of the nodes in hosts 'b', none mounts {where} (--force queues " \
        "it anyway)\n", "a mounts it, b is asked for"
    r = cluster.grun("--nowait", "--force", "-H", "b", "pwd", cwd=str(mnt / "proj"))
    assert r.returncode == 0, r.stderr
    job_id = int(r.stdout.split()[-1])
    why = cluster.grun("why", str(job_id)).stdout.decode()
    assert f"b (does not mount {where})" in why and "No node up now could ever run it" in why, why
    cluster.grun("-k", str(job_id))


def test_a_node_without_the_cwd_is_not_offered_the_job_again(sshfs):
    """The cwd (a local directory, so nothing tells the master) is hidden on b: the job fails there at once
    with exit 2, and runs again on a; alone on b (-H b) it fails as before."""
    cluster, hidden = sshfs.cluster, sshfs.hidden
    r = cluster.grun("-v", "pwd", cwd=str(hidden / "proj"))
    assert r.returncode == 0 and r.stdout.decode() == f"{hidden}/proj\n", r.stderr
    job = cluster.client().job(int(r.stderr.split(b"job ", 1)[1].split()[0]))  # (-v: "grun: job N queued")
    assert job["node"] == "a" and job["exclude"] == ["b"] and job["state"] == "done", job
    assert job["retry_reason"] == f"cwd {hidden}/proj does not exist on node b" and job["attempt"] == 2
    r = cluster.grun("-H", "b", "pwd", cwd=str(hidden / "proj"))
    assert r.returncode == 2 and r.stderr.decode() == f"grun: cwd {hidden}/proj does not exist on node b\n"


def _asked(log, name: str) -> int:
    """How many times the server was asked about this file (sftp-server's VERBOSE log: one line a request)."""
    return sum(f'"{name}"' in line for line in log.read_text().splitlines())


def test_nfs_sync_reaches_the_server(sshfs):
    """The node refreshes the directories of a job's command words before it starts (the job itself, `true`,
    never touches them), and the waiting client a job's -M outputs after it ends: each is a request the file
    server sees (sshfs here, mounted without caches, so that every refresh shows)."""
    cluster, export, mnt, log = sshfs.cluster, sshfs.export, sshfs.mnt, sshfs.log
    (mnt / "proj" / "tools").mkdir()
    client, before = cluster.client(), _asked(log, f"{export}/proj/tools")
    r = cluster.grun("--nowait", "true", "tools/run", cwd=str(mnt / "proj"))
    job_id = int(r.stdout.split()[-1])
    assert client.wait([job_id], 20)[job_id]["exit"] == 0
    assert _asked(log, f"{export}/proj/tools") > before  # only the node's sync asked: nothing else looks there
    r = cluster.grun("--nowait", "-M", "true %o:out.dat", cwd=str(mnt / "proj"))
    job_id = int(r.stdout.split()[-1])
    assert client.wait([job_id], 20)[job_id]["exit"] == 0
    before = _asked(log, f"{export}/proj/out.dat")  # (the submitting grun looked at it before, and exited)
    client.exit_code(job_id)  # the client's refresh of the job's outputs, once it has ended
    assert _asked(log, f"{export}/proj/out.dat") > before
    client.nfs_sync, before = False, _asked(log, f"{export}/proj/out.dat")
    client.exit_code(job_id)
    assert _asked(log, f"{export}/proj/out.dat") == before


def test_sync_returns_while_the_server_hangs(sshfs):
    """A stopped sshfs daemon hangs every access to its mount, as a dead NFS server does: sync gives up
    after its timeout, and the next one returns at once while the first is still stuck."""
    sshfs.sshfs.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        M.sync([str(sshfs.mnt / "proj" / "x")], timeout=0.5)
        M.sync([str(sshfs.mnt / "proj" / "y")], timeout=0.5)
        assert time.monotonic() - started < 1.5 and M._idle.locked()
    finally:
        sshfs.sshfs.send_signal(signal.SIGCONT)
    wait_for(lambda: not M._idle.locked(), 10, what="the stuck sync to end")


def test_a_hung_server_holds_no_job_start_up(sshfs, tmp_path):
    """The reaper's sync runs in a child of its own (grun.spawner._sync_as): with the server hung, a job naming a
    path on it starts after SYNC_SECS, and the jobs after it start at once while that child is still stuck."""
    cluster, client = sshfs.cluster, sshfs.cluster.client()
    sshfs.sshfs.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        hung = int(cluster.grun("--nowait", "-H", "a", "true", f"{sshfs.mnt}/proj/tools/run", cwd=str(tmp_path)).stdout.split()[-1])
        assert client.wait([hung], 20)[hung]["exit"] == 0
        after = [int(cluster.grun("--nowait", "-H", "a", "true", f"{sshfs.mnt}/proj/{i}", cwd=str(tmp_path)).stdout.split()[-1])
                 for i in range(3)]
        assert all(j["exit"] == 0 for j in client.wait(after, 20).values())
        assert time.monotonic() - started < M.SYNC_SECS + 8  # one wait of SYNC_SECS, not one a job
    finally:
        sshfs.sshfs.send_signal(signal.SIGCONT)


def test_a_mount_made_later_is_heard_of(sshfs):
    """Node a's heartbeat carries its mounts when they change: a filesystem mounted after it registered (no
    node was known to mount it: refused) is placed there once its next heartbeat has told the master."""
    cluster, export2, mnt2 = sshfs.cluster, sshfs.root / "export2", sshfs.root / "mnt2"
    (export2 / "p").mkdir(parents=True)
    mnt2.mkdir()
    r = cluster.grun("--nowait", "true", cwd=str(mnt2))  # (local yet: anywhere)
    assert r.returncode == 0, r.stderr
    sshfs.mount(export2, mnt2)  # (until a's next heartbeat, refused: "no node mounts")
    r = wait_for(lambda: (r := cluster.grun("-v", "pwd", cwd=str(mnt2 / "p"))).returncode == 0 and r, 10,
                 what="node a's heartbeat with its new mount")
    assert r.stdout.decode() == f"{mnt2}/p\n" and b" on a" in r.stderr, r.stderr


def test_a_bad_cwd_fs_is_refused_in_one_line(sshfs):
    from grun.client import GrunError
    client = sshfs.cluster.client()
    for bad in ("nas:/x", {"type": "nfs"}, {**NFS, "root": 7}, {**NFS, "sub": ""}):
        with pytest.raises(GrunError, match="^cwd_fs must map type, source, root and sub to strings$"):
            client.submit_spec({"cmd": ["true"], "cwd": "/", "cwd_fs": bad})
    assert client.reachable()
