"""Daemons from a config file (issue 2, point 2): `grun -d` starts the configured services in the
background (pid file, log file), `grun -d -F` in the foreground, `grun -d -k` stops them, `grun-node`
runs the exec service in the foreground; unset keys get guessed defaults."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
import yaml
from cluster import free_port
from util import wait_for

from grun.client import Client

NODE_MAIN = "import sys; from grun.cli import node_main; sys.exit(node_main())"


@pytest.fixture
def setup(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRUN_")}
    procs: list[subprocess.Popen] = []
    pid_files: list[str] = []

    def conf(name: str, **keys) -> str:
        path = tmp_path / f"{name}.conf"
        path.write_text(yaml.safe_dump({"master": f"127.0.0.1:{port}", "bind": "127.0.0.1",
                                        "spool": str(tmp_path / name), "heartbeat": 1, "allow_root": True, **keys}))
        pid_files.append(str(tmp_path / name / "grun.pid"))
        return str(path)

    def grun(*args):
        return subprocess.run([sys.executable, "-m", "grun.cli", *args], env=env, capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=60)

    def popen(argv):
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    class S:
        pass
    s = S()
    s.port, s.conf, s.grun, s.popen, s.tmp = port, conf, grun, popen, tmp_path
    s.client = Client("127.0.0.1", port, connect_wait=10)
    yield s
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()
    for path in pid_files:  # background daemons this test started, by their pid files
        try:
            pid = int(open(path).read().split()[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass


def _nodes_up(client) -> dict:
    return {n["name"]: n for n in client.nodes() if n["up"]}


def test_background_master_foreground_nodes(setup):
    s = setup
    master_conf = s.conf("head", services="queue", log_file="head.log", hostname="head")
    r = s.grun("-C", master_conf, "-d")
    assert r.returncode == 0, r.stderr
    assert r.stderr.decode().startswith("grun: started services queue (pid ")
    pid = int(open(s.tmp / "head" / "grun.pid").read())
    assert f"pid {pid}" in r.stderr.decode() and psutil.pid_exists(pid)
    assert s.client.call("ping") == "grun.master"
    assert (s.tmp / "head" / "head.log").exists()

    again = s.grun("-C", master_conf, "-d")
    assert again.returncode != 0 and b"already running" in again.stderr
    assert b"Traceback" not in again.stderr

    # grun-node: the exec service in the foreground, as systemd runs it
    node_conf = s.conf("n1", services="exec", hostname="n1", cpus=2, memory="1G")
    node = s.popen([sys.executable, "-c", NODE_MAIN, "-C", node_conf])
    wait_for(lambda: "n1" in _nodes_up(s.client), 20, what="grun-node to register")
    assert (_nodes_up(s.client)["n1"]["cpus"], _nodes_up(s.client)["n1"]["memory"]) == (2, 1024)
    r = s.grun("-C", node_conf, "printenv", "GRUN_NODE")
    assert (r.returncode, r.stdout) == (0, b"n1\n"), r.stderr
    node.send_signal(signal.SIGTERM)
    assert node.wait(15) == 0

    # grun -d -F: the configured services in the foreground; unset cpus and memory are guessed
    guessed_conf = s.conf("n2", services="exec", hostname="n2")
    fg = s.popen([sys.executable, "-m", "grun.cli", "-C", guessed_conf, "-d", "-F"])
    wait_for(lambda: "n2" in _nodes_up(s.client), 20, what="grun -d -F to register its node")
    n2 = _nodes_up(s.client)["n2"]
    assert n2["cpus"] == psutil.cpu_count(logical=True)
    assert n2["memory"] == psutil.virtual_memory().total // 2 ** 20
    r = s.grun("-C", guessed_conf, "-H", "n2", "printenv", "GRUN_NODE")
    assert (r.returncode, r.stdout) == (0, b"n2\n"), r.stderr
    fg.send_signal(signal.SIGTERM)
    assert fg.wait(15) == 0

    r = s.grun("-C", master_conf, "-d", "-k")
    assert r.returncode == 0 and b"stopped" in r.stderr  # (once its pid is gone, not its pid file: QA saw seconds)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not (s.tmp / "head" / "grun.pid").exists()
    r = s.grun("-C", master_conf, "-d", "-k")
    assert r.returncode == 0 and b"not running" in r.stderr


# ---- reload through the table of keys (issue 10) -----------------------------------------------------

# A new value for every key a reload applies; test_reload_covers_every_key keeps it in step with KEYS.
NEW_VALUES = {"cpus": 3, "memory": "2G", "log_level": "debug", "node_timeout": "2m", "heartbeat": 2,
              "requeue": False, "min_free_disk": 1, "output_keep": "2h", "resources": {"gpu": 1},
              "labels": {"os": "x"}, "default_cpus": 0.5, "default_memory": "200M", "default_priority": 10,
              "reserve_after": "1m", "hard_factor": 2, "ulimit": {"nofile": 4096}, "count_outside_load": False,
              "min_free_memory": "200M", "kill_grace": "10s", "deps_other_users": False, "default_retries": 2,
              "allow_root": False, "admins": ["alice"], "limits": {"user": {"jobs": 100}},
              "plugins": ["grun.gpu:GpuPlugin"], "spool_max": "2G", "disk_warn": "5%", "wrap": "nice {cmd}",
              "rules": [{"if": "cpus > 2", "warn": "many cpus"}]}
NEW_VALUES.update(learn=False, learn_memory_factor="off", learn_runs=10)  # learned requests (issue 11)
NEW_VALUES.update(nfs_sync=False)  # NFS and the working directory (issue 14)
NEW_VALUES.update(stage="never", fetch_path=["/data"], stage_wait="10m")  # staging (issue 14)
NEW_VALUES.update(private_queries=True)  # issue 15
NEW_VALUES.update(fair_share=False)  # fair share at equal priority (QA)
NEW_VALUES.update(input_wait="2m")  # a job's input nobody feeds ends after this
NEEDS_RESTART = {"hostname": "n1-renamed", "bind": "localhost"}  # changed too: each must be reported


def test_reload_covers_every_key():
    from grun.config import KEYS
    assert set(NEW_VALUES) == {name for name, key in KEYS.items() if key.reload}
    assert all(not KEYS[name].reload for name in NEEDS_RESTART)


def _reload_everything(s) -> tuple[set, set, str]:
    """Start a daemon with both services from a config with a misspelt key, reload it with every key
    changed; returns (the keys logged as applied, those logged as needing -R, the whole log)."""
    keys = {"services": "queue,exec", "hostname": "n1", "cpus": 2, "memory": "1G", "log_file": "grun.log",
            "memroy": "2G"}
    conf = s.conf("both", **keys)
    r = s.grun("-C", conf, "-d")
    assert r.returncode == 0, r.stderr
    def warning():
        line = open(conf).read().splitlines().index("memroy: 2G") + 1
        return f"{conf}:{line}: unknown key 'memroy' ignored; did you mean 'memory'?"
    assert f"grun: warning: {warning()}\n" in r.stderr.decode()
    wait_for(lambda: "n1" in _nodes_up(s.client), 20, what="the node to register")
    log_path = s.tmp / "both" / "grun.log"
    assert warning() in log_path.read_text()

    s.conf("both", **{**keys, **NEW_VALUES, **NEEDS_RESTART})
    r = s.grun("-C", conf, "-d", "-r")  # the daemon's verdict, read in its log: its warnings, then what it applied
    said = r.stderr.decode().splitlines()
    last = re.fullmatch(r"grun: the daemon \(pid \d+\) reloaded \S+: (?:applied (.*)|nothing to apply)", said[-1])
    assert r.returncode == 0 and last and f"grun: reload: {warning()}" in said, said  # (the reload warns again)
    applied = set(re.findall(r"(?:^|; )(\w+): ", last.group(1) or ""))
    restart = next(filter(None, (re.fullmatch(r"grun: reload: (.*) changed: applied at the next restart \(grun -d -R\)", line)
                                 for line in said)), None)
    log = log_path.read_text()
    return applied, set(restart.group(1).split(", ")) if restart else set(), log


def test_reload_reports_every_changed_key(setup):
    """Each changed key is either applied or logged as needing `grun -d -R`: none is ignored in silence
    (hard_factor, labels, resources, ulimit, default_priority, reserve_after, count_outside_load were)."""
    applied, restart, log = _reload_everything(setup)
    assert set(NEEDS_RESTART) <= restart
    assert applied | restart == set(NEW_VALUES) | set(NEEDS_RESTART), log
    assert not applied & restart


def test_reload_applies_every_reloadable_key(setup):
    """With Master.reconfigure and Node.reconfigure taking every key of their service, a reload needs
    a restart only for the keys that say so, and the master sees the node's new size."""
    applied, restart, log = _reload_everything(setup)
    assert restart == set(NEEDS_RESTART) and applied == set(NEW_VALUES), log
    wait_for(lambda: (_nodes_up(setup.client).get("n1", {}).get("cpus"), _nodes_up(setup.client)["n1"]["memory"])
             == (3, 2048), 20, what="the node's new cpus and memory")


