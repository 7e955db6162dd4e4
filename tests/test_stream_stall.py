"""An attached client told why its job's output stopped: the node's spool disk is full (filled by others, so
punching what the client was sent frees nothing), one stderr line when it stalls and one when it flows again,
outside the job's own output. Real daemons, the node's spool on a real 3 MB tmpfs, or an ext4 with a root
reserve (root only)."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import tempfile
import threading

import pytest
from cluster import LocalCluster
from util import read_line, wait_for

LINES = 20_000


def _cluster_on(mount: list[str], image_mb: int = 0):
    """A cluster whose node n5 has its spool on a file system of its own: `mount` (its last word the mount
    point), over a fresh image file of `image_mb` MB, made ext4 with half its blocks reserved for root."""
    if os.geteuid() != 0:
        pytest.skip("mounts a file system: root only")
    root = tempfile.mkdtemp(prefix="grun-stall-")
    spool = os.path.join(root, "n5", "node")
    os.makedirs(spool)
    image = os.path.join(root, "spool.img")
    if image_mb:
        with open(image, "wb") as f:
            f.truncate(image_mb << 20)
        made = subprocess.run(["mkfs.ext4", "-q", "-m", "50", image], capture_output=True).returncode == 0
    if (image_mb and not made) or subprocess.run([*mount, image, spool] if image_mb else [*mount, spool],
                                                 capture_output=True).returncode:
        shutil.rmtree(root)
        pytest.skip(f"cannot {' '.join(mount)} here")
    cluster = LocalCluster(nodes={"n5": {"cpus": 2, "memory": 2000}}, root=root, master_extra={"min_free_disk": 0})
    cluster.spool = spool
    try:
        with cluster:
            yield cluster
    finally:
        subprocess.run(["umount", "-l", spool], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def c():
    yield from _cluster_on(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs"])


@pytest.fixture
def reserved():
    """n5's spool on a 16 MB ext4 whose blocks are half reserved for root, as the node (root) writes it."""
    yield from _cluster_on(["mount", "-o", "loop"], image_mb=16)


def _fill(path: str) -> None:
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


def test_an_attached_client_is_told_when_a_full_spool_disk_stalls_its_job_s_output(c, tmp_path):
    go = tmp_path / "go"
    client = c.popen("-H", "n5", "sh", "-c", f"echo started; while [ ! -e {go} ]; do sleep 0.05; done; seq 1 {LINES}")
    try:
        assert read_line(client.stdout, 30) == b"started\n"
        filler = os.path.join(c.spool, "filler")
        _fill(filler)  # (after the job's start: its directory is written)
        go.touch()
        assert read_line(client.stderr, 30) == b"grun: job 1: output stalled: the node's spool disk is full\n"
        os.unlink(filler)
        out, err = client.communicate(timeout=60)
    finally:
        client.kill()
    assert client.returncode == 0, err
    assert out == b"".join(b"%d\n" % i for i in range(1, LINES + 1))
    # once each (not at each block punching frees meanwhile), and never within the job's own output
    assert err == b"grun: job 1: output flows again\n", err
    wait_for(lambda: "Traceback" not in open(os.path.join(c.root, "n5", "grun.log")).read(), 1)


def _stall_then_free(c, go) -> None:
    """Once the job waits at `go`: fill the spool disk, let the job write, and free the disk once the node has seen it
    full (its log: the client's notice may have nowhere to go)."""
    filler = os.path.join(c.spool, "filler")
    _fill(filler)
    go.touch()
    log = os.path.join(c.root, "n5", "grun.log")
    wait_for(lambda: "the spool disk is full" in open(log).read(), 30, what="the node to see its spool disk full")
    os.unlink(filler)


def test_a_stall_notice_our_stderr_refuses_neither_breaks_nor_repeats_the_stream(c, tmp_path):
    """`grun CMD 2>/dev/full`: the notice cannot be written; the job's output still comes once, whole (an OSError
    from the notice was taken for a lost node: re-attached from the old offsets, stdout came again, and the
    notice with it, in a loop)."""
    go = tmp_path / "go"
    with open("/dev/full", "wb") as full:
        client = c.popen("-H", "n5", "sh", "-c", f"echo started; while [ ! -e {go} ]; do sleep 0.05; done; "
                         f"seq 1 {LINES}", stderr=full)
    try:
        assert read_line(client.stdout, 30) == b"started\n"
        _stall_then_free(c, go)
        out, _ = client.communicate(timeout=60)
    finally:
        client.kill()
    assert out == b"".join(b"%d\n" % i for i in range(1, LINES + 1))  # (after "started")
    assert client.returncode == 0


