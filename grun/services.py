"""The services one daemon hosts, built from the table of keys (grun/config.py): "queue" is the Master,
served with the name server on the master port, and "exec" is the Node. Each actor gets the keys whose
service is its own; a reload hands it those of them that changed, and reports every other change."""

from __future__ import annotations

import logging
import os

from . import registry
from .config import KEYS, Config, format_hostport, load_config

log = logging.getLogger("grun.services")


class Services:
    """The actors of one daemon process (grun/daemon.py runs it)."""

    def __init__(self, cfg: Config):
        self.cfg, self.master, self.master_daemon, self.node = cfg, None, None, None

    def _settings(self, service: str) -> dict:
        return {name: getattr(self.cfg, name) for name, key in KEYS.items() if key.service == service}

    def start(self, services: frozenset[str]) -> None:
        cfg = self.cfg
        if "queue" in services:
            from .actors.master import Master
            self.master_daemon = registry.start_master_daemon(cfg.bind, cfg.master_port, cfg.advertise)
            self.master = Master(os.path.join(cfg.spool, "master"), **self._settings("queue"))
            uri = self.master_daemon.register(self.master, registry.MASTER_NAME)
            self.master_daemon.nameserver.register(registry.MASTER_NAME, str(uri))
            registry.serve_in_thread(self.master_daemon, "grun-master-pyro")
            log.info("master listening on %s", format_hostport(cfg.bind, cfg.master_port))
        if "exec" in services:
            from .actors.node import Node
            settings = self._settings("exec")
            self.node = Node(settings.pop("hostname"), os.path.join(cfg.spool, "node"), master_host=cfg.master_host,
                             master_port=cfg.master_port, bind=cfg.bind, advertise=cfg.advertise, **settings)
            log.info("node %s serving at %s (%s cpus, %s MB)", cfg.hostname, self.node.uri, cfg.cpus, cfg.memory)

    def failed(self) -> bool:
        """The master's journal failed: the daemon must exit, so that a restart reads the disk again."""
        return self.master is not None and self.master.failed.is_set()

    def reload(self) -> None:
        """Re-read the config file (SIGHUP, `grun -d -r`): each changed key is applied by the actor that
        reads it (its reconfigure; the log level here), or logged as needing `grun -d -R`, or as read by
        no service of this daemon. A bad file is logged and the running config kept."""
        old = self.cfg
        try:
            new = load_config(old.path)
        except Exception as exc:  # a broken edit must not take the daemon down
            log.error("reload: %s; keeping the running config", exc)
            return
        for warning in new.warnings:
            log.warning("reload: %s", warning)
        changed = [name for name in KEYS if getattr(new, name) != getattr(old, name)]
        logging.getLogger().setLevel(new.log_level.upper())
        applied = {"log_level": new.log_level} if "log_level" in changed else {}
        actors = {"queue": self.master, "exec": self.node}
        for service, actor in actors.items():
            asked = {name: getattr(new, name) for name in changed if KEYS[name].service == service and KEYS[name].reload}
            if actor is not None and asked:
                try:
                    applied.update(actor.reconfigure(**asked))
                except Exception:  # logged; the daemon serves on, and the keys are reported below
                    log.exception("reload: the %s service could not apply %s", service, ", ".join(asked))
        unread = [name for name in changed if KEYS[name].service in actors and actors[KEYS[name].service] is None]
        restart = [name for name in changed if name not in applied and name not in unread]
        log.info("reloaded %s: %s", old.path or "the default config", "applied " + ", ".join(
            f"{name}={value!r}" for name, value in applied.items()) if applied else "nothing to apply")
        for names, why in ((restart, "need a restart (grun -d -R)"), (unread, "no service of this daemon reads them")):
            if names:
                log.warning("reload: %s changed but %s", ", ".join(names), why)
        for name in set(changed) - set(applied):  # run on with what runs: the next reload reports them again
            setattr(new, name, getattr(old, name))
        self.cfg = new

    def shutdown(self) -> None:
        if self.master is not None:
            self.master.begin_shutdown()  # from here callers get "restarting", which clients retry
        for actor in (self.node, self.master_daemon, self.master):
            if actor is not None:
                actor.shutdown()
