"""Issue 15: who may use a cluster. A personal cluster serves its owner only (a real second local user is
refused); `auth: secret` clusters refuse, in the Pyro5 handshake and on the output side channel, any peer
without a proof of the secret and keep serving the others; jobs as root need `allow_root` on a configured
cluster; an unauthenticated cluster says so in its log. Plus grun.auth's proofs, as pure unit tests."""
from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time

import psutil
import pytest
import yaml
from cluster import LocalCluster, account, free_port
from test_wire import SERVER, TREE, allowed_minors
from util import wait_for

# (cli, client, verbs: loaded before a child drops root: it could not read them under /root)
from grun import auth, cli, client, compat, compat_sge, compat_slurm, config, make, registry, shell, stream, verbs, wire  # noqa: F401
from grun.core.master_state import MasterState

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates a real second user (CI runs as root)")


# ---- grun.auth, pure ------------------------------------------------------------------------------

@pytest.fixture
def secret(tmp_path):
    path = str(tmp_path / "secret")
    auth.create(path)
    auth.use(path)
    yield path
    auth.use(None)


def test_a_made_secret_is_its_owners_only_and_kept(secret):
    assert os.stat(secret).st_mode & 0o777 == 0o600
    before = open(secret).read()
    auth.create(secret)
    assert open(secret).read() == before and len(before.strip()) == 64


def test_a_proof_is_taken_once_for_what_it_was_made_for(secret):
    proof = auth.proof()
    assert len(proof) == auth.PROOF_LEN and open(secret).read().strip() not in proof  # never the secret
    assert auth.verify(proof) and not auth.verify(proof)  # a replay is refused
    bound = auth.proof("token1")
    assert not auth.verify(bound, "token2") and auth.verify(bound, "token1")


@pytest.mark.skipif(os.geteuid() != 0, reason="a node signs credentials as root only")
def test_a_node_signs_credentials_for_a_master_whose_name_is_too_long_for_a_socket_s(tmp_path):
    """The credential socket was named `/run/grun/cred-<master>:<port>`: past sun_path's 108 bytes (a DNS name may have
    253) the node could not bind it and users' grun were refused. A long name is hashed."""
    master = (".".join(["a" * 60, "b" * 60]) + ".invalid", free_port())  # (never resolved: the node retries)
    (tmp_path / "secret").write_text(os.urandom(32).hex())
    conf = tmp_path / "n.conf"
    conf.write_text(yaml.safe_dump({"master": f"{master[0]}:{master[1]}", "bind": "127.0.0.1", "spool": str(tmp_path / "n"),
                                    "services": "exec", "auth": "secret", "secret_file": str(tmp_path / "secret")}))
    node = subprocess.Popen([sys.executable, "-m", "grun.daemon", str(conf)], stderr=subprocess.DEVNULL)
    auth.use(str(tmp_path / "secret"), master)
    try:
        assert wait_for(lambda: auth._credential("x"), 20, what="a credential").startswith("cred:")
    finally:
        node.terminate()
        node.wait(30)
        with contextlib.suppress(OSError):
            os.unlink(f"{auth._cred_at}.lock")
        auth.use(None)


@pytest.mark.parametrize("given", [None, "hello", 42, b"x" * 66, "x" * 66, "0" * 66, "9" * 66, ["a"], {"a": 1},
                                   "\u00e9" * 66, "1" * 10 + "0" * 56])
def test_anything_else_is_refused(secret, given):
    assert not auth.verify(given)


def test_a_stale_proof_or_another_secret_is_refused(secret, tmp_path):
    proof = auth.proof()
    stamp = f"{int(time.time()) - auth.PROOF_TTL - 5:010d}{proof[10:34]}"
    assert not auth.verify(stamp + auth._mac(auth.key(), stamp, ""))
    other = str(tmp_path / "other")
    auth.create(other)
    auth.use(other)
    assert not auth.verify(proof)


def test_no_secret_no_proof():
    auth.use("/nonexistent/secret")
    try:
        assert auth.proof() is None and not auth.verify(auth.proof())
    finally:
        auth.use(None)


def test_config_keys():
    cfg = config.load_config(None)
    assert (cfg.auth, cfg.allow_root, cfg.secret_file) == ("secret", True, os.path.join(cfg.spool, "secret"))
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as f:
        f.write("master: 127.0.0.1:7000\nauth: secret\nsecret_file: /srv/grun.secret\n")
        f.flush()
        cfg = config.load_config(f.name)
        assert (cfg.auth, cfg.secret_file, cfg.allow_root) == ("secret", "/srv/grun.secret", False)
        f.seek(0)
        f.write("master: 127.0.0.1:7000\nauth: secret\n")
        f.truncate()
        f.flush()
        assert config.load_config(f.name).secret_file == "/etc/grun.secret"  # not the spool: root's, users' differ
        f.seek(0)
        f.write("master: 127.0.0.1:7000\nauth: munge!\n")
        f.truncate()
        f.flush()
        with pytest.raises(config.ConfigError, match="auth.*expected secret, munge or none"):
            config.load_config(f.name)
    auth.use(None)


def test_root_jobs_are_refused_unless_allowed():
    spec = {"cmd": ["id"], "cwd": "/", "uid": 0, "gid": 0}
    for allow in (False, None):  # None: the settings' default (the config's guess, a function): not yes
        state = MasterState(**({} if allow is None else {"allow_root": allow}))
        with pytest.raises(ValueError, match="root.*allow_root"):
            state.requests([dict(spec, uid=1000), spec])
    assert MasterState(allow_root=False).requests([dict(spec, uid=1000)])[0]["uid"] == 1000
    assert MasterState(allow_root=True).requests([spec])[0]["uid"] == 0


# ---- a configured cluster with `auth: secret` --------------------------------------------------------

def _log(c: LocalCluster, name: str) -> str:
    with open(os.path.join(c.root, name, "grun.log")) as f:
        return f.read()


@pytest.fixture
def secured(secured_cluster):
    auth.use(secured_cluster.secret)  # this process's clients present it (other tests here use other secrets)
    yield secured_cluster
    auth.use(None)


@pytest.fixture(scope="module")
def secured_cluster():
    root = tempfile.mkdtemp(prefix="grun-auth-")
    path = os.path.join(root, "cluster.secret")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(os.urandom(32).hex())
    keys = {"auth": "secret", "secret_file": path}
    c = LocalCluster(nodes={"n1": {"cpus": 2, "memory": 2000, **keys}}, root=root, master_extra=keys)
    c.client_config = c.write_config("client", {"services": "exec", **keys})
    c.secret = path
    auth.use(path)  # this process's clients (c.client(), the cluster's start) present it too
    try:
        c.start()
        yield c
    finally:
        c.stop()
        auth.use(None)
        shutil.rmtree(root, ignore_errors=True)


def test_a_secured_cluster_runs_jobs_for_those_holding_its_secret(secured):
    r = secured.grun("sh", "-c", "echo out; echo err >&2; exit 3")  # Pyro5 calls and the side channel
    assert (r.returncode, r.stdout, r.stderr) == (3, b"out\n", b"err\n")
    assert "unauthenticated" not in _log(secured, "master")


