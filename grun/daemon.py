"""Running grun's services as daemons: one process hosts the configured services (queue, exec),
writes a pid file and a log file, and stops cleanly on SIGTERM/SIGINT. Also starting such a process in
the background, stopping it by its pid file, and the personal cluster that `grun CMD` starts when
there is no config and no master.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time

from . import registry
from .config import Config, load_config

log = logging.getLogger("grun.daemon")


class DaemonError(Exception):
    pass


def _read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            pid = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def running_pid(cfg: Config, pid_file: str | None = None) -> int | None:
    """The pid of the daemon holding the pid file's lock; a stale file (or a zombie) is not running."""
    pid_file = pid_file or cfg.pid_file
    try:
        fd = os.open(pid_file, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_pid(pid_file)
    finally:
        os.close(fd)  # also drops the lock if we got it
    return None


def _setup_logging(cfg: Config, foreground: bool) -> None:
    level = getattr(logging, cfg.log_level.upper(), logging.INFO)
    handlers: list[logging.Handler] = []
    if cfg.log_file:
        os.makedirs(os.path.dirname(cfg.log_file) or ".", exist_ok=True)
        handlers.append(logging.FileHandler(cfg.log_file))
    if foreground or not handlers:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=level, handlers=handlers, force=True,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")


def serve(cfg: Config, services: frozenset[str] | None = None, foreground: bool = True) -> int:
    """Run the services until SIGTERM or SIGINT. Returns an exit code."""
    services = services or cfg.services
    _setup_logging(cfg, foreground)
    os.makedirs(cfg.spool, mode=0o755, exist_ok=True)
    pid_file = cfg.pid_file if services == cfg.services else f"{cfg.pid_file}.{'-'.join(sorted(services))}"
    lock_fd = os.open(pid_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DaemonError(f"already running (pid file {pid_file} is locked by pid {_read_pid(pid_file)})") from None
    os.ftruncate(lock_fd, 0)
    os.write(lock_fd, f"{os.getpid()}\n".encode())

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    master = master_daemon = node = None
    try:
        if "queue" in services:
            from .actors.master import Master
            master_daemon = registry.start_master_daemon(cfg.bind, cfg.master_port, cfg.advertise)
            master = Master(os.path.join(cfg.spool, "master"), default_cpus=cfg.default_cpus,
                            default_memory=cfg.default_memory, node_timeout=cfg.node_timeout)
            uri = master_daemon.register(master, registry.MASTER_NAME)
            master_daemon.nameserver.register(registry.MASTER_NAME, str(uri))
            registry.serve_in_thread(master_daemon, "grun-master-pyro")
            log.info("master listening on %s", registry.format_hostport(cfg.bind, cfg.master_port))
        if "exec" in services:
            from .actors.node import Node
            node = Node(cfg.hostname, os.path.join(cfg.spool, "node"), cfg.cpus, cfg.memory,
                        master_host=cfg.master_host, master_port=cfg.master_port, bind=cfg.bind,
                        advertise=cfg.advertise, heartbeat=cfg.heartbeat, output_keep=cfg.output_keep)
            log.info("node %s serving at %s (%s cpus, %s MB)", cfg.hostname, node.uri, cfg.cpus, cfg.memory)
        while not stop.wait(1.0):
            pass
        log.info("stopping")
    except OSError as exc:
        log.error("cannot start: %s", exc)
        raise DaemonError(f"cannot start: {exc}") from None
    finally:
        if node is not None:
            node.shutdown()
        if master_daemon is not None:
            master_daemon.shutdown()
        if master is not None:
            master.shutdown()
        try:
            os.unlink(pid_file)
        except OSError:
            pass
        os.close(lock_fd)
    return 0


def start_background(cfg: Config, wait: float = 15.0) -> int:
    """Start `serve` in a detached process; returns its pid once its pid file names it."""
    pid = running_pid(cfg)
    if pid:
        raise DaemonError(f"already running (pid {pid})")
    os.makedirs(cfg.spool, mode=0o755, exist_ok=True)
    args = [sys.executable, "-m", "grun.daemon"]
    if cfg.path:
        args.append(cfg.path)
    log_path = cfg.log_file or os.path.join(cfg.spool, "grun.log")
    with open(log_path, "ab") as log_out, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(args, stdin=devnull, stdout=log_out, stderr=log_out,
                                start_new_session=True, close_fds=True)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DaemonError(f"the daemon exited at once (code {proc.returncode}); see {log_path}")
        if running_pid(cfg) == proc.pid:
            return proc.pid
        time.sleep(0.02)
    raise DaemonError(f"the daemon did not start within {wait:.0f} s; see {log_path}")


def stop(cfg: Config, wait: float = 15.0) -> bool:
    """Stop the daemon named by the pid file. False when none was running."""
    pid = running_pid(cfg)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if running_pid(cfg) is None:
            return True
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
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
    path = argv[0] if argv else None
    cfg = load_config(path or None)
    try:
        return serve(cfg, foreground=False)
    except DaemonError as exc:
        print(f"grun: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
