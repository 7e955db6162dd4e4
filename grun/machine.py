"""Guesses from the machine for the config defaults that grun/config.py's KEYS leave to it: cpus, memory,
the address others reach this host at, whether the master is this host. Daemon side: config.py imports
it only when such a default is first read, so a `grun` client never pays for psutil or DNS lookups."""

from __future__ import annotations

import contextlib
import ipaddress
import socket

import psutil


def cpus(cfg) -> float:
    return float(psutil.cpu_count(logical=True) or 1)


def memory(cfg) -> int:
    return psutil.virtual_memory().total // 2 ** 20


def advertise(cfg) -> str:
    """bind, but the hostname for 0.0.0.0 or ::; a host name others can resolve too, and a loopback bind is
    reachable only at that very address (127.0.0.1 for the default)."""
    if cfg.bind.lower() == "localhost":
        return "127.0.0.1"
    with contextlib.suppress(ValueError):  # not an address: a host name
        if ipaddress.ip_address(cfg.bind).is_unspecified:
            return cfg.hostname
    return cfg.bind


def is_this_host(host: str, hostname: str | None = None) -> bool:
    """Whether `host` names this machine: by name first (with one side unqualified, "node1" and
    "node1.example.org" are the same machine), then by address (DNS only if needed)."""
    h = host.lower().rstrip(".")
    names = {socket.gethostname().lower(), "localhost"} | ({hostname.lower()} if hostname else set())
    if any(h == n or ("." not in h or "." not in n) and h.split(".")[0] == n.split(".")[0] for n in names):
        return True
    try:
        addrs = {info[4][0] for info in socket.getaddrinfo(h, None)}  # an address as it is, a name through DNS
    except (OSError, UnicodeError):
        return False
    local = {a.address.split("%")[0] for nic in psutil.net_if_addrs().values() for a in nic}
    return any(ipaddress.ip_address(a.split("%")[0]).is_loopback or a in local for a in addrs)