@pytest.mark.parametrize("keys", [{}, "wrong"])  # (no secret at all, with auth: a credential: see the end)
def test_a_client_without_the_secret_is_refused_and_others_served_on(secured, keys, tmp_path):
    if keys == "wrong":
        (tmp_path / "wrong").write_text(os.urandom(32).hex())
        keys = {"auth": "secret", "secret_file": str(tmp_path / "wrong")}
    env = dict(secured.env, GRUN_CONF=secured.write_config("stranger", {"services": "exec", **keys}))
    marker = tmp_path / "ran"
    started = time.monotonic()
    r = secured.grun("touch", str(marker), env=env)
    assert r.returncode == 1 and time.monotonic() - started < 5, r  # refused at once: not retried as "away"
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1 and "not authorized" in lines[0], lines
    assert not marker.exists()
    wait_for(lambda: "refused a connection from 127.0.0.1:" in _log(secured, "master"), timeout=5)
    r = secured.grun("echo", "still")
    assert (r.returncode, r.stdout) == (0, b"still\n")


def _answer(address, data: bytes, context=None) -> bytes:
    """What a peer sending `data` and no more gets back before the connection closes (b"": nothing); with an
    SSL `context`, through TLS."""
    got = b""
    with socket.create_connection(address, timeout=15) as s, contextlib.suppress(ConnectionError, OSError):
        if context is not None:
            s = context.wrap_socket(s, server_hostname=address[0])
        s.sendall(data)
        socket.socket.shutdown(s, socket.SHUT_WR)  # (ENOTCONN: the daemon has already closed it; TLS: no close_notify)
        while chunk := s.recv(1 << 16):
            got += chunk
    return got


def _node_pyro_and_stream_ports(c: LocalCluster) -> tuple[str, list[int]]:
    uri = next(n["uri"] for n in c.client().nodes() if n["name"] == "n1")
    pyro_port = int(uri.rsplit(":", 1)[1])
    ports = {x.laddr.port for x in psutil.Process(c.procs["n1"].pid).net_connections("tcp") if x.status == "LISTEN"}
    return uri, sorted(ports - {pyro_port})


def test_plain_pyro5_and_raw_peers_are_refused_by_the_master_and_the_node(secured):
    import Pyro5.api
    import Pyro5.errors
    uri, stream_ports = _node_pyro_and_stream_ports(secured)
    assert stream_ports, "the node's stream port"
    for target in (uri, f"PYRO:grun.master@127.0.0.1:{secured.port}", f"PYRO:Pyro.NameServer@127.0.0.1:{secured.port}"):
        with Pyro5.api.Proxy(target) as p, pytest.raises(Pyro5.errors.CommunicationError, match="not authorized"):
            p._pyroBind()
    # a proof made for another connection, replayed: refused too
    proof = auth.proof()
    assert auth.verify(proof)  # (this process's check, which the daemons do not share)
    with Pyro5.api.Proxy(f"PYRO:grun.master@127.0.0.1:{secured.port}") as p:
        p._pyroHandshake = proof
        p._pyroBind()  # first use: accepted
    with Pyro5.api.Proxy(f"PYRO:grun.master@127.0.0.1:{secured.port}") as p, \
            pytest.raises(Pyro5.errors.CommunicationError, match="not authorized"):
        p._pyroHandshake = proof
        p._pyroBind()
    for port in stream_ports:  # the side channel: a token and no proof, a garbage proof
        for junk in (b"0" * stream.TOKEN_LEN, b"0" * (stream.TOKEN_LEN + auth.PROOF_LEN), os.urandom(200)):
            assert _answer(("127.0.0.1", port), junk) == b""  # closed, nothing served
    wait_for(lambda: "refused: no valid proof of the cluster secret" in _log(secured, "n1"), timeout=5)
    assert "refused a connection from 127.0.0.1:" in _log(secured, "n1")
    r = secured.grun("echo", "served")
    assert (r.returncode, r.stdout) == (0, b"served\n")


def test_a_stream_ticket_without_the_proof_is_refused_and_kept_for_its_owner(secured):
    c = secured.client()
    job_id = c.submit(["sh", "-c", "echo streamed"]).id
    c.wait([job_id], 30)
    node_uri = next(n["uri"] for n in c.nodes() if n["name"] == "n1")
    with wire.WireProxy(f"PYRO:grun.job.{job_id}@{node_uri.split('@', 1)[1]}") as sup:
        ticket = sup.attach(0, 0, False)
    for proof in (b"", b"0" * auth.PROOF_LEN, auth.proof("another token").encode()):
        assert _answer((ticket["host"], ticket["port"]), ticket["token"].encode() + proof) == b""  # no output
    out = []
    assert stream.attach(ticket["host"], ticket["port"], ticket["token"], stdout_fd=out.append)["exit_code"] == 0
    assert out == [b"streamed\n"]


def _fuzz(rng) -> bytes:
    """A malformed or truncated handshake or message, as an attacker or a broken peer might send."""
    import msgpack
    proof = auth.proof()
    payload = msgpack.packb(rng.choice([
        {"handshake": rng.choice([None, 1, [], {}, "x" * rng.randrange(10_000), b"\0" * 66, "9" * 66, "0" * 66,
                                  proof[:-1] + "0", proof[:33] + "f" + proof[34:], auth.proof("stream")]),
         "object": "grun.master"}, {"object": "grun.master"}, [], "hello", 42, ("grun.master", "ping", [], {})]))
    message = wire._message(rng.choice([wire._CONNECT, wire._INVOKE, 99]), 0, 0, payload)
    return rng.choice([message, message[:rng.randrange(len(message))], rng.randbytes(rng.randrange(1, 300)),
                       message[:40] + rng.randbytes(20), b"PYRO" + rng.randbytes(36)])


def fuzz(c: LocalCluster, send=lambda target, rng: _answer(target, _fuzz(rng)), seed: int = 15) -> None:
    """The issue's fuzz: 1,000 malformed or truncated handshakes and messages (`send(target, rng)` sends one and
    returns what came back) to the master, a node and the side channel; each refused (an error, or closed)
    without a byte of service; no daemon dies or keeps a descriptor, and a job right after runs."""
    import random
    rng = random.Random(seed)
    uri, stream_ports = _node_pyro_and_stream_ports(c)
    targets = [("127.0.0.1", c.port), ("127.0.0.1", int(uri.rsplit(":", 1)[1]))]
    targets += [("127.0.0.1", port) for port in stream_ports]
    daemons = {name: psutil.Process(c.procs[name].pid) for name in ("master", "n1")}
    fds = {name: p.num_fds() for name, p in daemons.items()}
    refusals = 0
    for i in range(1000):
        target = targets[i % len(targets)]
        got = send(target, rng)
        assert got == b"" or got.startswith(b"PYRO") and got[6] == wire._CONNECTFAIL, (target, got[:60])
        refusals += bool(got)
    # some answered with a refusal, the rest closed without a word (the side channel; or the close raced the
    # reply: 107-156 of 1,000 alone, fewer under load)
    assert refusals > 20
    for name, p in daemons.items():
        assert c.procs[name].poll() is None, f"{name} died"
        wait_for(lambda p=p, name=name: p.num_fds() <= fds[name], timeout=10, what=f"{name}'s descriptors back to {fds[name]}")
    r = c.grun("echo", "after the fuzz")
    assert (r.returncode, r.stdout) == (0, b"after the fuzz\n")


def test_a_thousand_malformed_handshakes_are_refused_and_every_daemon_serves_on(secured):
    fuzz(secured)


