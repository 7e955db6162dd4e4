"""The native queries for tools (issue 16): one JSON document from every query and from --nowait submits,
and `-q jobs` narrowed by user, ids or names, with the columns asked for (-F)."""
from __future__ import annotations

import json

import pytest
from cluster import LocalCluster


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(nodes={"n1": {"cpus": 1, "memory": 2000}}) as c:
        yield c


def _ok(c: LocalCluster, *args: str) -> str:
    r = c.grun(*args)
    assert r.returncode == 0 and not r.stderr, (args, r)
    return r.stdout.decode()


def test_every_query_and_a_nowait_submit_print_one_json_document(cluster):
    running = json.loads(_ok(cluster, "--nowait", "--json", "-j", "sleeper", "sleep", "60"))["id"]
    queued = json.loads(_ok(cluster, "--nowait", "--json", "--array", "1-3", "sleep", "60"))["ids"]
    try:
        assert isinstance(running, int) and len(queued) == 1
        jobs = json.loads(_ok(cluster, "-q", "jobs", "--json"))
        assert {j["id"] for j in jobs} >= {running, queued[0]} and all("env" not in j for j in jobs)
        assert next(j for j in jobs if j["id"] == running)["name"] == "sleeper"
        status = json.loads(_ok(cluster, "-q", "status", "--json"))
        assert [n["name"] for n in status["nodes"]] == ["n1"] and status["warnings"] == []
        why = json.loads(_ok(cluster, "-q", "why", "--json", str(queued[0])))
        assert why["id"] == queued[0] and "cpu" in why["why"], why
        conf = json.loads(_ok(cluster, "-q", "conf", "--json"))
        assert conf["keys"]["heartbeat"] == {"value": 1, "origin": f"{cluster.client_config}:3"}, conf["keys"]["heartbeat"]
        assert conf["file"] == cluster.client_config
        history = json.loads(_ok(cluster, "-q", "history", "--json"))
        assert isinstance(history, list)
    finally:
        cluster.grun("-k", str(running), str(queued[0]))


def test_jobs_by_user_id_or_name_with_the_columns_asked_for(cluster):
    a = json.loads(_ok(cluster, "--nowait", "--json", "-j", "first", "sleep", "60"))["id"]
    b = json.loads(_ok(cluster, "--nowait", "--json", "-r", "7", "sleep", "60"))["id"]
    try:
        lines = _ok(cluster, "-q", "jobs", "-F", "id,state,name,priority", "first", str(b)).splitlines()
        assert lines[0].split() == ["ID", "STATE", "NAME", "PRIORITY"]
        assert [line.split() for line in lines[1:]] == [[str(a), "running", "first", "20"], [str(b), "queued", "-", "7"]]
        assert _ok(cluster, "-q", "jobs", "--user", "nobody").splitlines()[1:] == []
        assert len(_ok(cluster, "-q", "jobs", str(a)).splitlines()) == 2
        r = cluster.grun("-q", "jobs", "-F", "id,colour")
        assert r.returncode == 2 and r.stderr.decode().count("\n") == 1 and "no field 'colour'" in r.stderr.decode()
    finally:
        cluster.grun("-k", str(a), str(b))


def test_a_waiting_grun_shows_one_self_updating_line_on_a_terminal_and_none_elsewhere(cluster):
    import os
    import pty
    import re
    import subprocess
    import sys
    import time
    blocker = cluster.client().submit(["sleep", "60"]).id
    try:
        main, tty = pty.openpty()
        waiting = subprocess.Popen([sys.executable, "-m", "grun.cli", "echo", "ran"], env=dict(cluster.env, COLUMNS="200"),
                                   stdout=subprocess.PIPE, stderr=tty)
        os.close(tty)
        plain = cluster.popen("echo", "ran")  # stderr a pipe: no progress
        verbose = cluster.popen("-v", "echo", "ran")
        time.sleep(5)
        cluster.client().kill([blocker])
        assert waiting.wait(30) == 0 and waiting.stdout.read() == b"ran\n"
        shown = b""
        while chunk := _read(main):
            shown += chunk
        text = shown.decode()
        assert re.search(r"\r\x1b\[Kgrun: job \d+ queued: [012] ahead; needs 1 cpu, 100 MB; most room: n1 \(0 of 1 "
                         rf"cpus free, running job {blocker}\)", text), text
        assert text.endswith("\r\x1b[K"), "the line is erased when the job starts"
        assert plain.communicate(timeout=30) == (b"ran\n", b"")
        out, err = verbose.communicate(timeout=30)
        assert out == b"ran\n" and re.search(rb"^grun: job \d+ queued: [012] ahead; needs", err, re.MULTILINE), err
    finally:
        cluster.client().kill([blocker])


def _read(fd: int) -> bytes:
    import os
    import select
    if not select.select([fd], [], [], 0.5)[0]:
        return b""
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the other side is closed
        return b""
