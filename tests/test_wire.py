"""grun/wire.py, the client's own Pyro5 wire protocol, held to real Pyro5 daemons (the contract in
DESIGN.md): the Pyro5 installed here, and each minor version of Pyro5 that pyproject.toml allows,
installed with pip into a temp dir and serving from a process of its own, set up as grun's daemons
are (grun.registry). A Pyro5 release outside the pinned range is not allowed until it is added here.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib

import pytest
from cluster import free_port

from grun import wire

TREE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER = """
import time
import Pyro5, Pyro5.api
from grun import registry

class Custom(Exception):
    pass

@Pyro5.api.expose
class Echo:
    def echo(self, *args, **kwargs):
        return [list(args), kwargs]
    def missing(self, key):
        raise LookupError(f"no job {key}")
    def refuse(self):
        raise ValueError("bad request")
    def custom(self):
        raise Custom("a grun-side failure")
    def broken(self):
        return self.echo.nothing  # an AttributeError inside a method, naming no method
    def slow(self, secs):
        time.sleep(secs)
        return "late"
    def big(self, n):
        return b"x" * n
    def version(self):
        return Pyro5.__version__
    def _private(self):
        pass

daemon = registry.start_master_daemon("127.0.0.1", 0, "127.0.0.1")  # as the master's, name server and all
print(daemon.register(Echo(), "grun.test.echo"), flush=True)
for bind in ("0.0.0.0", "::"):  # a node's daemon bound to all interfaces: the URIs it hands out
    try:
        node = registry.start_daemon(bind, "fd00::5")
    except OSError:  # (no IPv6 here)
        print("-", flush=True)
        continue
    print(node.uriFor("x"), node.sock.getsockname()[1], flush=True)
    node.close()
