"""TLS on every connection (issue 15 point 7), Pyro5's and the output side channel's: daemons verify each other
with the cluster's CA, a user connects without a certificate and proves who they are with a credential, a peer
whose certificate the CA did not sign is refused, and a client and a cluster that disagree on TLS say so at
once. Plus the fuzz of test_auth, over TLS. Certificates made here with openssl."""
from __future__ import annotations

import contextlib
import os
import queue  # noqa: F401  (both imported before _as_user drops to a user who cannot read this Python)
import shutil
import socket
import ssl
import tempfile
import threading
import time

import pytest
from cluster import LocalCluster, tls_ca, tls_signed
from test_auth import ROOT_ONLY, _answer, _as_user, _fuzz, _log, fuzz, users  # noqa: F401  (users: a fixture)
from util import wait_for

from grun import auth, stream, wire

pytestmark = pytest.mark.skipif(not shutil.which("openssl"), reason="needs openssl to make certificates")


@pytest.fixture(scope="module")
def tls_cluster():
    root = tempfile.mkdtemp(prefix="grun-tls-")  # (not pytest's: a directory of root's own, which users cannot enter)
    os.chmod(root, 0o755)
    ca = tls_ca(root, "ca")
    keys = {"tls": tls_signed(root, "host", ca), "auth": "secret", "secret_file": os.path.join(root, "secret")}
    with open(os.open(keys["secret_file"], os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(os.urandom(32).hex())
    c = LocalCluster(nodes={"n1": {"cpus": 2, "memory": 2000, **keys}}, master_extra=keys)
    c.client_config = c.write_config("client", {"services": "exec", **keys})
    c.keys, c.tls_root = keys, root
    auth.use(keys["secret_file"], None, keys["tls"])  # this process's clients too
    try:
        with c:
            yield c
    finally:
        auth.use(None)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def outsider(tls_cluster) -> tuple[str, dict]:
    """Another CA, and a certificate for 127.0.0.1 that it signed."""
    other = tls_ca(tls_cluster.tls_root, "other-ca")
    return other[0], tls_signed(tls_cluster.tls_root, "stranger", other)


def test_jobs_run_over_tls_and_peers_outside_the_ca_are_refused(tls_cluster, outsider):
    c = tls_cluster
    r = c.grun("sh", "-c", "echo over tls; exit 3")
    assert (r.returncode, r.stdout) == (3, b"over tls\n"), r.stderr
    other_ca, stranger = outsider
    cases = {"a certificate of another CA": dict(c.keys, tls=stranger),
             "a CA that did not sign the daemons'": dict(c.keys, tls=dict(c.keys["tls"], ca=other_ca)),
             "the cluster's CA, and a certificate it did not sign": dict(c.keys, tls=dict(stranger, ca=c.keys["tls"]["ca"]))}
    for what, keys in cases.items():
        env = dict(c.env, GRUN_CONF=c.write_config("stranger", {"services": "exec", **keys}))
        started = time.monotonic()
        r = c.grun("--nowait", "true", env=env, timeout=20)
        assert r.returncode == 1 and r.stderr.count(b"\n") == 1 and time.monotonic() - started < 5, (what, r)
        assert b"certificate verify failed" in r.stderr or b"alert unknown ca" in r.stderr, (what, r)
    wait_for(lambda: "refused a connection from 127.0.0.1:" in _log(c, "master"), timeout=5)  # (the third case)
    r = c.grun("echo", "still serving")
    assert (r.returncode, r.stdout) == (0, b"still serving\n")


def test_a_client_and_a_cluster_that_disagree_on_tls_fail_at_once(tls_cluster):
    c = tls_cluster
    env = dict(c.env, GRUN_CONF=c.write_config("plain", {"services": "exec", "auth": "secret",
                                                          "secret_file": c.keys["secret_file"]}))
    started = time.monotonic()
    r = c.grun("--nowait", "true", env=env, timeout=20)  # (it was retried as a master away, for 600 s)
    assert r.returncode == 1 and time.monotonic() - started < 5 and r.stderr.count(b"\n") == 1, r
    assert b"the cluster speaks TLS only (config key tls" in r.stderr, r
    wait_for(lambda: "it speaks plain Pyro5, not TLS" in _log(c, "master"), timeout=5)
    auth.use(None)
    try:
        with LocalCluster(nodes={}) as plain:
            plain.client_config = plain.write_config("client", {"services": "exec", "tls": c.keys["tls"]})
            r = plain.grun("--nowait", "true", timeout=20)
    finally:
        auth.use(c.keys["secret_file"], None, c.keys["tls"])
    assert r.returncode == 1 and r.stderr.count(b"\n") == 1 and b"does not speak TLS (config key tls" in r.stderr, r


def test_a_peer_that_says_nothing_stalls_no_one(tls_cluster):
    """Pyro5 made the TLS handshake in its accept loop: one silent connection stopped the daemon's others."""
    c = tls_cluster
    node_port = int(next(n["uri"] for n in c.client().nodes() if n["name"] == "n1").rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", c.port)), socket.create_connection(("127.0.0.1", node_port)):
        r = c.grun("echo", "not stalled", timeout=20)
    assert (r.returncode, r.stdout) == (0, b"not stalled\n"), r.stderr


def test_a_peer_gone_in_the_handshake_is_away_not_a_refusal(tls_cluster):
    """A reset or an end mid-handshake (a daemon restarting) is retried as unreachable; only TLS's refusals are not."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        threading.Thread(target=lambda: server.accept()[0].close(), daemon=True).start()
        with pytest.raises(ConnectionError) as caught:
            wire.WireProxy(f"PYRO:grun.master@127.0.0.1:{server.getsockname()[1]}").ping()
    assert wire.is_unreachable(caught.value), caught.value


def test_the_side_channel_is_tls_both_ways_and_refuses_outsiders(tls_cluster, outsider):
    c = tls_cluster
    data = os.urandom(6 << 20)  # stdin and stdout at once: the node's pump and reader share one TLS connection
    r = c.grun("sh", "-c", "cat; echo done >&2", input=data, timeout=60)
    assert (r.returncode, r.stdout == data, r.stderr) == (0, True, b"done\n")
    client = c.client()
    job_id = client.submit(["sh", "-c", "echo streamed"]).id
    client.wait([job_id], 30)
    node = next(n["uri"] for n in client.nodes() if n["name"] == "n1").split("@", 1)[1]
    with wire.WireProxy(f"PYRO:grun.job.{job_id}@{node}") as sup:
        ticket = sup.attach(0, 0, False)
    where, token = (ticket["host"], ticket["port"]), ticket["token"]
    got = _answer(where, (token + auth.side_proof(token)).encode())  # in clear: nothing (or a TLS alert)
    assert got == b"" or got.startswith(b"\x15\x03"), got
    out = []
    auth.use(c.keys["secret_file"], None, dict(outsider[1], ca=c.keys["tls"]["ca"]))
    try:
        with pytest.raises((stream.StreamBroken, wire.NotAuthorized)):
            stream.attach(*where, token, stdout_fd=out.append)
    finally:
        auth.use(c.keys["secret_file"], None, c.keys["tls"])
    assert out == []
    wait_for(lambda: "refused: TLS" in _log(c, "n1"), timeout=5)
    assert stream.attach(*where, token, stdout_fd=out.append)["exit_code"] == 0 and out == [b"streamed\n"]


def _hello(context) -> bytes:
    """A real TLS ClientHello from `context`, to cut short and garble."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    with contextlib.suppress(ssl.SSLWantReadError):
        context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1").do_handshake()
    return outgoing.read()


def test_a_thousand_malformed_handshakes_over_tls_are_refused(tls_cluster):
    """test_auth's fuzz with TLS on: half of it inside TLS with the cluster's own certificate, half in clear
    (ClientHellos cut short or garbled, and Pyro5's messages)."""
    context = auth.tls_client()
    hello = _hello(context)

    def send(target, rng) -> bytes:
        if rng.random() < 0.5:
            return _answer(target, _fuzz(rng), context)
        cut = rng.randrange(len(hello))
        got = _answer(target, rng.choice([hello[:cut], hello[:cut] + rng.randbytes(rng.randrange(1, 300)), _fuzz(rng)]))
        assert got[:1] in (b"", b"\x15", b"\x16", b"P"), got[:60]  # TLS's alerts and handshake only, or Pyro5's refusal
        return b"" if got[:1] in (b"\x15", b"\x16") else got
    fuzz(tls_cluster, send)


@ROOT_ONLY
def test_a_user_without_a_certificate_connects_and_runs_as_themselves(tls_cluster, users):  # noqa: F811
    (alice, _), _group = users
    c = tls_cluster
    conf = os.path.join(c.tls_root, "user.conf")
    shutil.copy(c.write_config("user", {"services": "exec", **c.keys}), conf)
    os.chmod(conf, 0o644)
    for name in ("ca.pem", "host.pem"):
        os.chmod(os.path.join(c.tls_root, name), 0o644)  # (the key and the secret stay root's)
    code, out = _as_user(alice, {"PATH": os.environ["PATH"], "GRUN_CONF": conf, "HOME": "/tmp"}, ["id", "-un"],
                         cwd="/tmp")
    assert (code, out.strip()) == (0, alice.pw_name), out


def test_the_tls_relay_sends_all_its_owner_wrote_before_hanging_up(tmp_path):
    """A node writes a stream's (or a staged transfer's) last bytes and closes at once: the relay still holds
    some, and its TLS sends block on a slow reader. It used to stop at the hang-up and drop them."""
    keys = tls_signed(str(tmp_path), "host", tls_ca(str(tmp_path), "ca"))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(keys["cert"], keys["key"])
    data, listener = os.urandom(8 << 20), socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = listener.accept()
        with stream.secure(conn, server, 10, server_side=True) as plain:
            plain.sendall(data)
    writer = threading.Thread(target=serve)
    writer.start()
    got = bytearray()
    with ssl.create_default_context(cafile=keys["ca"]).wrap_socket(
            socket.create_connection(listener.getsockname()), server_hostname="127.0.0.1") as reader:
        while chunk := reader.recv(64 << 10):
            got += chunk
            time.sleep(0.002)  # a slow reader: the relay's TLS sends block while its owner hangs up
    writer.join()
    listener.close()
    assert len(got) == len(data) and bytes(got) == data


def test_a_tls_node_of_a_plain_master_says_so_once_and_loudly(tmp_path):
    """TLS on one side only will not heal by retrying: the node's log says it once, as an error (it read as an
    unreachable master, at debug level, retried for good)."""
    keys = tls_signed(str(tmp_path), "host", tls_ca(str(tmp_path), "ca"))
    before = auth._path, None, auth._tls  # (the module's TLS cluster's, this process's clients' while it lives)
    auth.use(None)  # this process's client is one of the plain master
    c = LocalCluster(nodes={"n1": {"cpus": 1, "memory": 500, "tls": keys}})
    try:
        c.start_master()
        c.start_node("n1", wait=False)
        log = os.path.join(c.root, "n1", "grun.log")
        wait_for(lambda: os.path.exists(log) and "ERROR" in open(log).read(), 20, what="the node's error")
        time.sleep(2.5)  # more attempts (one a second): no more lines
        text = open(log).read()
        assert text.count(" refused this node: ") == 1 and "WRONG_VERSION_NUMBER" in text, text[-2000:]
        assert not any(n["up"] for n in c.client().nodes())
    finally:
        c.stop()
        auth.use(*before)