def test_a_reload_that_changes_the_secret_keeps_the_running_one_until_a_restart(setup):
    """The secret is among the keys a reload reports as needing -R: the daemon goes on checking the one it
    started with (reading the new file switched it at once, and every client of the running cluster was refused)."""
    s = setup
    for name in ("a", "b"):
        (s.tmp / f"secret.{name}").write_text(f"secret {name} " * 4)
        os.chmod(s.tmp / f"secret.{name}", 0o600)
    keys = {"services": "queue,exec", "hostname": "n1", "cpus": 2, "memory": "1G", "log_file": "grun.log",
            "auth": "secret", "count_outside_load": False}  # (a loaded machine: its cpus)
    conf = s.conf("both", **keys, secret_file=str(s.tmp / "secret.a"))
    client_conf = s.conf("client", **keys, secret_file=str(s.tmp / "secret.a"))
    assert s.grun("-C", conf, "-d").returncode == 0
    log_path = s.tmp / "both" / "grun.log"
    r = s.grun("-C", client_conf, "echo", "before")
    assert (r.returncode, r.stdout) == (0, b"before\n"), r.stderr
    s.conf("both", **keys, secret_file=str(s.tmp / "secret.b"))
    assert s.grun("-C", conf, "-d", "-r").returncode == 0
    wait_for(lambda: "reloaded" in log_path.read_text(), 20, what="the reload")
    assert re.search(r"reload: .*secret_file.* applied at the next restart", log_path.read_text())
    r = s.grun("-C", client_conf, "echo", "after")
    assert (r.returncode, r.stdout) == (0, b"after\n"), r.stderr