@pytest.fixture(scope="module", params=["installed", *allowed_minors()])
def secured_echo(request, tmp_path_factory):
    """test_wire's Echo daemon, of each Pyro5 version pyproject allows, with a cluster secret."""
    root = tmp_path_factory.mktemp(f"secured-{request.param}")
    path = [TREE]
    if request.param != "installed":
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(root),
                            f"Pyro5=={request.param}.*"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"cannot install Pyro5 {request.param}: {r.stderr[-500:]}"
        path.insert(0, str(root))
    secret = str(root / "secret")
    auth.create(secret)
    code = f"from grun import auth; auth.use({secret!r})\n" + SERVER
    server = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=os.pathsep.join(path)),
                              stdout=subprocess.PIPE, text=True)
    try:
        uri = server.stdout.readline().strip()
        assert uri.startswith("PYRO:"), "the Pyro5 daemon did not start"
        yield uri, secret
    finally:
        server.kill()
        server.wait()
        auth.use(None)


def test_the_handshake_with_each_allowed_pyro5(secured_echo):
    uri, secret = secured_echo
    auth.use(None)
    with pytest.raises(wire.NotAuthorized, match="not authorized"):
        wire.WireProxy(uri).echo(1)
    auth.use(secret)
    with wire.WireProxy(uri) as p:
        assert p.echo(1) == [[1], {}]
        p._pyroRelease()
        assert p.echo(2) == [[2], {}], "a new connection, a new proof"
    with registry.proxy(uri) as p:  # the daemons' own proxies
        assert p.echo(3) == [[3], {}]
        p._pyroRelease()
        assert p.echo(4) == [[4], {}]


def test_a_node_with_another_secret_cannot_join(secured, tmp_path):
    (tmp_path / "other").write_text(os.urandom(32).hex())
    secured.node_specs["n2"] = {"auth": "secret", "secret_file": str(tmp_path / "other")}
    secured.start_node("n2", wait=False)
    try:
        time.sleep(3)
        assert "n2" not in {n["name"] for n in secured.client().nodes()}
        refusal = next((line for line in _log(secured, "n2").splitlines() if "refused this node" in line), "")
        assert " ERROR " in refusal and "not authorized" in refusal  # said once as an error, not at debug level
        assert "is this host's secret_file (or auth:) the master's?" in refusal and "personal" not in refusal  # (QA)
    finally:
        secured.kill("n2")
        del secured.node_specs["n2"]


