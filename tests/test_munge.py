"""Issue 15's `auth: munge` (grun/munge.py) and `private_queries`, with private munged daemons (each with its own
key, socket, pid, log and seed in a temp dir; never /etc/munge or the system's munged) and real users: a user's
job runs as the uid MUNGE vouches for, with the groups the verifying side's account database gives and the umask
the credential carries; a forged or replayed credential and a node whose munged holds another key are refused;
with private_queries a user's queries show their own jobs only, while the counts stay global."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import psutil
import pytest
import test_auth
from cluster import LocalCluster, tls_ca, tls_signed
from test_auth import _answer, _as_themselves, _as_user, _fuzz, _log
from util import wait_for

from grun import auth, config, munge, wire
from grun.core.jobs import lent_only_inside, validate_spec
from grun.files import read_int

users, shared_dir = test_auth.users, test_auth.shared_dir  # (its fixtures: real users, a directory for all)
MUNGED = shutil.which("munged") or "/usr/sbin/munged"


def _start_munged(root: str, name: str) -> str:
    """A munged of our own with a fresh key; its directory (socket: DIR/socket, pid: DIR/pid)."""
    if not os.path.exists(MUNGED) or os.geteuid():
        pytest.skip("needs MUNGE (Debian: munge) and root: a munged of our own, real users (CI runs as root)")
    where = os.path.join(root, name)
    os.makedirs(where)
    os.chmod(where, 0o755)  # (munged wants its socket's directory searchable by all)
    with open(os.open(os.path.join(where, "key"), os.O_WRONLY | os.O_CREAT, 0o400), "wb") as f:
        f.write(os.urandom(1024))
    r = subprocess.run([MUNGED, *(f"--{opt}-file={where}/{opt}" for opt in ("key", "pid", "log", "seed")),
                        f"--socket={where}/socket"], capture_output=True, text=True, timeout=30)
    if r.returncode:
        pytest.skip(f"munged cannot run here: {r.stderr.strip()}")
    return where


@pytest.fixture(scope="module")
def munged():
    """This cluster's munged and another with another key; this process's credentials come from the first."""
    root = tempfile.mkdtemp(prefix="grun-munge-")
    os.chmod(root, 0o755)
    started = []
    try:
        for name in ("good", "other"):
            started.append(_start_munged(root, name))
        munge.socket = os.path.join(started[0], "socket")
        munge._libmunge()  # (loaded before a test's child drops root)
        yield [os.path.join(d, "socket") for d in started]
    finally:
        munge.socket = None
        for where in started:
            if (pid := read_int(os.path.join(where, "pid"))) and psutil.pid_exists(pid):
                os.kill(pid, signal.SIGTERM)
                wait_for(lambda: not psutil.pid_exists(pid), timeout=10)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(munged):
    keys = {"auth": "munge", "munge_socket": munged[0]}
    c = LocalCluster(nodes={"n1": {"cpus": 2, "memory": 2000, **keys}},
                     master_extra={**keys, "private_queries": True, "allow_root": False})
    c.client_config = c.write_config("client", {"services": "exec", **keys})
    with c:
        yield c


def test_a_credential_says_who_made_it_and_is_good_once(munged, users, shared_dir):
    """auth.who over MUNGE: alice's uid and gid from munged, her groups from our account database, her umask
    from the payload; the same credential again, another connection's, a forged one or one of another
    munged key: nobody."""
    (alice, _), group = users
    code, out = _as_user(alice, {"PATH": os.environ["PATH"]}, lambda: auth.proof("conn"), umask=0o027)
    cred = out.strip()
    assert code == 0 and cred.startswith("MUNGE:"), out
    who = auth.who(cred, "conn")
    assert who == {"uid": alice.pw_uid, "gid": alice.pw_gid, "umask": 0o027, "user": alice.pw_name,
                   "groups": os.getgrouplist(alice.pw_name, alice.pw_gid), "job": None} and group in who["groups"], who
    lent_only_inside(req := validate_spec({"cmd": ["true"], "parent": 5}), who)  # (munged vouches for no job)
    said = "GRUN_JOB_ID 5: this grun does not run inside job 5: nothing lent"
    assert (req["parent"], req["warnings"]) == (None, [said]), req
    assert auth.who(cred, "conn") is None  # a replay
    assert auth.who(auth.proof("conn"), "conn") == auth.CLUSTER  # root (the daemons' own user too)
    assert auth.who(auth.proof("conn"), "another connection") is None
    mine = auth.proof()
    middle = len(mine) // 2
    assert auth.who(mine[:middle] + ("A" if mine[middle] != "A" else "B") + mine[middle + 1:]) is None  # forged
    munge.socket = munged[1]
    try:
        foreign = auth.proof()
    finally:
        munge.socket = munged[0]
    for given in (foreign, None, "", "MUNGE:", "MUNGE:" + "A" * 10_000, "hello", 42, "MUNGE:\u00e9:"):
        assert auth.who(given) is None, given


def test_users_run_as_munge_says_and_see_only_their_own_jobs(cluster, users, shared_dir):
    (alice, bob), tmp_path = users[0], shared_dir
    env = _as_themselves(users, tmp_path, cluster.client_config)  # (as with auth: secret)

    # private_queries: alice's and bob's jobs, one running and one finished each
    ids = {}
    for user in (alice, bob):
        assert _as_user(user, env, ["true"], cwd=str(tmp_path))[0] == 0
        code, out = _as_user(user, env, ["--nowait", "-j", f"s{user.pw_name}", "sleep", "60"], cwd=str(tmp_path))
        assert code == 0, out
        ids[user.pw_name] = out.split()[-1]
    wait_for(lambda: sum(n["running"] for n in cluster.client().nodes()) == 2, timeout=20)
    mine, hers = ids[bob.pw_name], ids[alice.pw_name]
    code, out = _as_user(bob, env, ["--nowait", "-c", "2", "true"], cwd=str(tmp_path))
    code, why = _as_user(bob, env, ["why", out.split()[-1]], cwd=str(tmp_path)) if code == 0 else (code, out)
    assert code == 0 and "running 2 jobs" in why and "running job" not in why, why  # no job id of alice's (nor his)
    assert _as_user(bob, env, ["-k", out.split()[-1]], cwd=str(tmp_path))[0] == 0
    for argv in (["-q", "jobs", "--json"], ["-q", "history", "--json"]):
        code, out = _as_user(bob, env, argv, cwd=str(tmp_path))
        shown = json.loads(out)
        assert code == 0 and shown and {j["user"] for j in shown} == {bob.pw_name}, (argv, out)
    code, out = _as_user(bob, env, ["-q", "jobs"], cwd=str(tmp_path))
    assert mine in out and alice.pw_name not in out, out
    for argv in (["why", hers], ["-q", "why", hers, "--json"], ["--attach", hers], ["-q", "wait", hers]):
        code, out = _as_user(bob, env, argv, cwd=str(tmp_path))
        assert code == 1 and f"no such job {hers}" in out and len(out.splitlines()) == 1, (argv, out)
    code, out = _as_user(bob, env, ["why", f"s{alice.pw_name}"], cwd=str(tmp_path))  # (root and admins: anyone's)
    assert (code, out) == (1, f"grun: no job named 's{alice.pw_name}'\n"), out
    before = cluster.client().job(int(hers))
    for argv in (["-k", hers], ["-e", "hold", hers], ["-e", "resume", hers], ["-e", "priority=1", hers]):
        code, out = _as_user(bob, env, argv, cwd=str(tmp_path))  # as for an id nobody has: not who owns it
        assert code == 1 and out.strip() == f"grun: no such job {hers}", (argv, out)
    code, out = _as_user(bob, env, ["--nowait", "--afterok", hers, "true"], cwd=str(tmp_path))
    assert code == 1 and out.strip() == f"grun: --afterok: no job {hers}", out  # (was: "job N is alice's")
    after = cluster.client().job(int(hers))
    assert (after["state"], after["priority"]) == ("running", before["priority"]), after
    code, out = _as_user(bob, env, ["-v", "-j", f"s{alice.pw_name}", "-W", "--nowait", "true"], cwd=str(tmp_path))
    assert code == 0 and f"job {hers}" not in out and out.split()[-1] != hers, out  # names are per user: hers is
    assert _as_user(bob, env, ["-k", out.split()[-1]], cwd=str(tmp_path))[0] == 0  # free for his own (queued: killed)
    code, out = _as_user(bob, env, ["-q", "status", "--json"], cwd=str(tmp_path))
    assert code == 0 and sum(n["running"] for n in json.loads(out)["nodes"]) == 2, out  # counts stay global
    everyone = {j["user"] for j in cluster.client().jobs()} | {j["user"] for j in cluster.client().history(10)}
    assert {alice.pw_name, bob.pw_name} <= everyone  # root (the cluster) sees all
    code, out = _as_user(alice, env, ["-k", hers], cwd=str(tmp_path))
    assert code == 0 and _as_user(bob, env, ["-k", mine], cwd=str(tmp_path))[0] == 0


def test_forged_and_replayed_credentials_are_refused_and_others_served_on(cluster, munged):
    import Pyro5.api
    import Pyro5.errors
    master = f"PYRO:grun.master@127.0.0.1:{cluster.port}"
    used = auth.proof()
    with Pyro5.api.Proxy(master) as p:
        p._pyroHandshake = used
        p._pyroBind()  # first use: accepted
    munge.socket = munged[1]
    try:
        foreign = auth.proof()
    finally:
        munge.socket = munged[0]
    fresh = auth.proof()
    forged = fresh[:40] + ("A" if fresh[40] != "A" else "B") + fresh[41:]
    for given in (used, foreign, forged, "hello"):
        with Pyro5.api.Proxy(master) as p, pytest.raises(Pyro5.errors.CommunicationError, match="not authorized"):
            p._pyroHandshake = given
            p._pyroBind()
    wait_for(lambda: "Replayed credential (error 17, a replay)" in _log(cluster, "master"), timeout=5)
    import random  # and test_auth's fuzz, with MUNGE credentials in its handshakes: refused, nobody dies
    rng, uri = random.Random(15), next(n["uri"] for n in cluster.client().nodes() if n["name"] == "n1")
    answers = [_answer(("127.0.0.1", (cluster.port, int(uri.rsplit(":", 1)[1]))[i % 2]), _fuzz(rng)) for i in range(200)]
    # (refused with a word, or closed: how many get the word before the close depends on timing; the word itself
    # is checked above)
    assert all(got == b"" or got.startswith(b"PYRO") and got[6] == wire._CONNECTFAIL for got in answers)
    assert cluster.procs["master"].poll() is None and cluster.procs["n1"].poll() is None
    r = cluster.grun("--nowait", "true")
    assert r.returncode == 1 and b"allow_root" in r.stderr  # root's own: served (and its rules applied)


def test_munge_with_tls_serves_a_user_end_to_end(munged, users, shared_dir):
    """A user (who cannot read the host's TLS key: no certificate) with a MUNGE credential, over TLS: Pyro5 and
    the output side channel."""
    (alice, _), tmp_path = users[0], shared_dir
    root = tempfile.mkdtemp(prefix="grun-munge-tls-")
    keys = {"auth": "munge", "munge_socket": munged[0], "tls": tls_signed(root, "host", tls_ca(root, "ca"))}
    os.chmod(root, 0o755)  # (the CA's certificate is for all to read; the keys are 0600)
    auth.use(None, tls=keys["tls"])  # (this process's clients speak TLS too)
    try:
        with LocalCluster(nodes={"n1": {"cpus": 1, "memory": 1000, **keys}}, root=root, master_extra=keys) as c:
            shutil.copy(c.write_config("client", {"services": "exec", **keys}), tmp_path / "tls.conf")
            env = {"PATH": os.environ["PATH"], "GRUN_CONF": str(tmp_path / "tls.conf"), "HOME": str(tmp_path)}
            code, out = _as_user(alice, env, ["sh", "-c", "id -un; exit 3"], cwd=str(tmp_path))
            assert (code, out) == (3, f"{alice.pw_name}\n"), out
    finally:
        auth.use(None)
        shutil.rmtree(root, ignore_errors=True)


def test_a_grun_with_munge_imports_nothing_heavy(cluster):
    from test_cli_fast import _probe
    r, heavy = _probe(cluster, "-q", "jobs")  # (root's jobs need allow_root here: a query makes the same credential)
    assert (r.returncode, heavy) == (0, []), r.stderr  # (ctypes is not heavy: 1.2 ms, measured)


def test_a_node_without_a_valid_credential_cannot_register(cluster, munged):
    cluster.node_specs["n2"] = {"auth": "munge", "munge_socket": munged[1]}  # another key
    cluster.start_node("n2", wait=False)
    try:
        log = os.path.join(cluster.root, "n2", "grun.log")
        wait_for(lambda: os.path.exists(log) and " refused this node: " in _log(cluster, "n2"), timeout=20)
        assert "n2" not in {n["name"] for n in cluster.client().nodes()}
    finally:
        cluster.kill("n2")
        del cluster.node_specs["n2"]


def test_without_munged_a_client_and_a_daemon_say_so_in_one_line(cluster, tmp_path):
    conf = cluster.write_config("no-munged", {"services": "exec", "auth": "munge", "munge_socket": str(tmp_path / "no")})
    r = cluster.grun("-q", "jobs", env=dict(cluster.env, GRUN_CONF=conf))
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and b"cannot get a MUNGE credential" in r.stderr, r
    r = subprocess.run([sys.executable, "-m", "grun.daemon", conf], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "cannot get a MUNGE credential" in r.stderr, r.stderr


def test_config_keys(tmp_path):
    conf = tmp_path / "grun.conf"
    conf.write_text("master: 127.0.0.1:7000\nauth: munge\nprivate_queries: yes\n")
    cfg = config.load_config(str(conf))
    assert (cfg.auth, cfg.munge_socket, cfg.private_queries) == ("munge", "/run/munge/munge.socket.2", True)
    assert munge.socket == cfg.munge_socket and auth.required()  # this process presents MUNGE credentials now
    conf.write_text("master: 127.0.0.1:7000\nauth: munge\nmunge_socket: munge.sock\n")
    with pytest.raises(config.ConfigError, match="munge_socket.*absolute"):
        config.load_config(str(conf))
    assert config.load_config(None).private_queries is False and munge.socket is None
    auth.use(None)
