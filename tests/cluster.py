"""Real clusters on 127.0.0.1 for tests and benchmarks (bench/ puts tests/ on its path): config files
in a temp dir, a master and nodes as real daemon processes (`python -m grun.daemon CONF`), and a clean
stop of each by its pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import psutil
import yaml

from grun.client import Client

TEST_USER = "grun test user"


def account(*argv: str, check: bool = True) -> None:
    """useradd, usermod, groupadd, userdel or groupdel: retried while another test worker holds the lock
    on /etc/passwd or /etc/group (the shadow tools refuse at once rather than wait), or while a process of
    the user being removed is still ending (a job killed a moment ago). A user added is marked as a test's (its
    comment, TEST_USER): only such a user is ever removed by conftest's sweep."""
    argv = (*argv[:1], "-c", TEST_USER, *argv[1:]) if argv[0] == "useradd" else argv
    for attempt in range(100):
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode == 0 or "lock" not in r.stderr and "currently used" not in r.stderr:
            break
        if attempt == 20 and argv[0] == "userdel":  # a job of this test user left stopped (suspended) or stuck
            for proc in psutil.process_iter(["username"]):  # (its processes: a test user's own, this test's)
                if proc.info["username"] == argv[-1]:
                    with contextlib.suppress(psutil.Error):
                        proc.kill()
        time.sleep(0.1)
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")