def test_the_python_api_hears_a_stall_through_on_note_not_in_the_job_s_stderr(c, tmp_path):
    go = tmp_path / "go"
    job = c.client().submit(f"echo started; while [ ! -e {go} ]; do sleep 0.05; done; seq 1 {LINES}", hosts="n5")
    out, err, notes = [], [], []
    follower = threading.Thread(target=lambda: c.client().follow(job.id, stdout_fd=out.append, stderr_fd=err.append,
                                                                 on_note=notes.append))
    follower.start()
    try:
        wait_for(lambda: out, 30, what="the follower to attach")
        _stall_then_free(c, go)
    finally:
        follower.join(60)
    assert not follower.is_alive()
    assert b"".join(out) == b"started\n" + b"".join(b"%d\n" % i for i in range(1, LINES + 1))
    assert (err, notes) == ([], [f"job {job.id}: output stalled: the node's spool disk is full",
                                 f"job {job.id}: output flows again"])


def test_a_stall_ends_on_a_disk_whose_root_reserve_has_room_again(reserved, tmp_path):
    """The node writes its spool as root: on ext4 its writes fail only once the root reserve (5 % by default) is full
    too, so the stall is over once blocks are free again, though none are free for others (the stall was
    over only once more than the whole reserve was free: the client was never told its output flows again)."""
    lines = 5_000  # (less than a pipe holds: the notice after them comes while we do not read them)
    go, end, fillers = tmp_path / "go", tmp_path / "end", os.path.join(reserved.spool, "fillers")
    os.mkdir(fillers)
    client = reserved.popen("-H", "n5", "sh", "-c", f"echo started; while [ ! -e {go} ]; do sleep 0.05; done; "
                            f"seq 1 {lines}; while [ ! -e {end} ]; do sleep 0.05; done")
    try:
        assert read_line(client.stdout, 30) == b"started\n"
        parts = 0
        with contextlib.suppress(OSError):  # (we are root: the reserve fills too)
            while True:
                with open(os.path.join(fillers, str(parts)), "wb") as f:
                    parts += 1
                    f.write(b"\0" * (256 << 10))
        for size in (4096, 1024, 1024):  # to its last block: ext4 refuses a big write before, and frees at a sync
            os.sync()
            with contextlib.suppress(OSError), open(os.path.join(fillers, f"last{size}"), "ab", buffering=0) as f:
                while True:
                    f.write(b"\0" * size)
        go.touch()
        assert read_line(client.stderr, 30) == b"grun: job 1: output stalled: the node's spool disk is full\n"
        for part in range(12):  # 3 MB: room for root, none for others (the reserve is 8 MB)
            os.unlink(os.path.join(fillers, str(part)))
        st = os.statvfs(reserved.spool)
        assert st.f_bavail == 0 and st.f_bfree * st.f_frsize >= 2 << 20, st
        # while the job runs (its end says so too)
        assert read_line(client.stderr, 20) == b"grun: job 1: output flows again\n"
        end.touch()
        out, err = client.communicate(timeout=60)
    finally:
        client.kill()
    assert out == b"".join(b"%d\n" % i for i in range(1, lines + 1))
    assert (client.returncode, err) == (0, b"")


def test_a_drain_that_cannot_open_stderr_s_file_closes_stdout_s_pipe_and_file(tmp_path):
    """Drain.add of a job whose stderr file cannot be opened (here a directory: EISDIR; out of fds in life) gives
    up the job's output with its error, and leaves no fd of stdout's behind in the node daemon."""
    from grun.drain import Drain
    for name in ("stdout", "stderr"):
        os.mkfifo(tmp_path / f"{name}.pipe")
    os.mkdir(tmp_path / "stderr")
    writers = [os.open(tmp_path / f"{n}.pipe", os.O_RDWR) for n in ("stdout", "stderr")]  # (a FIFO opens at once)
    stop = threading.Event()
    drain = Drain(lambda: 1 << 30, lambda key: None, stop)
    try:
        before = set(os.listdir("/proc/self/fd"))
        with pytest.raises(IsADirectoryError):
            drain.add("7", str(tmp_path))
        assert set(os.listdir("/proc/self/fd")) <= before and not drain.outputs and not drain.fds
    finally:
        stop.set()
        drain.close()
        for fd in writers:
            os.close(fd)