def test_a_daemon_with_auth_but_no_readable_secret_does_not_start(tmp_path):
    path = tmp_path / "d.conf"
    path.write_text(f"master: 127.0.0.1:{free_port()}\nbind: 127.0.0.1\nspool: {tmp_path}\nauth: secret\n"
                    f"secret_file: {tmp_path}/missing\nlog_file: null\n")
    r = subprocess.run([sys.executable, "-m", "grun.daemon", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "cannot read secret_file" in r.stderr, r.stderr


# ---- root, and the log of an unauthenticated cluster ------------------------------------------------

def test_root_jobs_need_allow_root_on_a_configured_cluster(tmp_path):
    with LocalCluster(nodes={"n1": {"cpus": 1, "memory": 1000}}, master_extra={"allow_root": False}) as c:
        assert "this cluster is unauthenticated" in _log(c, "master")
        assert _log(c, "master").count("unauthenticated") == 1
        r = c.grun("touch", str(tmp_path / "ran"))
        if os.geteuid() == 0:
            assert r.returncode == 1 and b"refused" in r.stderr and b"allow_root" in r.stderr, r
            assert not (tmp_path / "ran").exists()
            assert c.grun("--nowait", "true").returncode == 1
        else:
            assert r.returncode == 0
    with LocalCluster(nodes={"n1": {"cpus": 1, "memory": 1000}}, master_extra={"allow_root": True}) as c:
        r = c.grun("id", "-u")
        assert (r.returncode, r.stdout) == (0, f"{os.geteuid()}\n".encode())


# ---- the personal cluster: its owner's only ---------------------------------------------------------

def _as_user(user: pwd.struct_passwd, env: dict, argv, cwd: str = "/", umask: int = 0o022,
             gid: int | None = None) -> tuple[int, str]:
    """`grun ARGV` (or argv(), printing what it returns) run by another local user: a child of this process
    that drops to that user (its Python is under /root, which others cannot read, so everything it needs is
    imported already); `gid`: with that group's gid, as `sg GROUP` runs a command."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.close(r)
            os.dup2(w, 1)  # (a job's output is written to the fds, not through sys.stdout)
            os.dup2(w, 2)
            sys.stdout = sys.stderr = os.fdopen(w, "w")
            os.setgroups(os.getgrouplist(user.pw_name, user.pw_gid))
            os.setgid(user.pw_gid if gid is None else gid)
            os.setuid(user.pw_uid)
            os.chdir(cwd)
            os.umask(umask)
            os.environ.clear()
            os.environ.update(env)
            if callable(argv):
                print(argv())
                code = 0
            else:
                code = cli.main(argv)
        except BaseException as exc:
            print(f"child failed: {exc!r}", file=sys.stderr)
        finally:  # never back into pytest, even on a broken pipe (its parent gone): a copy would run its teardowns too
            with contextlib.suppress(BaseException):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    os.close(w)
    try:
        with os.fdopen(r) as f:
            out = f.read()
    except BaseException:  # (interrupted: the child, a process of that user, must not outlive the test)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), out


@ROOT_ONLY
@pytest.mark.skipif(os.path.exists("/etc/grun.conf"), reason="a system config: no personal mode here")
def test_a_personal_cluster_serves_its_owner_only(tmp_path):
    name = f"grunt{os.getpid() % 100000}"
    account("useradd", "-M", "-s", "/usr/sbin/nologin", name)
    owner_env = {k: v for k, v in os.environ.items() if not k.startswith("GRUN_")}
    owner_env.update(GRUN_SPOOL=str(tmp_path / "owner"), GRUN_MASTER=f"127.0.0.1:{free_port()}")
    pid = None
    try:
        user = pwd.getpwnam(name)
        grun = [sys.executable, "-m", "grun.cli"]
        r = subprocess.run([*grun, "hostname"], env=owner_env, capture_output=True, text=True, timeout=60)
        assert (r.returncode, r.stdout) == (0, socket.gethostname() + "\n"), r.stderr  # no setup step
        pid = int(open(tmp_path / "owner" / "grun.pid").read())
        assert os.stat(tmp_path / "owner" / "secret").st_mode & 0o777 == 0o600
        r = subprocess.run([*grun, "id", "-u"], env=owner_env, capture_output=True, text=True, timeout=60)
        assert (r.returncode, r.stdout) == (0, "0\n")  # root's personal cluster runs root's jobs
        marker = tmp_path / "ran"
        os.chmod(tmp_path, 0o755)
        for spool in (str(tmp_path / "stranger"), str(tmp_path / "owner")):  # its own state, or the owner's
            os.makedirs(spool, exist_ok=True)
            if spool.endswith("stranger"):
                os.chown(spool, user.pw_uid, user.pw_gid)
            env = dict(owner_env, HOME=spool, GRUN_SPOOL=spool)
            for argv in (["touch", str(marker)], ["--nowait", "touch", str(marker)], ["-q", "jobs"]):
                code, out = _as_user(user, env, argv)
                assert code == 1 and len(out.splitlines()) == 1 and "not authorized" in out, (argv, out)
        assert not marker.exists()
        with open(tmp_path / "owner" / "grun.log") as f:
            assert "refused a connection from 127.0.0.1:" in f.read()
        r = subprocess.run([*grun, "echo", "mine"], env=owner_env, capture_output=True, text=True, timeout=60)
        assert (r.returncode, r.stdout) == (0, "mine\n")
    finally:
        if pid:
            subprocess.run([*grun, "-d", "-k"], env=owner_env, capture_output=True, timeout=60)
            if psutil.pid_exists(pid):
                os.kill(pid, 9)
        account("userdel", name, check=False)


@pytest.mark.skipif(os.path.exists("/etc/grun.conf"), reason="a system config: no personal mode here")
def test_a_grun_inside_a_job_finds_its_personal_clusters_secret(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRUN_")}
    env.update(GRUN_SPOOL=str(tmp_path / "state"), GRUN_MASTER=f"127.0.0.1:{free_port()}")
    grun = [sys.executable, "-m", "grun.cli"]
    try:
        r = subprocess.run([*grun, "sh", "-c", f"{sys.executable} -m grun.cli echo nested"], env=env,
                           capture_output=True, text=True, timeout=60)
        assert (r.returncode, r.stdout) == (0, "nested\n"), r.stderr
    finally:
        subprocess.run([*grun, "-d", "-k"], env=env, capture_output=True, timeout=60)


# ---- a real cluster: users run as themselves, on their own jobs only (issue 15 points 3, 5, 6) -----------

@pytest.fixture(scope="module")
def users():
    """Two real users, alice in a group of her own besides her primary one; removed at the end."""
    tag = os.getpid() % 100000
    names, group = [f"gra{tag}", f"grb{tag}"], f"grg{tag}"
    account("groupadd", group)
    try:
        for name in names:
            account("useradd", "-M", "-s", "/usr/sbin/nologin", name)
        account("usermod", "-aG", group, names[0])
        yield [pwd.getpwnam(n) for n in names], grp.getgrnam(group).gr_gid
    finally:
        for name in names:
            account("userdel", name, check=False)
        account("groupdel", group, check=False)


@pytest.fixture
def shared_dir():
    """A directory every user may work in (pytest's tmp_path is under a directory of root's own)."""
    path = tempfile.mkdtemp(prefix="grun-users-")
    os.chmod(path, 0o777)
    yield __import__("pathlib").Path(path)
    shutil.rmtree(path, ignore_errors=True)


def _as_themselves(users, tmp_path, client_config: str) -> dict:
    """alice's job runs as alice, with her groups and umask, and her spec claiming bob's uid is refused; the
    users' environment for more (the client config copied where all may read it: the cluster's is root's)."""
    (alice, bob), group = users
    conf = str(tmp_path / "grun.conf")
    shutil.copy(client_config, conf)
    os.chmod(conf, 0o644)
    env = {"PATH": os.environ["PATH"], "GRUN_CONF": conf, "HOME": str(tmp_path)}
    code, out = _as_user(alice, env, ["-o", "out", "--err", "err", "sh", "-c", "id -u; id -G; umask; touch made"],
                         cwd=str(tmp_path), umask=0o027)
    assert [os.stat(tmp_path / f).st_mode & 0o777 for f in ("out", "err")] == [0o640, 0o640], "-o/--err: her umask"
    out = (tmp_path / "out").read_text()
    assert len(out.splitlines()) == 3, (code, out)
    uid, gids, umask = out.split()[0], out.splitlines()[1].split(), out.splitlines()[2]
    assert (code, uid, umask) == (0, str(alice.pw_uid), "0027"), out
    assert str(group) in gids and str(alice.pw_gid) in gids, out
    assert os.stat(tmp_path / "made").st_uid == alice.pw_uid and os.stat(tmp_path / "made").st_mode & 0o777 == 0o640

    def claim_bob():  # the API, with a spec that says it is bob
        from grun.client import Client, job_spec
        try:
            return Client().submit_spec(job_spec(["touch", str(tmp_path / "as-bob")], uid=bob.pw_uid))
        except Exception as exc:
            return f"refused: {exc}"
    code, out = _as_user(alice, env, claim_bob, cwd=str(tmp_path))
    assert "refused: not authorized: you are uid" in out and not (tmp_path / "as-bob").exists(), out
    return env


@ROOT_ONLY
def test_users_run_as_themselves_and_act_on_their_own_jobs_only(secured, users, shared_dir):
    (alice, bob), tmp_path = users[0], shared_dir
    env = _as_themselves(users, tmp_path, secured.write_config(
        "users", {"services": "exec", "auth": "secret", "secret_file": secured.secret}))
    code, out = _as_user(alice, env, ["--nowait", "sleep", "60"], cwd=str(tmp_path))
    job_id = out.strip().split()[-1]
    assert code == 0 and job_id.isdigit(), out
    wait_for(lambda: secured.client().job(int(job_id))["state"] == "running", timeout=20)
    for argv in (["-k", job_id], ["-e", "priority=1", job_id], ["--attach", job_id], ["-k", "--user", alice.pw_name]):
        code, out = _as_user(bob, env, argv, cwd=str(tmp_path))
        assert code == 1 and "not authorized" in out and len(out.splitlines()) == 1, (argv, out)
    code, out = _as_user(bob, env, ["-q", "jobs"], cwd=str(tmp_path))  # queries stay open to all
    assert code == 0 and job_id in out, out

    def hers(act):  # a call on her job by whoever runs it: its answer, or its refusal
        def call():
            from grun.client import Client
            from grun.job import Job
            try:
                return f"done: {act(Client(), Job, int(job_id))}"
            except Exception as exc:
                return f"refused: {exc}"
        return call
    release_hers = hers(lambda c, Job, i: Job(c, i).release())  # her node dropped her output at anyone's word
    code, out = _as_user(bob, env, release_hers, cwd=str(tmp_path))
    assert out.startswith(f"refused: not authorized: {bob.pw_name} may not release job {job_id}"), out
    renew_hers = hers(lambda c, Job, i: c.renew(i))  # the lease of a job of hers: hers to renew, as to kill
    code, out = _as_user(bob, env, renew_hers, cwd=str(tmp_path))
    assert out.startswith(f"refused: not authorized: {bob.pw_name} may not renew the lease of job {job_id}"), out
    code, out = _as_user(alice, env, renew_hers, cwd=str(tmp_path))
    assert out == f"done: {{{job_id}: False}}\n", out  # (hers, without a lease)
    code, out = _as_user(bob, env, ["-q", "jobs"], cwd=str(tmp_path))
    assert code == 0 and job_id in out, out

    spool = os.path.join(secured.root, "n1", "node")
    os.chmod(os.path.join(spool, "notify"), 0o666)  # (as a umask of 0 would leave it: the node still ignores bob)
    way_in = os.open(spool, os.O_PATH)  # (bob's: the cluster's root is root's alone)

    def fake_end():  # a datagram to the node's notify socket, as its reaper says a job ended
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(f'finished {job_id} {{"exit_code": 0}}'.encode(), f"/proc/self/fd/{way_in}/notify")
        return "sent"
    assert _as_user(bob, env, fake_end)[1].strip() == "sent"
    os.close(way_in)
    time.sleep(1.5)
    code, out = _as_user(bob, env, ["-q", "jobs"], cwd=str(tmp_path))
    assert code == 0 and job_id in out and "running" in out, out  # the node took no word of bob's for it
    assert "ignored a ping from pid" in _log(secured, "n1")

    def forged_kill():  # a credential signed for a "bound" of two lines, the second passed off as the body: root's
        from grun import auth
        from grun.client import Client
        real, fake = auth._credential, "0:0:022:0::root"

        def forge(bound):
            got = real(f"{bound}\n{fake}")
            cut = len(auth._CRED) + auth.PROOF_LEN
            return got and f"{got[:cut]}{fake}\n{got[cut:]}"
        auth._credential = forge
        try:
            return f"done: {Client().kill([int(job_id)])}"
        except Exception as exc:
            return f"refused: {exc}"
    code, out = _as_user(bob, env, forged_kill, cwd=str(tmp_path))
    assert out.startswith("refused: ") and secured.client().job(int(job_id))["state"] == "running", out

    def kill_by_a_dict():  # ids not in a list skipped the owner check: the core took the dict's keys
        from grun.client import Client
        try:
            return f"done: {Client().call('kill', {job_id: 0}, 15, False)}"
        except Exception as exc:
            return f"refused: {exc}"
    code, out = _as_user(bob, env, kill_by_a_dict, cwd=str(tmp_path))
    assert "refused: job ids: a list" in out and secured.client().job(int(job_id))["state"] == "running", out

    import msgpack  # (here: bob cannot read root's Python)
    import serpent

    def submit_as_alice_in_a_tuple():  # Pyro5 takes serpent too, which keeps a tuple where msgpack makes a list
        from grun import wire
        from grun.client import Client, job_spec
        real, spec = wire._message, job_spec(["sleep", "60"], uid=alice.pw_uid, user=alice.pw_name, hold=True)

        def in_serpent(kind, flags, seq, payload):
            if kind != wire._INVOKE:
                return real(kind, flags, seq, payload)
            data = serpent.dumps((*msgpack.unpackb(payload)[:2], ((spec,),), {}))
            return wire._HEADER.pack(b"PYRO", wire._VERSION, kind, 1, flags, seq, len(data), 0, bytes(16), 0,
                                     wire._MAGIC) + data
        wire._message = in_serpent
        with contextlib.suppress(Exception):  # (its reply comes in serpent too, which grun's client does not read)
            Client()._proxy().submit_jobs([spec])
        return "sent"
    assert _as_user(bob, env, submit_as_alice_in_a_tuple, cwd=str(tmp_path)) == (0, "sent\n")
    assert [job["id"] for job in secured.client().jobs() if job["state"] == "held"] == [], "bob's, as alice's, queued"

    def stop_master():  # an administrative call from a user
        from grun.client import Client
        try:
            return Client().call("shutdown")
        except Exception as exc:
            return f"refused: {exc}"
    code, out = _as_user(bob, env, stop_master, cwd=str(tmp_path))
    assert "refused: not authorized" in out, out
    code, out = _as_user(alice, env, ["-k", "--user", alice.pw_name], cwd=str(tmp_path))  # (her own: all of them)
    assert code == 0, out
    wait_for(lambda: secured.client().job(int(job_id))["state"] == "killed", timeout=20)
    assert secured.client().call("ping") == "grun.master"  # still serving


@ROOT_ONLY
def test_of_several_jobs_a_user_kills_their_own_and_is_told_of_each_refused(secured, users, shared_dir):
    """grun -k, scancel, qdel, the shell and the Client judge each id on its own: another user's is said, a line each
    (exit 1), and the user's own are killed (they were all refused for it); so with a user's scancel -n/-t without -u,
    which picks anyone's jobs, as the real Slurm 22.05 here does. An unknown id: grun -k says so, scancel does not."""
    (alice, bob), tmp_path = users[0], shared_dir
    env = _as_themselves(users, tmp_path, secured.write_config(
        "several", {"services": "exec", "auth": "secret", "secret_file": secured.secret}))

    def held(*names):  # held jobs of these names (a user's live jobs' names are unique), by whoever runs it: their ids
        def submit():
            from grun.client import Client
            return " ".join(str(Client().submit(["true"], name=n, hold=True).id) for n in names)
        return submit

    def compat_main(called, *argv):  # a Slurm or SGE command, as its shim runs it
        def run():
            sys.argv[0] = called
            return compat.main(list(argv))
        return run

    def client_kill(*ids):
        from grun.client import Client, JobsRefused
        try:
            return Client().kill(list(ids))
        except JobsRefused as exc:
            return f"{exc} | {exc.found}"

    def in_shell(line):
        return lambda: shell.run(verbs.Context(client.Client), [line])

    hers = int(_as_user(alice, env, held("wrap"), cwd=str(tmp_path))[1])
    out = _as_user(bob, env, held("b0", "b1", "b2", "b3", "b4", "wrap", "other"), cwd=str(tmp_path))[1]
    mine = [int(i) for i in out.split()] if out[:1].isdigit() else pytest.fail(out)
    refusal = f"not authorized: {bob.pw_name} may not kill job {hers}, which is {alice.pw_name}'s"
    denied = f"scancel: error: Kill job error on job id {hers}: Access/permission denied\n"
    no_privileges = f'{bob.pw_name} - you do not have the necessary privileges to delete the job "{hers}"\n'

    def bob_runs(what):  # argv (grun's exit code) or a callable (its answer last; the exit code 0)
        return _as_user(bob, env, what, cwd=str(tmp_path))
    try:
        assert bob_runs(["-k", str(hers), str(mine[0]), "99999"]) == (1, f"grun: {refusal}\ngrun: no such job 99999\n")
        assert bob_runs(in_shell(f"kill {mine[1]} {hers}")) == (0, f"grun: {refusal}\n1\n")
        assert bob_runs(compat_main("scancel", str(hers), str(mine[2]))) == (0, f"{denied}1\n")
        assert bob_runs(compat_main("qdel", str(mine[3]), str(hers))) == (
            0, f"{bob.pw_name} has deleted job {mine[3]}\n{no_privileges}1\n")
        assert bob_runs(lambda: client_kill(hers, mine[4])) == (0, f"{refusal} | {{{mine[4]}: True, {hers}: False}}\n")
        assert bob_runs(["-k", "-j", "wra?"]) == (0, "")  # (a glob: his own live jobs only, mine[5], not hers)
        assert bob_runs(compat_main("scancel", "-n", "wrap")) == (0, f"{denied}1\n")  # (hers: "wrap")
        assert bob_runs(compat_main("scancel", "-t", "PD")) == (0, f"{denied}1\n")  # (mine[6], and hers)
        assert bob_runs(compat_main("scancel", "99999")) == (0, "0\n")
        assert bob_runs(["-k", "99999"]) == (1, "grun: no such job 99999\n")
        assert [secured.client().job(i)["state"] for i in [hers, *mine]] == ["held"] + ["killed"] * len(mine)
    finally:
        secured.client().kill([hers, *mine])


def _shim(called, *argv):
    """A Slurm or SGE command as its shim runs it, for _as_user."""
    def run():
        sys.argv[0] = called
        return compat.main(list(argv))
    return run


@ROOT_ONLY
def test_qhold_and_qrls_of_another_users_job_are_refused_alike(secured, users, shared_dir):
    """QA: bob's qrls of alice's running job (nothing to release) exited 0 and said nothing, where his qhold of it
    said "not authorized" (a traceback's last line): both give SGE's refusal, of a held job and of a running one, and
    change nothing."""
    (alice, bob), tmp_path = users[0], shared_dir
    env = _as_themselves(users, tmp_path, secured.write_config(
        "holds", {"services": "exec", "auth": "secret", "secret_file": secured.secret}))

    def submit():
        from grun.client import Client
        return " ".join(str(Client().submit(["sleep", "60"], hold=hold).id) for hold in (True, False))

    held, running = (int(i) for i in _as_user(alice, env, submit, cwd=str(tmp_path))[1].split())
    try:
        wait_for(lambda: secured.client().job(running)["state"] == "running", timeout=20)
        for command in ("qhold", "qrls"):
            for job_id in (held, running):
                assert _as_user(bob, env, _shim(command, str(job_id)), cwd=str(tmp_path)) == (
                    0, f'{bob.pw_name} - you have no permission to modify job "{job_id}"\n1\n'), (command, job_id)
        assert [secured.client().job(i)["state"] for i in (held, running)] == ["held", "running"]
    finally:
        secured.client().kill([held, running])


def test_a_job_the_node_runs_as_itself_gets_its_submitters_umask():
    """Only a job the node (root) ran as another user got its umask: root's jobs, and every job of a personal or
    non-root cluster, ran with the node's."""
    with LocalCluster({"n1": {"cpus": 1, "memory": 500}}) as c:
        for mask in (0o077, 0o002):
            r = c.grun("sh", "-c", "umask", umask=mask)
            assert (r.returncode, r.stdout) == (0, f"{mask:04o}\n".encode()), r.stderr


def test_without_auth_a_kill_names_the_user_its_jobs_are_submitted_as():
    """The handshake's claim read the password database where a submission's user is LOGNAME's (getpass's order): a
    `LOGNAME=zed grun` job was zed's and its kill by the same `LOGNAME=zed grun -k` named the database's user."""
    with LocalCluster({"n1": {"cpus": 1, "memory": 500}}) as c:
        env = dict(c.env, LOGNAME="zed")
        job_id = int(c.grun("--nowait", "sleep", "60", env=env).stdout.split()[1])
        try:
            assert c.client().job(job_id)["user"] == "zed"
            assert c.grun("-k", str(job_id), env=env).returncode == 0
            wait_for(lambda: c.client().job(job_id)["state"] == "killed", timeout=20, what="the kill")
        finally:
            c.client().kill([job_id], 9)
        assert f"job {job_id} killed by zed (signal 15)" in _log(c, "master")


@ROOT_ONLY
def test_without_auth_a_job_gets_its_submitters_umask_and_a_kill_names_who_claims_it(users, shared_dir):
    """QA: with no `auth:` line a user's `umask 077; grun sh -c "umask; touch f"` said 0022 and made f -rw-r--r-- (the
    node's umask; with auth: secret, 0077); and a kill said "job 25 killed (signal 2)", naming nobody. Without auth the
    umask, as the uid and the user, is the client's claim, and so is who kills, holds or resumes."""
    (alice, _), tmp_path = users[0], shared_dir
    with LocalCluster({"n1": {"cpus": 2, "memory": 1000}}) as c:
        conf = str(tmp_path / "grun.conf")
        shutil.copy(c.client_config, conf)
        os.chmod(conf, 0o644)
        env = {"PATH": os.environ["PATH"], "GRUN_CONF": conf, "HOME": str(tmp_path)}
        assert _as_user(alice, env, ["sh", "-c", "umask; touch made"], cwd=str(tmp_path), umask=0o077) == (0, "0077\n")
        assert os.stat(tmp_path / "made").st_mode & 0o777 == 0o600 and os.stat(tmp_path / "made").st_uid == alice.pw_uid
        job_id = int(_as_user(alice, env, ["--nowait", "sleep", "60"], cwd=str(tmp_path))[1].split()[-1])
        try:
            wait_for(lambda: c.client().job(job_id)["state"] == "running", timeout=30, what="her job to run")
            assert _as_user(alice, env, ["-e", "hold", str(job_id)], cwd=str(tmp_path))[0] == 0
            wait_for(lambda: c.client().job(job_id)["state"] == "suspended", timeout=20, what="her hold")
            assert c.client().job(job_id).get("held_by") == alice.pw_name, "her suspension named nobody"
            assert _as_user(alice, env, ["-e", "resume", str(job_id)], cwd=str(tmp_path))[0] == 0
            wait_for(lambda: c.client().job(job_id)["state"] == "running", timeout=20, what="her resume")
            assert _as_user(alice, env, ["-k", str(job_id)], cwd=str(tmp_path))[0] == 0
            wait_for(lambda: c.client().job(job_id)["state"] == "killed", timeout=20, what="her kill")
        finally:
            c.client().kill([job_id], 9)
        assert f"job {job_id} killed by {alice.pw_name} (signal 15)" in _log(c, "master")
        block = next((b for b in c.grun("-q", "history", "--long").stdout.decode().split("\n\n")
                      if b.startswith(f"job {job_id}:")), "")
        assert f"  killed    by {alice.pw_name}\n" in block, block


@ROOT_ONLY
def test_an_owner_cannot_release_an_admins_hold_and_a_kill_names_its_killer(secured, users, shared_dir):
    """QA: alice's `grun -e resume`, qrls and scontrol release undid root's hold of her queued job and suspension of her
    running one (Slurm, SGE: a user cannot release an operator's hold): each refused in one line; root releases them.
    And a kill was said nowhere: the master's log and the job's history --long name who killed it."""
    (alice, _), tmp_path = users[0], shared_dir
    env = _as_themselves(users, tmp_path, secured.write_config(
        "admin-holds", {"services": "exec", "auth": "secret", "secret_file": secured.secret}))

    def submit():
        from grun.client import Client
        return " ".join(str(Client().submit(["sleep", "60"], cpus=2).id) for _ in range(2))

    running, queued = (int(i) for i in _as_user(alice, env, submit, cwd=str(tmp_path))[1].split())
    why = "job {} was held by an admin (root): only an admin can release it"
    try:
        wait_for(lambda: secured.client().job(running)["state"] == "running", timeout=30, what="her first job to run")
        secured.client().hold([running, queued])
        wait_for(lambda: secured.client().job(running)["state"] == "suspended", timeout=20, what="its suspension")
        assert _as_user(alice, env, ["-e", "resume", str(running), str(queued)], cwd=str(tmp_path)) == (
            1, f"grun: {why.format(running)}\ngrun: {why.format(queued)}\n")
        assert _as_user(alice, env, _shim("qrls", str(queued)), cwd=str(tmp_path)) == (  # (SGE's own refusal)
            0, f'{alice.pw_name} - you have no permission to modify job "{queued}"\n1\n')
        assert _as_user(alice, env, _shim("scontrol", "release", str(queued)), cwd=str(tmp_path)) == (
            0, f"scontrol: error: {why.format(queued)}\n1\n")
        assert [secured.client().job(i)["state"] for i in (running, queued)] == ["suspended", "held"]
        secured.client().resume([running, queued])
        wait_for(lambda: secured.client().job(running)["state"] == "running", timeout=20, what="it continued")
        assert _as_user(alice, env, ["-k", str(running)], cwd=str(tmp_path))[0] == 0
        wait_for(lambda: secured.client().job(running)["state"] == "killed", timeout=20, what="her kill")
        assert f"job {running} killed by {alice.pw_name} (signal 15)" in _log(secured, "master")
        code, out = _as_user(alice, env, ["-q", "history", "--long"], cwd=str(tmp_path))
        block = next((b for b in out.split("\n\n") if b.startswith(f"job {running}:")), out)
        assert code == 0 and f"  killed    by {alice.pw_name}\n" in block, out
    finally:
        secured.client().kill([running, queued])


@ROOT_ONLY
def test_a_user_cannot_squat_the_credential_socket_and_admins_attach_to_anyones_jobs(users, shared_dir):
    """QA: bob, binding the name of the node's credential socket before the node daemon did (an abstract socket's:
    any user could), left every user of the host refused; it is a file in root's /run/grun now, gone at the node's
    stop. Binding the node's notify socket's (its reapers ping it), he kept the node from starting, and would have
    heard of each job's end from the reapers of one restarting: it is a file in the node's spool now. And an admin
    (admins:, reloaded) could kill another's job but not attach to it: a job's node has the master's admins in the job."""
    (alice, bob), tmp_path = users[0], shared_dir
    (tmp_path / "secret").write_text(os.urandom(32).hex())
    os.chmod(tmp_path / "secret", 0o600)
    keys = {"auth": "secret", "secret_file": str(tmp_path / "secret")}
    c = LocalCluster(nodes={"n1": {"cpus": 2, "memory": 2000, **keys}}, master_extra=keys)
    spool = os.path.join(c.root, "n1", "node")
    names = [f"\0grun-cred-127.0.0.1:{c.port}", f"/run/grun/cred-127.0.0.1:{c.port}",
             "\0grun.notify." + hashlib.sha1(spool.encode()).hexdigest()[:20], os.path.join(spool, "notify")]
    (report, said), (held, hold) = os.pipe(), os.pipe()
    if (squatter := os.fork()) == 0:  # bob binds what he can of these names first, as QA did, until `hold` closes
        try:
            os.close(hold)
            os.setgroups([])
            os.setgid(bob.pw_gid)
            os.setuid(bob.pw_uid)
            socks = [socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM if "notify" in n else socket.SOCK_STREAM)
                     for n in names]
            for sock, name in zip(socks, names):
                with contextlib.suppress(OSError):
                    sock.bind(name)
            os.write(said, repr([sock.getsockname() for sock in socks]).encode())
            os.read(held, 1)
        finally:
            os._exit(0)
    os.close(said)
    os.close(held)
    auth.use(keys["secret_file"])  # (this process's clients: the cluster's start)
    try:
        assert os.read(report, 4096) == repr([names[0].encode(), "", names[2].encode(), ""]).encode()  # (not files)
        c.start()
        shutil.copy(c.write_config("users", {"services": "exec", **keys}), tmp_path / "grun.conf")
        os.chmod(tmp_path / "grun.conf", 0o644)
        env = {"PATH": os.environ["PATH"], "GRUN_CONF": str(tmp_path / "grun.conf"), "HOME": str(tmp_path)}
        code, out = _as_user(bob, env, ["--nowait", "sh", "-c", "echo bobs; sleep 2"], cwd=str(tmp_path))
        assert code == 0 and out.split()[-1].isdigit(), out  # (was: "not authorized", the node signing for nobody)
        attach = ["--attach", out.split()[-1]]
        code, out = _as_user(alice, env, attach, cwd=str(tmp_path))
        assert code == 1 and f"{alice.pw_name} may not attach to job {attach[1]}, which is {bob.pw_name}'s" in out, out
        c.master_extra["admins"] = [alice.pw_name]
        c.write_config("master", {"services": "queue", **c.master_extra})
        c.procs["master"].send_signal(signal.SIGHUP)  # (grun -d -r)
        log = os.path.join(c.root, "master", "grun.log")
        wait_for(lambda: "applied admins" in open(log).read() or "admins=" in open(log).read(), 15, what="the reload")
        code, out = _as_user(bob, env, ["--nowait", "sh", "-c", "echo bobs; sleep 2"], cwd=str(tmp_path))
        attach = ["--attach", out.split()[-1]]  # (the admins a job's node knows are the master's at its start)
        assert _as_user(alice, env, attach, cwd=str(tmp_path)) == (0, "bobs\n")
        code, out = _as_user(bob, env, ["--nowait", "sleep", "60"], cwd=str(tmp_path))
        wait_for(lambda: c.client().job(int(out.split()[-1]))["state"] == "running", 15, what="the job's start")
        c.master_extra["admins"] = []  # QA: revoked by a reload, she still attached (her rights at the job's start)
        c.write_config("master", {"services": "queue", **c.master_extra})
        c.procs["master"].send_signal(signal.SIGHUP)
        wait_for(lambda: open(log).read().count("reloaded ") == 2, 15, what="the second reload")
        time.sleep(2.5)  # (the node's next heartbeat reply names the master's admins now: heartbeat 1 s)
        code, said = _as_user(alice, env, ["--attach", out.split()[-1]], cwd=str(tmp_path))
        assert code == 1 and f"{alice.pw_name} may not attach to job {out.split()[-1]}" in said, said
    finally:
        os.close(hold)
        os.waitpid(squatter, 0)
        c.stop()
        auth.use(None)
    assert not os.path.exists(names[1]) and not os.path.exists(f"{names[1]}.lock")  # (QA: the lock files stayed)


def test_the_node_daemons_of_one_host_sign_credentials_in_turn(users, shared_dir):
    """Review: of two root node daemons of one host, the one that did not sign deferred for good, so once the other
    stopped nobody signed and every user of the host was refused. They now wait on the socket's lock in turn."""
    (alice, _), tmp_path = users[0], shared_dir
    (tmp_path / "secret").write_text(os.urandom(32).hex())
    os.chmod(tmp_path / "secret", 0o600)
    keys = {"auth": "secret", "secret_file": str(tmp_path / "secret")}
    auth.use(keys["secret_file"])
    c = LocalCluster(nodes={name: {"cpus": 1, "memory": 1000, **keys} for name in ("n1", "n2")}, master_extra=keys)
    try:
        c.start()
        shutil.copy(c.write_config("users", {"services": "exec", **keys}), tmp_path / "grun.conf")
        os.chmod(tmp_path / "grun.conf", 0o644)
        env = {"PATH": os.environ["PATH"], "GRUN_CONF": str(tmp_path / "grun.conf"), "HOME": str(tmp_path)}
        for stopped in ("n1", "n2"):  # (one of them signed first: stopped, the other takes over)
            c.kill(stopped, signal.SIGTERM)
            assert wait_for(lambda: (r := _as_user(alice, env, ["echo", "signed"], cwd=str(tmp_path)))[0] == 0 and r, timeout=15,
                            interval=0.5) == (0, "signed\n")
            c.start_node(stopped)
    finally:
        c.stop()
        auth.use(None)
    assert not os.path.exists(f"/run/grun/cred-127.0.0.1:{c.port}.lock")  # (each removed its file at its stop)


def _users_env(c: LocalCluster, tmp_path) -> dict:
    """The users' environment for cluster `c`: its client config copied where all may read it (the cluster's is
    root's)."""
    conf = c.write_config("users", {"services": "exec", "auth": "secret", "secret_file": c.secret})
    shutil.copy(conf, tmp_path / "grun.conf")
    os.chmod(tmp_path / "grun.conf", 0o644)
    return {"PATH": os.environ["PATH"], "GRUN_CONF": str(tmp_path / "grun.conf"), "HOME": str(tmp_path)}


@ROOT_ONLY
@pytest.mark.parametrize("prefix", ["", "setsid "])
def test_only_a_grun_inside_a_job_borrows_its_reservation(secured, users, shared_dir, prefix):
    """QA: a grun's parent was its GRUN_JOB_ID, anyone's word: from a login shell, `GRUN_JOB_ID=P grun` had job P
    lend its cpus (and GPU) to another job while P still used them. Now the credential of the node P runs on
    says which job the asker is in: a job claimed from outside lends nothing, and says so; a grun inside P still
    borrows, in a session of its own too (review: `setsid`, `--pty` under a forking wrap, `start_new_session` hung
    on a full node when the job was found by the asker's session, not its ancestry)."""
    (alice, _), tmp_path = users[0], shared_dir
    site = tmp_path / "site"  # (alice's job runs the system's Python: ours, under /root, is not hers to read)
    for name in ("msgpack", "Pyro5", "serpent.py", "yaml", "_yaml", "psutil"):
        src = os.path.join(sysconfig.get_paths()["purelib"], name)
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, site / name)
    env, path = _users_env(secured, tmp_path), f"{os.path.dirname(os.path.dirname(auth.__file__))}:{site}"
    nested = (f"while [ ! -e go ]; do sleep 0.1; done; {prefix}env PYTHONPATH={path}"
              " /usr/bin/python3 -m grun.cli -c 2 echo borrowed > nested 2>&1; sleep 60")
    code, out = _as_user(alice, env, ["--nowait", "-c", "2", "sh", "-c", nested], cwd=str(tmp_path))
    parent = int(out.split()[-1]) if code == 0 else pytest.fail(out)
    try:
        wait_for(lambda: secured.client().job(parent)["state"] == "running", timeout=20)
        code, out = _as_user(alice, {**env, "GRUN_JOB_ID": str(parent)}, ["--nowait", "-c", "2", "true"],
                             cwd=str(tmp_path))
        claimed = int(out.split()[-1]) if code == 0 else pytest.fail(out)
        assert f"warning: GRUN_JOB_ID {parent}: this grun does not run inside job {parent}: nothing lent" in out, out
        time.sleep(2)  # (lent, it ran at once)
        assert secured.client().job(claimed)["state"] == "queued", "the parent's cpus lent to a job outside it"
        secured.client().kill([claimed])
        (tmp_path / "go").touch()
        done = tmp_path / "nested"
        wait_for(lambda: done.exists() and done.read_text().endswith("\n"), timeout=30, what="the nested grun")
        assert done.read_text() == "borrowed\n"
    finally:
        secured.client().kill([parent])