def test_a_reload_says_the_daemons_verdict_at_any_log_level(setup):
    """With log_level: warning the daemon did not log its "reloaded" line: `grun -d -r` said nothing of it and exited 0
    even when the daemon refused the reload (a plugin the client imports but the daemon cannot make)."""
    s, keys = setup, {"services": "queue", "log_file": "grun.log", "log_level": "warning"}
    conf = s.conf("quiet", **keys)
    assert s.grun("-C", conf, "-d").returncode == 0
    r = s.grun("-C", conf, "-d", "-r")
    assert r.returncode == 0 and re.fullmatch(rb"grun: the daemon \(pid \d+\) reloaded \S+: nothing to apply\n", r.stderr)
    s.conf("quiet", **keys, plugins=["grun.plugins:Plugin"])  # (its constructor takes two arguments, not the config)
    r = s.grun("-C", conf, "-d", "-r")
    assert r.returncode == 1 and b"refused the reload: plugin 'grun.plugins:Plugin'" in r.stderr, r.stderr
    assert s.grun("-C", conf, "-d", "-k").returncode == 0
    conf = s.conf("quiet", **{**keys, "log_file": None})
    assert s.grun("-C", conf, "-d").returncode == 0
    r = s.grun("-C", conf, "-d", "-r")
    assert r.returncode == 0 and r.stderr.endswith(b"; its log goes to its stderr\n"), r.stderr
    assert s.grun("-C", conf, "-d", "-k").returncode == 0


