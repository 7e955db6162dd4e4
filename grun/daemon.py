"""Running grun's services as daemons: one process hosts the configured services (queue, exec), writes
a pid file and a log file, reloads its config on SIGHUP through the table of keys (grun/config.py), and
stops cleanly on SIGTERM/SIGINT. Also starting such a process in the background, stopping it by its pid
file, and the personal cluster that `grun CMD` starts when there is no config and no master.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time

from . import registry
from .config import KEYS, Config, ConfigError, format_hostport, load_config
from .files import read_int

log = logging.getLogger("grun.daemon")


class DaemonError(Exception):
    pass


def running_pid(cfg: Config) -> int | None:
    """The pid of the daemon holding the pid file's lock; a stale file (or a zombie) is not running."""
    try:
        fd = os.open(cfg.pid_file, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # nobody holds the lock
    except BlockingIOError:
        return read_int(cfg.pid_file)
    finally:
        os.close(fd)  # also drops the lock if we got it


def _lock_pid_file(pid_file: str, takeover: bool) -> int:
    """Open and lock the pid file; with takeover, wait for the running daemon to let go of it."""
    if takeover:
        with open(pid_file + ".takeover", "w") as f:  # tells `grun -d -R` we are ready to wait
            f.write(f"{os.getpid()}\n")
    while True:
        fd = os.open(pid_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if takeover else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise DaemonError(f"already running (pid file {pid_file} is locked by pid {read_int(pid_file)})") from None
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(pid_file).st_ino:
                return fd
        os.close(fd)  # the daemon we waited for removed the file we locked: lock the new one


def _settings(cfg: Config, service: str) -> dict:
    """The values of the keys that `service` reads (KEYS), as keyword arguments for its actor."""
    return {name: getattr(cfg, name) for name, key in KEYS.items() if key.service == service}


def serve(cfg: Config, services: frozenset[str] | None = None, foreground: bool = True,
          takeover: bool = False) -> int:
    """Run the services until SIGTERM or SIGINT. Returns an exit code. With takeover, first wait
    for the daemon running now to exit (a graceful restart started us while it still ran)."""
    services = services or cfg.services
    handlers: list[logging.Handler] = []
    if cfg.log_file:
        os.makedirs(os.path.dirname(cfg.log_file) or ".", exist_ok=True)
        handlers.append(logging.FileHandler(cfg.log_file))
    if foreground or not handlers:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=cfg.log_level.upper(), handlers=handlers, force=True,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    for warning in cfg.warnings:
        log.warning("%s", warning)
    os.makedirs(cfg.spool, mode=0o755, exist_ok=True)
    pid_file = cfg.pid_file if services == cfg.services else f"{cfg.pid_file}.{'-'.join(sorted(services))}"
    if takeover:  # load everything before waiting, so the handover costs no import time
        from .actors import master as _m  # noqa: F401
    lock_fd = _lock_pid_file(pid_file, takeover)
    if takeover:
        log.info("took over from the previous daemon")
        with contextlib.suppress(OSError):
            os.unlink(pid_file + ".takeover")
    os.ftruncate(lock_fd, 0)
    os.write(lock_fd, f"{os.getpid()}\n".encode())

    stop, wake, reload_asked = threading.Event(), threading.Event(), threading.Event()

    def on_signal(signum, _frame):
        (reload_asked if signum == signal.SIGHUP else stop).set()
        wake.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    master = master_daemon = node = None
    code = 0
    try:
        if "queue" in services:
            from .actors.master import Master
            master_daemon = registry.start_master_daemon(cfg.bind, cfg.master_port, cfg.advertise)
            master = Master(os.path.join(cfg.spool, "master"), **_settings(cfg, "queue"))
            uri = master_daemon.register(master, registry.MASTER_NAME)
            master_daemon.nameserver.register(registry.MASTER_NAME, str(uri))
            registry.serve_in_thread(master_daemon, "grun-master-pyro")
            log.info("master listening on %s", format_hostport(cfg.bind, cfg.master_port))
        if "exec" in services:
            from .actors.node import Node
            settings = _settings(cfg, "exec")
            node = Node(settings.pop("hostname"), os.path.join(cfg.spool, "node"), master_host=cfg.master_host,
                        master_port=cfg.master_port, bind=cfg.bind, advertise=cfg.advertise, **settings)
            log.info("node %s serving at %s (%s cpus, %s MB)", cfg.hostname, node.uri, cfg.cpus, cfg.memory)
        while not stop.is_set():
            wake.wait(1.0)
            wake.clear()
            if reload_asked.is_set():
                reload_asked.clear()
                cfg = reload(cfg, master, node)
            if master is not None and master.failed.is_set():
                log.critical("the master's journal failed; exiting so that a restart reads the disk again")
                code = 1
                break
        log.info("stopping")
    except OSError as exc:
        log.error("cannot start: %s", exc)
        raise DaemonError(f"cannot start: {exc}") from None
    finally:
        if master is not None:
            master.begin_shutdown()  # from here callers get "restarting", which clients retry
        for actor in (node, master_daemon, master):
            if actor is not None:
                actor.shutdown()
        with contextlib.suppress(OSError):
            os.unlink(pid_file)
        os.close(lock_fd)
    return code


def reload(cfg: Config, master=None, node=None) -> Config:
    """Re-read the config file (SIGHUP, `grun -d -r`): each changed key is applied by the service that
    reads it (Master/Node.reconfigure; the log level here), or logged as needing `grun -d -R`, or as read
    by no service of this daemon. A bad file is reported and the running config kept."""
    try:
        new = load_config(cfg.path)
    except Exception as exc:  # a broken edit must not take the daemon down
        log.error("reload: %s; keeping the running config", exc)
        return cfg
    for warning in new.warnings:
        log.warning("reload: %s", warning)
    changed = [name for name in KEYS if getattr(new, name) != getattr(cfg, name)]
    logging.getLogger().setLevel(new.log_level.upper())
    applied = {"log_level": new.log_level} if "log_level" in changed else {}
    actors = {"queue": master, "exec": node}
    for service, actor in actors.items():
        asked = {name: getattr(new, name) for name in changed if KEYS[name].service == service and KEYS[name].reload}
        if actor is not None and asked:
            try:
                applied.update(actor.reconfigure(**asked))
            except Exception:  # logged; the daemon serves on, and the keys are reported below
                log.exception("reload: the %s service could not apply %s", service, ", ".join(asked))
    unread = [name for name in changed if KEYS[name].service in actors and actors[KEYS[name].service] is None]
    restart = [name for name in changed if name not in applied and name not in unread]
    log.info("reloaded %s: %s", cfg.path or "the default config", "applied " + ", ".join(
        f"{name}={value!r}" for name, value in applied.items()) if applied else "nothing to apply")
    for names, why in ((restart, "need a restart (grun -d -R)"), (unread, "no service of this daemon reads them")):
        if names:
            log.warning("reload: %s changed but %s", ", ".join(names), why)
    for name in set(changed) - set(applied):  # run on with what runs: the next reload reports them again
        setattr(new, name, getattr(cfg, name))
    return new


def start_background(cfg: Config, wait: float = 15.0, takeover_from: int | None = None) -> int:
    """Start `serve` in a detached process; returns its pid once its pid file names it. With
    takeover_from (a running daemon's pid), the new process loads its code, then waits for that
    one to exit, which it asks with SIGTERM once the new one is ready to wait."""
    pid = running_pid(cfg)
    if pid and pid != takeover_from:
        raise DaemonError(f"already running (pid {pid})")
    os.makedirs(cfg.spool, mode=0o755, exist_ok=True)
    for warning in cfg.warnings:  # `grun -d` and `grun -d -R` say it where the user looks, and in the log
        print(f"grun: warning: {warning}", file=sys.stderr)
    args = [sys.executable, "-m", "grun.daemon", cfg.path or "", *(["--takeover"] if takeover_from else [])]
    log_path = cfg.log_file or os.path.join(cfg.spool, "grun.log")
    with open(log_path, "ab") as log_out, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(args, stdin=devnull, stdout=log_out, stderr=log_out,
                                start_new_session=True, close_fds=True)
    deadline, asked = time.monotonic() + wait, False
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DaemonError(f"the daemon exited at once (code {proc.returncode}); see {log_path}")
        if running_pid(cfg) == proc.pid:
            return proc.pid
        # the new daemon has loaded its code and waits for the pid file's lock (see _lock_pid_file)
        if takeover_from and not asked and read_int(cfg.pid_file + ".takeover") == proc.pid:
            asked = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(takeover_from, signal.SIGTERM)
        time.sleep(0.01)
    raise DaemonError(f"the daemon did not start within {wait:.0f} s; see {log_path}")


def ask_reload(cfg: Config) -> int | None:
    """SIGHUP to the running daemon; its pid, or None when none runs."""
    pid = running_pid(cfg)
    if pid is not None:
        os.kill(pid, signal.SIGHUP)
    return pid


def restart(cfg: Config, wait: float = 30.0) -> tuple[int | None, int]:
    """Graceful restart (`grun -d -R`): a new daemon (new code, new config) starts and loads, then the
    running one writes a snapshot and exits, and the new one takes over its pid file, state and port at
    once; clients and nodes retry meanwhile, so they see a pause, not an error. Returns (old, new pid)."""
    old = running_pid(cfg)
    return old, start_background(cfg, wait=wait, takeover_from=old)


def stop(cfg: Config, wait: float = 15.0) -> bool:
    """Stop the daemon named by the pid file. False when none was running."""
    pid = running_pid(cfg)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while running_pid(cfg) is not None:
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    return True


def ensure_personal_cluster(cfg: Config, client, announce) -> None:
    """Start the personal cluster if nothing answers at its address, then wait until it can run jobs."""
    os.makedirs(cfg.spool, mode=0o755, exist_ok=True)
    with open(os.path.join(cfg.spool, "start.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two grun started together must not both start a cluster
        if not client.reachable():
            if running_pid(cfg) is None:
                start_background(cfg)
                announce(f"grun: started a personal cluster on {client.address} (state in {cfg.spool}); "
                         f"stop it with: grun -d -k")
            deadline = time.monotonic() + 30.0
            while time.monotonic() < deadline:
                if client.reachable() and any(n["up"] for n in client.nodes()):
                    return
                time.sleep(0.02)


def main(argv: list[str]) -> int:
    path = next((a for a in argv if a != "--takeover"), "")
    try:
        return serve(load_config(path or None), foreground=False, takeover="--takeover" in argv)
    except (ConfigError, DaemonError) as exc:
        print(f"grun: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
