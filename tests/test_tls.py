"""TLS on every Pyro5 connection (issue 15 point 7): daemons verify each other with the cluster's CA, a user
connects without a certificate and proves who they are with a credential, and a peer whose certificate the
CA did not sign (or that speaks no TLS) is refused. Certificates made here with openssl."""
from __future__ import annotations

import os
import queue  # noqa: F401  (both imported before _as_user drops to a user who cannot read this Python)
import shutil
import ssl  # noqa: F401
import subprocess
import tempfile

import pytest
from cluster import LocalCluster
from test_auth import ROOT_ONLY, _as_user, users  # noqa: F401  (users: a fixture)

from grun import auth

pytestmark = pytest.mark.skipif(not shutil.which("openssl"), reason="needs openssl to make certificates")


def _ca(root: str, name: str) -> tuple[str, str]:
    key, cert = os.path.join(root, f"{name}.key"), os.path.join(root, f"{name}.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    f"/CN={name}", "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


def _signed(root: str, name: str, ca: tuple[str, str]) -> dict:
    """A certificate for 127.0.0.1 signed by `ca`, with its key (mode 0600) and the CA: a `tls:` value."""
    key, csr, cert, ext = (os.path.join(root, f"{name}.{x}") for x in ("key", "csr", "pem", "ext"))
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", key,
                    "-out", csr], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
                    "-days", "2", "-extfile", ext, "-out", cert], check=True, capture_output=True)
    os.chmod(key, 0o600)
    return {"cert": cert, "key": key, "ca": ca[0]}


@pytest.fixture(scope="module")
def tls_cluster():
    root = tempfile.mkdtemp(prefix="grun-tls-")  # (not pytest's: a directory of root's own, which users cannot enter)
    os.chmod(root, 0o755)
    ca = _ca(root, "ca")
    os.chmod(ca[1], 0o600)
    keys = {"tls": _signed(root, "host", ca), "auth": "secret", "secret_file": os.path.join(root, "secret")}
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


def test_jobs_run_over_tls_and_peers_outside_the_ca_are_refused(tls_cluster):
    c = tls_cluster
    r = c.grun("sh", "-c", "echo over tls; exit 3")
    assert (r.returncode, r.stdout) == (3, b"over tls\n"), r.stderr
    other = _ca(c.tls_root, "other-ca")
    stranger = _signed(c.tls_root, "stranger", other)
    cases = {"a certificate of another CA": dict(c.keys, tls=stranger),
             "a CA that did not sign the daemons'": dict(c.keys, tls=dict(c.keys["tls"], ca=other[0]))}
    for what, keys in cases.items():
        env = dict(c.env, GRUN_CONF=c.write_config("stranger", {"services": "exec", **keys}))
        r = c.grun("--nowait", "true", env=env, timeout=20)
        assert r.returncode == 1 and r.stderr.count(b"\n") == 1 and b"certificate verify failed" in r.stderr, (what, r)
    r = c.grun("echo", "still serving")
    assert (r.returncode, r.stdout) == (0, b"still serving\n")


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