def test_a_daemon_that_cannot_start_says_why_in_one_line(setup, tmp_path):
    """`grun -d` returned "started" once the daemon's pid file named it, before it bound its port: a second master
    on a port in use said it started and exited 0 (the log alone said why). Now it waits for the daemon to serve
    and says why it could not, naming the address; a spool it cannot make is one line from every starter."""
    first = setup.grun("-C", setup.conf("m1", services="queue"), "-d")
    assert first.returncode == 0, first.stderr
    second = setup.grun("-C", setup.conf("m2", services="queue"), "-d")
    assert second.returncode == 1 and b"started" not in second.stderr, second.stderr
    assert re.fullmatch(rb"grun: the daemon exited at once \(code 1\): cannot start: \[Errno 98\] Address already in "
                        rb"use: 127\.0\.0\.1:%d \(see \S+\)\n" % setup.port, second.stderr), second.stderr
    (tmp_path / "file").write_text("")
    bad = setup.conf("bad", services="exec", spool=str(tmp_path / "file" / "spool"))  # under a regular file
    for argv in ([sys.executable, "-m", "grun.daemon", bad], [sys.executable, "-c", NODE_MAIN, "-C", bad]):
        r = subprocess.run(argv, capture_output=True, timeout=60)
        assert r.returncode == 1 and r.stderr.count(b"\n") == 1 and b"cannot start: [Errno 20] Not a directory" in \
            r.stderr, r.stderr


def test_a_daemon_slower_to_start_than_its_starter_waits_still_starts(setup):
    """The starter stops waiting (here at once) while the daemon still loads; the daemon's word that it serves,
    written to a pipe nobody reads any more, must not end it (EPIPE once did: no daemon left, even after a -R)."""
    from grun.config import load_config
    from grun.daemon import DaemonError, running_pid, start_background, stop
    cfg = load_config(setup.conf("slow", services="queue"), use_auth=False)
    with pytest.raises(DaemonError, match="did not start within 0 s"):
        start_background(cfg, wait=0.0)
    try:
        wait_for(setup.client.reachable, 20, what="the daemon to serve")
        wait_for(lambda: running_pid(cfg), 5)
        assert "cannot start" not in open(cfg.log_file).read()
    finally:
        stop(cfg)


def test_a_daemon_refuses_a_spool_others_could_write_to(setup, tmp_path):
    """A spool another user owns or may write to (or a directory above it, but a sticky one) was used as it was: the
    files a root node acts on (job.json, pid) were anyone's to change. One line, as sshd's StrictModes."""
    def start(spool):
        return subprocess.run([sys.executable, "-m", "grun.daemon", setup.conf(spool.name, services="exec",
                                                                               spool=str(spool))],
                              capture_output=True, timeout=60)
    (group_writable := tmp_path / "open").mkdir(mode=0o775)
    group_writable.chmod(0o775)
    (shared := tmp_path / "shared").mkdir()
    shared.chmod(0o777)
    cases = [(shared / "new", "shared is writable by others")]
    if os.geteuid() == 0:  # (a group not our private one: our own's write passes, as Debian's StrictModes, test_personal)
        os.chown(group_writable, -1, 65534)
        cases.append((group_writable, "open is writable by others (mode 775)"))
        (theirs := tmp_path / "theirs").mkdir()
        os.chown(theirs, 65534, 65534)
        cases.append((theirs, "theirs is owned by uid 65534"))
    for spool, why in cases:
        r = start(spool)
        assert r.returncode == 1 and r.stderr.count(b"\n") == 1 and why.encode() in r.stderr, r.stderr
    shared.chmod(0o1777)  # (as /tmp: nobody else may rename what is ours in it)
    setup.popen([sys.executable, "-m", "grun.daemon", setup.conf("new", services="exec", spool=str(shared / "new"))])
    wait_for(lambda: os.path.exists(shared / "new" / "grun.pid"), 20, what="the node to start")


