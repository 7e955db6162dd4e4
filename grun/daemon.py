"""A grun daemon: the services it hosts, built from the table of keys (grun/config.py): "queue" is the Master,
served with the name server on the master port, "exec" the Node, each given its keys (on a reload, those that
changed). serve runs them, logs, locks its pid file while it runs (a stale file never passes for a live daemon),
stops on SIGTERM or SIGINT, reloads on SIGHUP. And its control from outside, `grun -d`: start in the background,
stop (-k), reload (-r), replace without a gap (-R), and the personal cluster `grun CMD` starts when none is up."""

import contextlib
import fcntl
import grp
import logging
import os
import pwd
import queue
import select
import signal
import subprocess
import sys
import time

from . import auth, plugins, registry
from .config import KEYS, Config, ConfigError, checks, load_config, written
from .files import locked, make_dirs, read_int
from .journal import StoreError
from .spool import process_name
from .values import format_hostport

log = logging.getLogger("grun.daemon")
KEEPING = "keeping the running config"  # (the end of a reload refused: `grun -d -r` looks for it)


class DaemonError(Exception):
    pass


def running_pid(cfg: Config) -> int | None:
    """The pid of the daemon holding the pid file's lock; a stale file (or a zombie) is not running."""
    return read_int(cfg.pid_file) if locked(cfg.pid_file) else None