def test_the_job_a_credential_vouches_for_is_its_askers_ancestors_or_sessions():
    """Review: the job is the nearest ancestor leading one (setsid changes the session, not the ancestry), else the
    session's leader (a daemon's double fork leaves the job's processes); not the job of another uid (a pid reused
    between connect and lookup), and none, never an exception (no credential at all), for an asker gone."""
    me = os.getuid()
    child = subprocess.Popen(["setsid", "sleep", "30"])
    orphan = subprocess.Popen(["sh", "-c", 'sh -c "sleep 30 & echo \\$!"; exec sleep 30'], stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    daemon = int(orphan.stdout.readline())  # (its parent gone: init, or a subreaper, is its parent now)
    try:
        wait_for(lambda: os.getsid(child.pid) == child.pid and psutil.Process(orphan.pid).name() == "sleep", timeout=10)
        assert auth.job_of(child.pid, me, {os.getpid(): 7}) == 7
        assert auth.job_of(child.pid, me + 1, {os.getpid(): 7}) is None  # (the leader is not the asker's)
        assert auth.job_of(child.pid, me, {orphan.pid: 8}) is None
        assert auth.job_of(daemon, me, {orphan.pid: 8}) == 8
    finally:
        os.kill(daemon, signal.SIGKILL)
        for proc in (child, orphan):
            proc.kill()
            proc.wait()
        orphan.stdout.close()
    assert auth.job_of(child.pid, me, {os.getpid(): 7}) is None  # gone


@ROOT_ONLY
def test_the_master_reads_a_users_groups_from_the_account_database_as_it_is_now(users):
    """Review: the master cached a user's primary group until its restart (`usermod -g` unseen). (A user it does not
    know: test_rules_core's test_rule_facts_read_files_once_as_the_user_could.)"""
    from grun.actors.master import _group_names
    ((alice, _), other), name = users, grp.getgrgid(users[1]).gr_name
    assert _group_names(alice.pw_name, other, primary=True) == [grp.getgrgid(alice.pw_gid).gr_name]  # (not sg's)
    account("usermod", "-g", name, alice.pw_name)
    try:
        assert _group_names(alice.pw_name, other, primary=True) == [name]
    finally:
        account("usermod", "-g", str(alice.pw_gid), alice.pw_name)
    assert _group_names("grun-nobody-here", 0, primary=True) == ["root"]


@ROOT_ONLY
def test_sg_does_not_change_the_group_rules_and_limits_see(users, shared_dir):
    """QA: `sg OTHER -c 'grun ...'` passed for group OTHER in rules (`group`, `groups`) and `group.X` limits, and its
    job ran without the user's primary group. Policy now reads the passwd's primary group; the job keeps sg's gid
    and has the primary group among its others, as sg leaves them."""
    (alice, _), tmp_path = users[0], shared_dir
    other, primary = users[1], grp.getgrgid(alice.pw_gid).gr_name
    (tmp_path / "secret").write_text(os.urandom(32).hex())
    os.chmod(tmp_path / "secret", 0o600)
    keys = {"auth": "secret", "secret_file": str(tmp_path / "secret")}
    rule = f'group == "{primary}" and "{primary}" in groups and "{grp.getgrgid(other).gr_name}" in groups'
    c = LocalCluster(nodes={"n1": {"cpus": 2, "memory": 2000, **keys}}, master_extra={
        **keys, "rules": [{"if": rule, "warn": "her primary group"}], "limits": {f"group.{primary}": {"cpus": 1}}})
    c.secret = keys["secret_file"]
    auth.use(c.secret)
    try:
        c.start()
        env = _users_env(c, tmp_path)
        code, out = _as_user(alice, env, ["--nowait", "sleep", "60"], cwd=str(tmp_path), gid=other)
        assert code == 0 and "warning: her primary group" in out, out
        first = int(out.split()[-1])
        wait_for(lambda: c.client().job(first)["state"] == "running", timeout=20)
        code, out = _as_user(alice, env, ["--nowait", "-o", "ids", "sh", "-c", "id -g; id -G"], cwd=str(tmp_path), gid=other)
        assert code == 0 and "warning: her primary group" in out, out
        time.sleep(2)  # (her group's limit: 1 cpu, which her first job holds)
        assert (c.client().job(first)["group"], c.client().job(first + 1)["state"]) == (primary, "queued")
        c.client().kill([first])
        wait_for(lambda: (ids := tmp_path / "ids").exists() and len(ids.read_text().splitlines()) == 2, timeout=20)
        gid, gids = (tmp_path / "ids").read_text().splitlines()
        assert gid == str(other) and {str(alice.pw_gid), str(other)} <= set(gids.split()), (gid, gids)
    finally:
        c.stop()
        auth.use(None)


@ROOT_ONLY
def test_a_plain_users_daemon_control_of_roots_daemons_is_one_line(users, shared_dir):
    """QA: a user's `grun -d -k` said "not running" (exit 0) of root's running daemons when their spool was unreadable
    and "[Errno 1] Operation not permitted" when not; `-d -R`: "[Errno 13] Permission denied: .../grun.log"."""
    import grun.daemon  # noqa: F401  (before _as_user's fork: alice cannot read this Python's modules)
    (alice, _), tmp_path = users[0], shared_dir
    c = LocalCluster(nodes={})
    try:
        c.start_master()
        shutil.copy(c.configs["master"], tmp_path / "grun.conf")
        os.chmod(tmp_path / "grun.conf", 0o644)
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
        spool = os.path.join(c.root, "master")
        for mode, owner in ((0o700, "another user: only that user or root"), (0o755, "root: only root")):
            os.chmod(c.root, mode)
            for flag, verb in (("-k", "stop"), ("-r", "reload"), ("-R", "restart"), ("-F", "start")):
                said = _as_user(alice, env, ["-C", str(tmp_path / "grun.conf"), "-d", flag], cwd=str(tmp_path))
                assert said == (1, f"grun: the daemons of {spool} run as {owner} can {verb} them\n"), said
        assert c.procs["master"].poll() is None
    finally:
        os.chmod(c.root, 0o700)
        c.stop()