def test_a_node_the_master_refuses_fails_its_start_and_is_logged_once_a_minute(setup):
    """QA: `grun -d` of a node whose secret is not the master's said "started" and exited 0; the node's log hinted at a
    personal cluster; the master logged "refused a connection" once a second (3,600 lines an hour)."""
    s, keys = setup, {"log_file": "grun.log", "auth": "secret"}
    for name in ("a", "b"):
        (s.tmp / f"secret.{name}").write_text(f"secret {name} " * 4)
        os.chmod(s.tmp / f"secret.{name}", 0o600)
    assert s.grun("-C", s.conf("m", services="queue", **keys, secret_file=str(s.tmp / "secret.a")), "-d").returncode == 0
    node = s.conf("n3", services="exec", hostname="n3", **keys, secret_file=str(s.tmp / "secret.b"))
    r = s.grun("-C", node, "-d")
    assert r.returncode == 1 and re.fullmatch(
        rb"grun: started \(pid \d+\), but the master at 127\.0\.0\.1:%d refused this node: not authorized: no valid "
        rb"proof of the cluster secret or MUNGE credential: is this host's secret_file \(or auth:\) the master's\?; "
        rb"it retries each second \(grun -d -k stops it; see \S+\)\n" % s.port, r.stderr), r.stderr
    time.sleep(2.5)  # (it retried twice)
    assert (s.tmp / "m" / "grun.log").read_text().count("refused a connection from 127.0.0.1:") == 1
    assert s.grun("-C", node, "-d", "-k").returncode == 0


def test_grun_d_says_the_configs_warnings_as_its_log_and_q_conf_do(setup):
    """QA: a rule's typo (a number compared with a word, a user nobody is) was in the log and `-q conf` but `grun -d`
    said nothing (README: it warns); a limit on "cpuz" was in `grun -q status` only, without "did you mean"."""
    s = setup
    conf = s.conf("w", services="queue", log_file="grun.log", limits={"user": {"cpuz": 4, "gpus": 1}},
                  rules=[{"if": 'cpus > "two"', "warn": "x"}, {"if": 'user == "nobodyhere"', "warn": "y"}])
    cpuz = "limits: user: 'cpuz' limits a resource of that name, not one of jobs, cpus, memory; did you mean 'cpus'?"
    said = [cpuz, "cpus > 'two' compares a number with a word", "no user 'nobodyhere' on this host"]
    r = s.grun("-C", conf, "-d")
    assert r.returncode == 0 and all(text in r.stderr.decode() for text in said) and b"gpus" not in r.stderr, r.stderr
    assert cpuz in (s.tmp / "w" / "grun.log").read_text() and cpuz in s.grun("-C", conf, "-q", "conf").stdout.decode()
    assert s.grun("-C", conf, "-d", "-k").returncode == 0


def test_a_reload_says_its_values_as_the_config_writes_them_and_logs_a_refusal(setup):
    """QA: "applied admins=frozenset({'root'}), limits={'user': {'jobs': 4.0}}"; "cpus changed but no service of this
    daemon reads them" (read as a contradiction of the node's daemon); a `grun -d -r` of a bad rule: no log line."""
    s, keys = setup, {"services": "queue", "log_file": "grun.log"}
    conf = s.conf("r", **keys)
    assert s.grun("-C", conf, "-d").returncode == 0
    s.conf("r", **keys, allow_root=False, admins=["root"], limits={"user": {"jobs": 4}}, cpus=3)
    r = s.grun("-C", conf, "-d", "-r")
    assert r.returncode == 0 and re.sub(r"pid \d+", "pid N", r.stderr.decode()).splitlines()[-2:] == [
        "grun: reload: cpus changed: for the exec service, which this daemon does not run",
        f"grun: the daemon (pid N) reloaded {conf}: applied allow_root: false; admins: [root]; limits: {{user: {{jobs: 4}}}}"
    ], r.stderr
    s.conf("r", **keys, rules=[{"if": "cpus >", "warn": "x"}])
    r = s.grun("-C", conf, "-d", "-r")
    assert r.returncode == 1 and b"refused the reload: " in r.stderr and b"keeping the running config" in r.stderr
    assert "keeping the running config" in (s.tmp / "r" / "grun.log").read_text()
    s.conf("r", **keys, spool="r")  # (review: a bad key no reload applies took its default: another daemon's spool)
    r = s.grun("-C", conf, "-d", "-r")
    assert r.returncode != 0 and r.stderr.count(b"\n") == 1 and b"spool" in r.stderr and b"absolute" in r.stderr, r.stderr
    assert s.grun("-C", s.conf("r", **keys), "-d", "-k").returncode == 0