def _lock_pid_file(pid_file: str, replacing: int | None) -> int:
    """Lock the pid file, our pid in it; `replacing`: its holder, asked to exit (it writes a snapshot), then awaited."""
    if replacing:  # load everything before taking over, so the handover costs no import time
        from .actors import master as _m  # noqa: F401
        with contextlib.suppress(ProcessLookupError):
            os.kill(replacing, signal.SIGTERM)
    while True:
        fd = os.open(pid_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if replacing else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise DaemonError(f"already running (pid file {pid_file} is locked by pid {read_int(pid_file)})") from None
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(pid_file).st_ino:
                break
        os.close(fd)  # the daemon we waited for removed the file we locked: lock the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class Services:
    def __init__(self, cfg: Config):
        self.cfg, self.master, self.master_daemon, self.node = cfg, None, None, None
        self.plugins = plugins.load(cfg)
        log.info("plugins: %s", ", ".join(self.plugins.names) or "none")

    def _settings(self, service: str) -> dict:
        return {name: getattr(self.cfg, name) for name, key in KEYS.items() if key.service == service}

    def start(self, services: frozenset[str]) -> None:
        cfg = self.cfg
        if "queue" in services:
            from .actors.master import Master
            try:
                self.master_daemon = registry.start_master_daemon(cfg.bind, cfg.master_port, cfg.advertise)
            except OSError as exc:  # (which address: "Address already in use" alone does not say)
                raise OSError(exc.errno, f"{exc.strerror}: {format_hostport(cfg.bind, cfg.master_port)}") from None
            self.master = Master(os.path.join(cfg.spool, "master"), plugins=self.plugins, **self._settings("queue"))
            uri = self.master_daemon.register(self.master, registry.MASTER_NAME)
            self.master_daemon.nameserver.register(registry.MASTER_NAME, str(uri))
            registry.serve_in_thread(self.master_daemon, "grun-master-pyro")
            log.info("master listening on %s", format_hostport(cfg.bind, cfg.master_port))
        if "exec" in services:
            from .actors.node import Node
            settings = self._settings("exec")
            self.node = Node(settings.pop("hostname"), os.path.join(cfg.spool, "node"), master_host=cfg.master_host,
                             master_port=cfg.master_port, bind=cfg.bind, advertise=cfg.advertise,
                             plugins=self.plugins, **settings)
            log.info("node %s serving at %s (%s cpus, %s MB)", cfg.hostname, self.node.uri, cfg.cpus, cfg.memory)

    def reload(self) -> None:
        """Re-read the config file (SIGHUP, `grun -d -r`): each changed key is applied by the actor that reads it (the
        log level here), or logged as needing `grun -d -R` or as read by no service here; a bad file changes nothing."""
        old = self.cfg
        try:
            new = load_config(old.path, use_auth=False)
            self.plugins.replace(plugins.load(new).all)  # (a plugin that cannot load keeps the running config)
        except Exception as exc:  # a broken edit must not take the daemon down
            log.error("reload: %s; %s", exc, KEEPING)
            return
        for warning in checks(new, {"queue"} if self.master is not None else ()):
            log.warning("reload: %s", warning)
        changed = [name for name in KEYS if getattr(new, name) != getattr(old, name)]
        logging.getLogger().setLevel(new.log_level.upper())
        applied = {key: getattr(new, key) for key in ("log_level", "plugins") if key in changed}
        if self.node is not None:
            self.node.replug()
        actors = {"queue": self.master, "exec": self.node}
        for service, actor in actors.items():
            asked = {key: getattr(new, key) for key in changed if KEYS[key].service == service and KEYS[key].reload}
            if actor is not None and asked:
                try:
                    applied.update(actor.reconfigure(**asked))
                except Exception:  # logged; the daemon serves on, and the keys are reported below
                    log.exception("reload: the %s service could not apply %s", service, ", ".join(asked))
        unread = [name for name in changed if KEYS[name].service in actors and actors[KEYS[name].service] is None]
        restart = [name for name in changed if name not in applied and name not in unread]
        others = " and ".join(sorted({KEYS[name].service for name in unread}))
        for names, why in ((restart, "applied at the next restart (grun -d -R)"),
                           (unread, f"for the {others} service, which this daemon does not run")):
            if names:
                log.warning("reload: %s changed: %s", ", ".join(names), why)
        level = max(logging.INFO, logging.getLogger().getEffectiveLevel())  # (last, and at any log_level: ask_reload)
        log.log(level, "reloaded %s: %s", old.path or "the default config", "applied " + "; ".join(
            f"{name}: {written(value, True)}" for name, value in applied.items()) if applied else "nothing to apply")
        for name in set(changed) - set(applied):  # run on with what runs: the next reload reports them again
            setattr(new, name, getattr(old, name))
        self.cfg = new

    def shutdown(self) -> None:
        if self.master is not None:
            self.master.begin_shutdown()  # from here callers get "restarting", which clients retry
        for actor in (self.node, self.master_daemon, self.master):
            if actor is not None:
                actor.shutdown()


def serve(cfg: Config, services: frozenset[str] | None = None, foreground: bool = True,
          replacing: int | None = None) -> int:
    """Serve until SIGTERM or SIGINT; the exit code. `replacing`: the pid of the daemon this one replaces."""
    services = services or cfg.services
    ready_fd = os.environ.pop("GRUN_READY_FD", None)  # start_background's pipe: written once we serve
    try:  # (a read-only or missing spool, a log file we cannot open: one line, not a traceback)
        _check_spool(cfg.spool, "exec" in services)
        handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)] if foreground or not cfg.log_file else []
        if cfg.log_file:
            os.makedirs(os.path.dirname(cfg.log_file) or ".", exist_ok=True)
            handlers.append(logging.FileHandler(cfg.log_file))
        logging.basicConfig(level=cfg.log_level.upper(), handlers=handlers, force=True,
                            format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
        for warning in checks(cfg, services):  # (a node's overclaim: Slurm's Low RealMemory)
            log.warning("%s", warning)
        _use_secret(cfg)
        pid_file = cfg.pid_file if services == cfg.services else f"{cfg.pid_file}.{'-'.join(sorted(services))}"
        hosted = Services(cfg)  # (its plugins load first: one that cannot is refused before we take the pid file)
        lock_fd = _lock_pid_file(pid_file, replacing)
    except OSError as exc:
        raise DaemonError(f"cannot start: {exc}") from None
    if replacing:
        log.info("took over from the previous daemon (pid %d)", replacing)
    signals = queue.SimpleQueue()  # taken by the loop below: a handler must not do the work (put is reentrant)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: signals.put(signum))
    try:
        hosted.start(services)
        if ready_fd:  # (whoever started us may have stopped waiting: a slow start is still a start)
            node = hosted.node  # R: the master refused this node (it said why); a master away for 5 s is no failure
            refused = node and _wait(lambda: node.first_word() is not None, 5.0, 0.02) and node.first_word()
            with contextlib.suppress(OSError):
                os.write(int(ready_fd), b"R" + refused.encode()[:500] if refused else b"1")  # (a pipe's atomic write)
            os.close(int(ready_fd))
        while hosted.master is None or not hosted.master.failed.is_set():  # until the master's journal fails
            with contextlib.suppress(queue.Empty):
                if signals.get(timeout=1.0) != signal.SIGHUP:
                    log.info("stopping")
                    return 0
                hosted.reload()
        log.critical("the master's journal failed; exiting so that a restart reads the disk again")
        return 1
    except (OSError, StoreError) as exc:  # (StoreError: the spool's journal is another master's, or unreadable)
        log.error("cannot start: %s", exc)
        raise DaemonError(f"cannot start: {exc}") from None
    finally:
        hosted.shutdown()
        with contextlib.suppress(OSError):
            os.unlink(pid_file)
        os.close(lock_fd)


def _check_spool(path: str, node: bool) -> None:
    """The spool, made, and refused if another user could change what is in it (a root daemon acts on its job.json
    and pid files): it must be ours, the directories above it ours or root's, none writable by others but a sticky
    one above it (as sshd's StrictModes). A node's is searchable by all, whatever our umask (UMask=077): its jobs
    reach their TMPDIR through it. Group write is ours when the group is our private one (Debian's StrictModes)."""
    make_dirs(path)
    at = spool = os.path.realpath(path)
    while True:
        st = os.stat(at)
        if st.st_uid != os.geteuid() and (st.st_uid != 0 or at == spool):
            raise DaemonError(f"cannot start: {at} is owned by uid {st.st_uid}: others could change the spool {path}")
        if st.st_mode & (0o002 if _private_group(st) else 0o022) and (at == spool or not st.st_mode & 0o1000):
            raise DaemonError(f"cannot start: {at} is writable by others (mode {st.st_mode & 0o7777:o}): others could "
                              f"change the spool {path} (chmod go-w it)")
        if at == "/":
            break
        at = os.path.dirname(at)
    if node:
        os.chmod(spool, os.stat(spool).st_mode | 0o111)


def _private_group(st: os.stat_result) -> bool:
    """Whether a directory is ours and its group our own, with no other members (umask 002's users: Debian, Fedora)."""
    with contextlib.suppress(KeyError):  # (a uid or gid without a name)
        return st.st_uid == os.geteuid() and st.st_gid == pwd.getpwuid(st.st_uid).pw_gid and not grp.getgrgid(
            st.st_gid).gr_mem
    return False


def _use_secret(cfg: Config) -> None:
    """The secret this daemon checks and presents (a personal cluster makes its own), or a warning: anyone may act."""
    if cfg.personal:
        auth.create(cfg.secret_file)
    if cfg.auth == "munge":
        try:  # munged is there for us, or we say so now rather than at every connection
            auth.proof()
        except ValueError as exc:
            raise DaemonError(str(exc)) from None
    elif cfg.auth != "secret":
        log.warning("this cluster is unauthenticated (no auth: in %s): whoever can connect to its daemons can run "
                    "jobs as any user (root too with allow_root) and control the cluster (README: Trust)", cfg.path)
    elif auth.key() is None:
        raise DaemonError(f"auth: secret, but cannot read secret_file {cfg.secret_file}: make one (e.g. "
                          "`openssl rand -hex 32 > FILE; chmod 600 FILE`) and copy it to every host")


def controllable(cfg: Config, what: str) -> None:
    """Refuse, one line, to `what` the daemons of a spool another user owns, as its daemons run as its owner (a plain
    user's `grun -d -k` of root's said "not running", its pid file unreadable, or "Operation not permitted")."""
    try:
        owner = os.stat(cfg.spool).st_uid
    except FileNotFoundError:
        return
    except PermissionError:  # (under a directory of theirs)
        owner = -1
    if os.geteuid() not in (0, owner):
        name, only = ("root", "root") if owner == 0 else (auth.account(owner, 0)[0], "they or root") if owner > 0 else (
            "another user", "that user or root")
        raise DaemonError(f"the daemons of {cfg.spool} run as {name}: only {only} can {what} them")


def _wait(done, seconds: float, every: float) -> bool:
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        time.sleep(every)
    return done()


def start_background(cfg: Config, wait: float = 15.0, replacing: int | None = None) -> int:
    """`serve` in a detached process: its pid once it serves (else why not, from its log); `replacing`: as serve's."""
    if (pid := running_pid(cfg)) and pid != replacing:
        raise DaemonError(f"already running (pid {pid})")
    make_dirs(cfg.spool)
    plugins.load(cfg, instantiate=False)  # (said here, not only in its log: the daemon has our environment)
    for warning in checks(cfg, cfg.services):  # (as the daemon's log will: README)
        print(f"grun: warning: {warning}", file=sys.stderr)
    args = [sys.executable, "-m", "grun.daemon", cfg.path or "", *([str(replacing)] if replacing else [])]
    log_path = cfg.log_file or os.path.join(cfg.spool, "grun.log")
    ready_r, ready_w = os.pipe()  # the daemon writes to it once it serves: its pid file alone comes before the bind
    with open(ready_r, "rb", buffering=0) as ready_in:
        try:
            with open(log_path, "ab") as log_out:
                proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log_out, stderr=log_out,
                                        pass_fds=(ready_w,), env={**os.environ, "GRUN_READY_FD": str(ready_w)},
                                        start_new_session=True)
        finally:
            os.close(ready_w)
        said = ready_in.read(512) if select.select([ready_in], [], [], wait)[0] else None  # None: no word yet
    if said and said.startswith(b"R"):  # (and why, in the same write)
        raise DaemonError(f"started (pid {proc.pid}), but {said[1:].decode(errors='replace')}; it retries each second "
                          f"(grun -d -k stops it; see {log_path})")
    if said == b"1" or said is None and proc.poll() is None and running_pid(cfg) == proc.pid:  # (or a long replay)
        return proc.pid
    if _wait(lambda: proc.poll() is not None, 2.0, 0.01):
        raise DaemonError(f"the daemon exited at once (code {proc.returncode}): {_last_line(log_path, proc.pid)} "
                          f"(see {log_path})")
    raise DaemonError(f"the daemon did not start within {wait:.0f} s; see {log_path}")