def tls_ca(root: str, name: str) -> tuple[str, str]:
    """A certificate authority made with openssl: its certificate and key (mode 0600)."""
    key, cert = os.path.join(root, f"{name}.key"), os.path.join(root, f"{name}.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    f"/CN={name}", "-keyout", key, "-out", cert], check=True, capture_output=True)
    os.chmod(key, 0o600)
    return cert, key


def tls_signed(root: str, name: str, ca: tuple[str, str]) -> dict:
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


def _state(pid: int) -> bytes:
    """A process's state letter (b"Z": a zombie), b"" once gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return b""


def _says(path: str, text: str) -> bool:
    try:
        with open(path) as f:
            return text in f.read()
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """A master and named nodes, each its own process with its own config and spool."""

    def __init__(self, nodes: dict[str, dict] | None = None, root: str | None = None, master_extra: dict | None = None):
        self.root = root or tempfile.mkdtemp(prefix="grun-test-")
        self._own_root = root is None
        self.port = free_port()
        self.node_specs = nodes if nodes is not None else {"big": {"cpus": 4, "memory": 8000},
                                                            "small": {"cpus": 1, "memory": 2000}}
        self.master_extra = master_extra or {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.clients: list[subprocess.Popen] = []  # (popen's: a test that failed before waiting for one left it running)
        self.configs: dict[str, str] = {}
        self.client_config = self.write_config("client", {"services": "exec"})

    # ---- configs -------------------------------------------------------------------------------

    def write_config(self, name: str, extra: dict) -> str:
        spool = os.path.join(self.root, name)
        os.makedirs(spool, exist_ok=True)
        cfg = {"master": f"127.0.0.1:{self.port}", "bind": "127.0.0.1", "spool": spool,
               "hostname": name, "heartbeat": 1, "log_level": "debug", "allow_root": True}
        cfg.update(extra)
        path = os.path.join(self.root, f"{name}.conf")
        with open(path, "w") as f:
            yaml.safe_dump(cfg, f)
        self.configs[name] = path
        return path

    @property
    def env(self) -> dict:
        """Environment for a `grun` client process that talks to this cluster."""
        env = dict(os.environ)
        env["GRUN_CONF"] = self.client_config
        env.pop("GRUN_MASTER", None)
        return env

    # ---- processes -----------------------------------------------------------------------------

    def start_master(self) -> None:
        path = self.write_config("master", {"services": "queue", **self.master_extra})
        self._spawn("master", path)
        self.client(connect_wait=30).call("ping")  # (a loaded machine: a master has taken over 10 s to start)

    def start_node(self, name: str, wait: bool = True) -> None:
        spec = self.node_specs[name]
        # nodes here share one machine, so each would see the others' jobs (and the test runner) as
        # outside load: off unless a test asks for it
        path = self.write_config(name, {"services": "exec", "count_outside_load": False, **spec})
        self._spawn(name, path)
        if wait:
            self.wait_nodes([name])
            # a restart: the master may list the killed daemon as up still; this one has registered (and so adopted
            # its spool's jobs) once its log says so
            log, said = os.path.join(self.root, name, "grun.log"), f"grun.node[{self.procs[name].pid}] INFO registered"
            deadline = time.monotonic() + 20
            while not _says(log, said) and time.monotonic() < deadline:
                time.sleep(0.02)

    def start(self) -> LocalCluster:
        self.start_master()
        for name in self.node_specs:
            self.start_node(name, wait=False)
        self.wait_nodes(list(self.node_specs))
        return self

    def _spawn(self, name: str, config: str) -> None:
        log = open(os.path.join(self.root, f"{name}.out"), "ab")
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "grun.daemon", config],
                                            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        log.close()

    def wait_nodes(self, names: list[str], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        client = self.client()
        while time.monotonic() < deadline:
            up = {n["name"] for n in client.nodes() if n["up"]}
            if set(names) <= up:
                return
            time.sleep(0.05)
        raise TimeoutError(f"nodes {names} did not register; see {self.root}/*.out")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def client(self, connect_wait: float = 10.0) -> Client:
        return Client("127.0.0.1", self.port, connect_wait=connect_wait)

    def grun(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        """Run the real `grun` command line against this cluster."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("timeout", 60)
        kwargs.setdefault("env", self.env)
        return subprocess.run([sys.executable, "-m", "grun.cli", *args], **kwargs)

    def popen(self, *args: str, **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("env", self.env)
        self.clients.append(p := subprocess.Popen([sys.executable, "-m", "grun.cli", *args], **kwargs))
        return p

    def stop(self) -> None:
        for p in self.clients:
            if p.poll() is None:
                p.kill()
                p.wait()
        for name, proc in self.procs.items():  # all at once, then each waited for
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL if self._throwaway(name) else signal.SIGTERM)
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM)
            with contextlib.suppress(OSError, ValueError):  # one restarted (`grun -d -R`) is another: its pid file's
                pid = int(open(os.path.join(self.root, name, "grun.pid")).read())
                if self.configs[name].encode() in open(f"/proc/{pid}/cmdline", "rb").read():  # (not a reused pid)
                    os.kill(pid, signal.SIGKILL)
        self._kill_leftover_jobs()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def _throwaway(self, name: str) -> bool:
        """Whether a daemon is killed at our stop, not stopped: its clean stop (0.2-0.5 s: a snapshot, its loops
        joined) would go with our spool; but not one with a secret, whose credential socket (in auth.CRED_DIR, which
        outlives us) its clean stop removes. (A test that means to stop a daemon cleanly does: c.kill(name, SIGTERM).)"""
        with contextlib.suppress(OSError, yaml.YAMLError, AttributeError), open(self.configs[name]) as f:
            return self._own_root and yaml.safe_load(f).get("auth") in (None, "none")
        return False

    def _kill_leftover_jobs(self) -> None:
        """Jobs outlive their daemons by design; a test must not leave them behind. (Their reaper, left
        without input and jobs, then exits by itself, having reaped them.)"""
        reapers = set()
        for name in self.node_specs:
            jobs_dir = os.path.join(self.root, name, "node", "jobs")
            for entry in os.listdir(jobs_dir) if os.path.isdir(jobs_dir) else ():
                # Read here, not through grun.spool: bench runs this file against older commits too. A reaper is
                # named "PID" or "PID.START" (its start time); a full disk names the job in a file "pid.PID.REAPER".
                job_dir = os.path.join(jobs_dir, entry)
                with contextlib.suppress(OSError, ValueError, IndexError):  # no pid yet; or the job ended meanwhile
                    marked = [n.split(".", 2)[1:] for n in os.listdir(job_dir) if n.startswith("pid.")]
                    pid, reaper = (marked or [open(os.path.join(job_dir, "pid")).read().split()])[0][:2]
                    reapers.add(int(reaper.split(".")[0]))
                    os.killpg(int(pid), signal.SIGKILL)  # the job's process group
        deadline = time.monotonic() + 5  # its reaper writes the job's end: not into a tree removed meanwhile (it made
        while reapers and time.monotonic() < deadline:  # the job's directory again, left in /tmp)
            reapers = {r for r in reapers if _state(r) not in (b"", b"Z")}
            time.sleep(0.05)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:  # a cluster that failed to start halfway leaves nothing behind either
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()