daemon.requestLoop()
"""


def allowed_minors() -> list[str]:
    """The Pyro5 versions pyproject.toml allows: it must pin a closed range, `Pyro5>=5.A,<5.B`."""
    with open(os.path.join(TREE, "pyproject.toml"), "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    pin = next(d.replace(" ", "") for d in deps if d.lower().startswith("pyro5"))
    m = re.fullmatch(r"Pyro5>=5\.(\d+),<5\.(\d+)", pin)
    assert m, f"pyproject.toml must pin Pyro5 to the range this test covers (>=5.A,<5.B), not {pin!r}"
    return [f"5.{minor}" for minor in range(int(m.group(1)), int(m.group(2)))]


@pytest.fixture(scope="module", params=["installed", *allowed_minors()])
def echo(request, tmp_path_factory):
    """(uri, Pyro5 version) of an Echo object on a Pyro5 daemon of the version asked for."""
    path = [TREE]
    if request.param != "installed":
        target = str(tmp_path_factory.mktemp(f"pyro5-{request.param}"))
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", target,
                            f"Pyro5=={request.param}.*"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"cannot install Pyro5 {request.param}: {r.stderr[-500:]}"
        path.insert(0, target)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    server = subprocess.Popen([sys.executable, "-c", SERVER], env=env, stdout=subprocess.PIPE, text=True)
    try:
        uri = server.stdout.readline().strip()
        advertised = [server.stdout.readline().split() for _ in range(2)]
        assert uri.startswith("PYRO:"), "the Pyro5 daemon did not start"
        with wire.WireProxy(uri) as p:
            version = p.version()
        if request.param != "installed":
            assert version.split(".")[:2] == request.param.split("."), "the daemon runs the Pyro5 asked for"
        yield uri, version, advertised
    finally:
        server.kill()
        server.wait()


def test_calls_and_values(echo):
    uri, _, _ = echo
    with wire.WireProxy(uri) as p:
        assert p.echo(1, "a", b"\x00", [1.5, None], {"k": True}) == [[1, "a", b"\x00", [1.5, None], {"k": True}], {}]
        assert p.echo(x=2) == [[], {"x": 2}]
        assert p.echo({3}) == [[[3]], {}]
        assert p.echo(-(2 ** 63), 2 ** 64 - 1, "é" * 1000) == [[-(2 ** 63), 2 ** 64 - 1, "é" * 1000], {}]
        with pytest.raises(TypeError, match="cannot send a object"):
            p.echo(object())
        assert p.echo(5) == [[5], {}]
        assert len(p.big(5 << 20)) == 5 << 20
        p._pyroOneway("echo", 6)
        assert p.echo(7) == [[7], {}], "a oneway call leaves no answer behind"


def test_each_kind_of_failure(echo):
    uri, _, _ = echo
    with wire.WireProxy(uri) as p:
        with pytest.raises(LookupError, match="no job 7"):
            p.missing(7)
        with pytest.raises(ValueError, match="bad request"):
            p.refuse()
        with pytest.raises(wire.RemoteError, match="a grun-side failure"):
            p.custom()
        for method in ("nope", "_private"):
            with pytest.raises(wire.NoSuchMethod, match=method):
                p._call(method, (), {})
        with pytest.raises(AttributeError) as err:
            p.broken()
        assert not isinstance(err.value, wire.NoSuchMethod), "the method ran: a bug in it, not a missing method"
        assert p.echo(3) == [[3], {}], "the connection survives remote errors"
        p._pyroTimeout = 0.3
        with pytest.raises(wire.CallTimeout) as err:
            p.slow(1.0)
        assert wire.is_unreachable(err.value) and isinstance(err.value, wire.CallBroken)
        p._pyroTimeout = 10
        assert p.echo(4) == [[4], {}], "reconnected; the late answer was not taken for this one"
    with pytest.raises(wire.CallRejected, match="unknown object") as err:
        wire.WireProxy(uri.replace("grun.test.echo", "grun.job.424242")).echo()
    assert wire.is_unreachable(err.value) and not isinstance(err.value, wire.CallBroken)


def test_our_own_errno_once_the_request_went_out_is_a_broken_call(echo):
    """ENOMEM or ENOBUFS after the request went out: the peer may have it, so a submission is retried with its token
    (it was a plain error of ours: a user resubmitting got a duplicate); before it went out, an error of ours at once."""
    import _socket
    import errno

    class Short(_socket.socket):  # our kernel out of memory at one step of the call
        def sendall(self, *args):
            if self.step == "send":
                raise OSError(errno.ENOBUFS, "No buffer space available")
            return super().sendall(*args)

        def recv_into(self, *args):
            if self.step == "receive":
                raise OSError(errno.ENOMEM, "Cannot allocate memory")
            return super().recv_into(*args)
    with wire.WireProxy(echo[0]) as p:
        for step, raised in (("receive", wire.CallBroken), ("send", OSError)):
            assert p.echo(1) == [[1], {}]
            p._sock = Short(fileno=p._sock.detach())
            p._sock.step = step
            with pytest.raises(raised) as err:
                p.echo(2)
            assert wire.is_unreachable(err.value) == (step == "receive"), err.value


def test_a_daemon_on_all_interfaces_hands_out_its_advertised_address_and_bound_port(echo):
    """0.0.0.0 and :: (Pyro5's own natport=0 could not read the port out of "[::]:PORT" before 5.17), and an
    IPv6 address bracketed (else a URI Pyro5 cannot parse)."""
    assert echo[2][0] != ["-"], "binding 0.0.0.0 failed"
    for words in echo[2]:  # ("-": no IPv6 here)
        assert words == ["-"] or words == [f"PYRO:x@[fd00::5]:{words[1]}", words[1]], words


def test_no_peer():
    with pytest.raises(ConnectionError) as err:
        wire.WireProxy(f"PYRO:x@127.0.0.1:{free_port()}", timeout=2).echo()
    assert wire.is_unreachable(err.value) and not isinstance(err.value, wire.CallBroken)
    assert wire.parse_uri("PYRO:grun.master@[::1]:5184") == ("grun.master", "::1", 5184)
    with pytest.raises(ValueError):
        wire.parse_uri("PYRONAME:grun.master")