def _last_line(path: str, pid: int) -> str:
    """What the daemon `pid` said last in a log (it may be shared): one that could not start says why there last."""
    from .limits import _tail
    lines = _tail(path, 16384).decode(errors="replace").splitlines()
    own = [line for line in lines if f"[{pid}]" in line or line.startswith("grun: ")]
    return own[-1].split(" ERROR ", 1)[-1].removeprefix("grun: ") if own else "no reason in its log"


def ask_reload(cfg: Config, wait: float = 15.0) -> tuple[int | None, str | None]:
    """`grun -d -r`: SIGHUP to the running daemon; (its pid, its log's "reloaded ..."), None for what is not there in
    `wait` s, the lines it logged before on stderr; a DaemonError if it kept its running config. The daemon checks the
    plugins: here, in the client's environment, one only the daemon's PYTHONPATH finds would refuse the reload."""
    if (pid := running_pid(cfg)) is None:
        return None, None
    start = os.path.getsize(path) if (path := cfg.log_file) and os.path.exists(path) else 0
    os.kill(pid, signal.SIGHUP)
    said: list[str] = []

    def told() -> bool:
        with contextlib.suppress(OSError), open(path, "rb") as f:
            f.seek(start)
            said[:] = [message for line in f.read().decode(errors="replace").splitlines()
                       if (message := line.partition(f"[{pid}] ")[2].partition(" ")[2]).startswith(("reload", "plugin "))]
        return bool(said) and (said[-1].startswith("reloaded ") or said[-1].endswith(KEEPING))
    if not path or not _wait(told, wait, 0.05):
        return pid, None
    for message in said[:-1]:
        print(f"grun: {message}", file=sys.stderr)
    if said[-1].endswith(KEEPING):
        raise DaemonError(f"the daemon (pid {pid}) refused the {said[-1]}")
    return pid, said[-1]


def restart(cfg: Config, wait: float = 30.0) -> tuple[int | None, int]:
    """`grun -d -R`: a new daemon loads, then stops the running one (it writes a snapshot) and takes over at once:
    clients and nodes see a pause, not an error. Returns (old, new pid)."""
    return (old := running_pid(cfg)), start_background(cfg, wait=wait, replacing=old)


def stop(cfg: Config, wait: float = 15.0) -> int | None:
    """Stop the daemon named by the pid file, with SIGKILL after `wait` seconds; its pid, 0 once it is gone (not its pid
    file: a node's exit took seconds after), None when none was running."""
    if (pid := running_pid(cfg)) is None:
        return None
    os.kill(pid, signal.SIGTERM)
    if not _wait(lambda: process_name(pid) is None, wait, 0.05):
        with contextlib.suppress(ProcessLookupError):  # it has just gone
            os.kill(pid, signal.SIGKILL)
    return 0 if _wait(lambda: process_name(pid) is None, 5.0, 0.05) else pid


def ensure_personal_cluster(cfg: Config, client, announce) -> None:
    """Start the personal cluster if nothing answers at its address, then wait until it can run jobs."""
    make_dirs(cfg.spool)
    with open(os.path.join(cfg.spool, "start.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two grun started together must not both start a cluster
        if not client.reachable():
            if running_pid(cfg) is None:
                start_background(cfg)
                announce(f"grun: started a personal cluster on {client.address} (state in {cfg.spool}); "
                         f"stop it with: grun -d -k")
            _wait(lambda: client.reachable() and any(n["up"] for n in client.nodes()), 30.0, 0.02)


if __name__ == "__main__":  # `python -m grun.daemon [CONFIG [PID]]`, as start_background and the tests run
    path, replacing = (sys.argv[1:] + ["", ""])[:2]  # PID: the daemon this one replaces
    try:
        sys.exit(serve(load_config(path or None), foreground=False, replacing=int(replacing) if replacing else None))
    except (ConfigError, DaemonError) as exc:
        sys.exit(f"grun: {exc}")
