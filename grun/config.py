"""Finding, parsing and validating grun's YAML config, with a guessed default for every key.

Everything works with no config file at all ("personal mode": a master and a node on this
machine, bound to 127.0.0.1).  A cluster config is a flat YAML mapping, for example::

    master: head.example.org:5184   # host[:port]; "[::1]:6000" for IPv6
    services: [queue, exec]         # or "exec", or "queue,exec"
    cpus: 16                        # offered to jobs; default: logical cores
    memory: 64G                     # MB, or with K/M/G/T; default: physical memory
    spool: /var/spool/grun          # master state in spool/master, job spool in spool/node
    output_keep: 2d                 # durations: 45s, 30m, 12h, 1d, 1h30m or seconds
    node_timeout: 60s               # a node silent this long is down; its running jobs are lost
    requeue: true                   # re-queue jobs lost with their node (per job: --norequeue)
    min_free_disk: 64M              # refuse submissions when the master's spool has less free
    default_priority: 20            # -r when not given (GRUN_PRIORITY in the environment wins)
    reserve_after: 5m               # a job waiting longer gets a node reserved (no starvation)
    resources: {gpu: 2}             # this node's consumables, asked for with -p gpu=1
    labels: {os: debian12}          # this node's labels, matched by -p os=debian12 (globs allowed)
    hard_factor: 1.5                # a job's memory limit is its request times this
    ulimit: {cpu: 12h, fsize: 100G, nofile: 4096}   # other limits for every job (nproc, core, stack too)
    count_outside_load: true        # non-grun cpu and memory use on a node lowers what it offers

Where the file is found (see find_config_path): ``-C FILE``, then ``$GRUN_CONF``, then
``/etc/grun.conf``.  Keys not known here are kept in ``Config.raw`` and are not errors, so
later features can add keys; a known key with a bad value is an error naming file, line and key.
A key given as ``null`` (or with no value) takes its default, except ``log_file``, where null
means "log to stderr".

Environment overrides, applied in both modes (tests and personal use rely on them):
    GRUN_CONF=FILE         config file, when no explicit path is given
    GRUN_MASTER=host:port  replaces ``master``
    GRUN_SPOOL=DIR         replaces ``spool``
"""

from __future__ import annotations

import math
import os
import re
import socket

# psutil and yaml are imported where they are used: the `grun` client reads only a few keys, and
# importing them cost ~25 ms of every `grun CMD` (bench/README.md, "Where the time goes").

DEFAULT_PORT = 5184
ETC_PATH = "/etc/grun.conf"
SERVICES = frozenset({"queue", "exec"})
LOG_LEVELS = ("debug", "info", "warning", "error")
KNOWN_KEYS = frozenset({
    "master", "services", "hostname", "bind", "advertise", "cpus", "memory", "spool",
    "log_file", "pid_file", "log_level", "node_timeout", "heartbeat", "default_cpus",
    "default_memory", "output_keep", "requeue", "min_free_disk",
    "default_priority", "reserve_after", "hard_factor", "ulimit", "resources", "labels",
    "count_outside_load",
})
ULIMIT_KEYS = {"cpu": "duration", "fsize": "size", "nofile": "count", "nproc": "count", "core": "size",
               "stack": "size"}
# patterns as text, compiled (and cached by `re`) on first use: a client parses few values
_NAME_RE = r"[A-Za-z_][A-Za-z0-9_.-]{0,63}"


class ConfigError(Exception):
    """A config problem, rendered as one line: ``FILE:LINE: key 'KEY': MESSAGE``."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 key: str | None = None):
        # Callers print str(e) as a single log/terminal line, so no embedded newlines.
        self.message = " ".join(str(message).split())
        self.path, self.line, self.key = path, line, key
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ":".join(str(p) for p in (self.path, self.line) if p is not None)
        key = f"key {self.key!r}: " if self.key is not None else ""
        return f"{where}: {key}{self.message}" if where else f"{key}{self.message}"


def _got(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_MEMORY_RE = _NUMBER + r"\s*(?:([kmgt])(?:i?b)?)?"
# units as exact ratios (numerator, denominator): no float rounding, and no `fractions` import
_MEMORY_UNIT = {None: (1, 1), "k": (1, 1024), "m": (1, 1), "g": (1024, 1), "t": (1024 ** 2, 1)}
_DURATION_RE = _NUMBER + r"\s*([smhdw])"
_DURATION_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _ratio(text: str) -> tuple[int, int]:
    """A decimal number matched by _NUMBER as an exact (numerator, denominator)."""
    whole, _, frac = text.partition(".")
    return int(whole or "0") * 10 ** len(frac) + int(frac or "0"), 10 ** len(frac)


def _plain_number(value, what: str):
    """A non-negative finite int/float; bools are YAML's yes/no, not numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected {what}, got {_got(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"expected {what}, got {_got(value)}")
    if value < 0:
        raise ValueError(f"expected {what}, got a negative value {_got(value)}")
    return value


def parse_memory(text: str | float) -> int:
    """Memory in MB: 3000, "3000", "500M", "4G", "1.5g", "1T", "512K" (rounded up to whole MB)."""
    what = "a memory size like 4096 (MB), 500M or 4G"
    if isinstance(text, str):
        m = re.fullmatch(_MEMORY_RE, text.strip(), re.IGNORECASE)
        if not m:
            raise ValueError(f"expected {what}, got {_got(text)}")
        num, den = _ratio(m.group(1))
        unit_num, unit_den = _MEMORY_UNIT[m.group(2) and m.group(2).lower()]
        num, den = num * unit_num, den * unit_den
    else:
        num, den = _plain_number(text, what), 1
    if num > 2 ** 40 * den:  # an exabyte: surely a units mistake
        raise ValueError(f"expected {what}, got an absurd size {_got(text)}")
    return -(-num // den) if isinstance(num, int) else math.ceil(num)


def parse_cpus(text) -> float:
    """A CPU count, fractions allowed: "4" -> 4.0, 0.5 -> 0.5."""
    what = "a number of CPUs like 4 or 0.5"
    if isinstance(text, str):
        if not re.fullmatch(_NUMBER, text.strip()):
            raise ValueError(f"expected {what}, got {_got(text)}")
        cpus = float(text)
    else:
        cpus = float(_plain_number(text, what))
    if cpus > 100_000:
        raise ValueError(f"expected {what}, got an absurd count {_got(text)}")
    return cpus


def parse_duration(text) -> float:
    """Seconds from a number or "45s", "30m", "12h", "1d", "2w", "1h30m"."""
    what = "a duration like 30, 45s, 30m, 12h or 1d"
    if not isinstance(text, str):
        return float(_plain_number(text, what))
    s = text.strip()
    if re.fullmatch(_NUMBER, s):
        return float(s)
    # Every number needs a unit once there are several: "1h 30" is ambiguous.
    if not re.fullmatch(rf"(?:{_NUMBER}\s*[smhdw]\s*)+", s, re.IGNORECASE):
        raise ValueError(f"expected {what}, got {_got(text)}")
    num, den = 0, 1
    for m in re.finditer(_DURATION_RE, s, re.IGNORECASE):  # exact sum, then one rounding
        n, d = _ratio(m.group(1))
        n *= _DURATION_UNIT[m.group(2).lower()]
        num, den = num * d + n * den, den * d
    return num / den


def parse_bool(value) -> bool:
    """YAML's true/false (and yes/no, on/off, 1/0 given as text)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"expected true or false, got {_got(value)}")


def _mapping(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of {what}, got {_got(value)}")
    for key in value:
        if not isinstance(key, str) or not re.fullmatch(_NAME_RE, key) or key in ("cpus", "memory"):
            raise ValueError(f"bad name {_got(key)} in {what} (letters, digits, _ . - only)")
    return value


def parse_resources(value) -> dict[str, float]:
    """A node's consumables: name -> a number >= 0 (`resources: {gpu: 2, scratch_gb: 500}`)."""
    out = {}
    for name, amount in _mapping(value, "resource names to amounts").items():
        try:
            out[name] = float(_plain_number(amount, "an amount"))
        except ValueError as e:
            raise ValueError(f"resource {name}: {e}") from None
    return out


def parse_labels(value) -> dict[str, str]:
    """A node's labels: name -> a value, kept as text (`labels: {os: debian12, arch: x86_64}`)."""
    out = {}
    for name, text in _mapping(value, "label names to values").items():
        if isinstance(text, (dict, list)) or text is None or str(text).strip() == "":
            raise ValueError(f"label {name}: expected a single value, got {_got(text)}")
        out[name] = str(text).strip() if not isinstance(text, bool) else str(text).lower()
    return out


def parse_hard_factor(value) -> float:
    try:
        factor = float(value) if isinstance(value, str) else float(_plain_number(value, "a factor like 1.5"))
    except ValueError:
        raise ValueError(f"expected a factor like 1.5, got {_got(value)}") from None
    if not 1.0 <= factor <= 100.0:
        raise ValueError(f"expected a factor between 1 and 100, got {_got(value)}")
    return factor


def parse_ulimit(value) -> dict[str, int | None]:
    """Limits for every job: cpu (a duration), fsize/core/stack (sizes, MB or with a unit), nofile and
    nproc (counts); "unlimited" for none. Returns name -> seconds, MB or count (None: unlimited)."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping like {{cpu: 12h, fsize: 10G, nofile: 1024}}, got {_got(value)}")
    out: dict[str, int | None] = {}
    for name, limit in value.items():
        kind = ULIMIT_KEYS.get(str(name))
        if kind is None:
            raise ValueError(f"unknown limit {_got(name)}: use {', '.join(ULIMIT_KEYS)}")
        if limit is None or (isinstance(limit, str) and limit.strip().lower() in ("unlimited", "infinity", "none")):
            out[name] = None
            continue
        try:
            if kind == "duration":
                out[name] = max(1, math.ceil(parse_duration(limit)))
            elif kind == "size":
                out[name] = parse_memory(limit)
            else:
                out[name] = int(_plain_number(limit, "a count"))
        except ValueError as e:
            raise ValueError(f"limit {name}: {e}") from None
        if name == "nofile" and out[name] < 16:
            raise ValueError(f"limit nofile: at least 16, got {_got(limit)}")
        if name == "fsize" and out[name] < 1:
            raise ValueError(f"limit fsize: at least 1M, got {_got(limit)}")
    return out


def parse_priority(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected a whole number, got {_got(value)}")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"expected a whole number, got {_got(value)}") from None


def parse_hostport(text, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """ "host", "host:port", "[v6]:port", "[v6]" or a bare IPv6 address -> (host, port)."""
    what = "host or host:port"
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"expected {what}, got {_got(text)}")
    s, port = text.strip(), None
    if s.startswith("["):
        m = re.fullmatch(r"\[([^\]]+)\](?::(.*))?", s)
        if not m:
            raise ValueError(f"expected {what} ([addr]:port for IPv6), got {_got(text)}")
        host, port = m.group(1), m.group(2)
    elif s.count(":") == 1:
        host, port = s.split(":")
    else:  # no colon, or a bare IPv6 address that cannot carry a port
        host = s
    if not host or re.search(r"[\s/\[\]]", host):
        raise ValueError(f"expected {what}, got {_got(text)}")
    if host.isdigit():  # "master: 6000" is a port without a host, not the address 0.0.23.112
        raise ValueError(f"expected {what}, got only a number {_got(text)}")
    if port is None:
        return host, default_port
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected a port between 1 and 65535, got {_got(port)} in {_got(text)}")
    return host, int(port)


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_services(text) -> frozenset[str]:
    """ "queue", "queue,exec", "queue exec" or a YAML list -> a non-empty subset of SERVICES."""
    items = re.split(r"[\s,]+", text.strip()) if isinstance(text, str) else text
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError(f"expected a list of services (queue, exec), got {_got(text)}")
    names = frozenset(i.strip().lower() for i in items if i.strip())
    if not names or names - SERVICES:
        raise ValueError(f"expected one or both of queue, exec, got {_got(text)}")
    return names


def _parse_host(text) -> str:
    if not isinstance(text, str) or not text.strip() or re.search(r"[\s/]", text.strip()):
        raise ValueError(f"expected a host name or address, got {_got(text)}")
    return text.strip()


def _parse_level(text) -> str:
    level = {"warn": "warning"}.get(str(text).strip().lower(), str(text).strip().lower())
    if level not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {_got(text)}")
    return level


def _positive_duration(text) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError(f"expected a duration above zero, got {_got(text)}")
    return seconds


def user_state_dir(environ=os.environ) -> str:
    """$XDG_STATE_HOME/grun, else ~/.local/state/grun (XDG says to ignore relative values)."""
    xdg = environ.get("XDG_STATE_HOME", "")
    if os.path.isabs(xdg):
        return os.path.join(xdg, "grun")
    home = environ.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, ".local", "state", "grun")


def default_state_dir(environ=os.environ, euid: int | None = None) -> str:
    """Where a cluster daemon keeps state: /var/spool/grun as root, else user_state_dir()."""
    if (os.geteuid() if euid is None else euid) == 0:
        return "/var/spool/grun"
    return user_state_dir(environ)


def find_config_path(explicit: str | None = None, environ=os.environ,
                     etc_path: str = ETC_PATH) -> str | None:
    """-C FILE, then $GRUN_CONF, then etc_path if it exists; None means personal mode.

    A file the user named explicitly must exist: silently falling back to personal mode
    would start a private cluster when they meant to join a real one."""
    for named in (explicit, environ.get("GRUN_CONF")):
        if named:
            if not os.path.exists(named):
                raise ConfigError("cannot read: No such file or directory", named)
            return named
    return etc_path if os.path.exists(etc_path) else None


def is_this_host(host: str, hostname: str | None = None) -> bool:
    """Whether `host` names this machine: by name first, then by address (DNS only if needed)."""
    h = host.lower().rstrip(".")
    names = {socket.gethostname().lower(), "localhost"} | ({hostname.lower()} if hostname else set())
    if h in names:
        return True
    # One side unqualified: "node1" and "node1.example.org" are the same machine.
    short = h.split(".")[0]
    if any(("." not in h or "." not in n) and short == n.split(".")[0] for n in names):
        return True
    import ipaddress

    import psutil
    try:
        addrs = {str(ipaddress.ip_address(h))}
    except ValueError:
        try:
            infos = socket.getaddrinfo(h, None)
        except (OSError, UnicodeError):
            return False
        addrs = {info[4][0] for info in infos}
    local = {a.address.split("%")[0] for nic in psutil.net_if_addrs().values() for a in nic}
    return any(ipaddress.ip_address(a.split("%")[0]).is_loopback or a in local for a in addrs)


def _path(base: str):
    """Parser for path keys; relative log/pid paths live under the spool."""
    def parse(text) -> str:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"expected a path, got {_got(text)}")
        return os.path.join(base, os.path.expanduser(text.strip()))
    return parse


def _absolute_path(text) -> str:
    path = _path("")(text)
    if not os.path.isabs(path):
        raise ValueError(f"expected an absolute path, got {_got(text)}")
    return os.path.normpath(path)


def _cpu_count() -> float:
    import psutil
    return float(psutil.cpu_count(logical=True) or 1)


def _memory_mb() -> int:
    import psutil
    return psutil.virtual_memory().total // 2 ** 20


class Lazy:
    """A default computed on first use: the machine's cpus and memory (psutil), whether the master is
    this host (maybe DNS). Only daemons read them, so a client never pays for them."""
    __slots__ = ("compute",)

    def __init__(self, compute):
        self.compute = compute


# field -> default (a callable is called per Config; a Lazy is computed when first read)
_FIELDS = {
    "path": None, "personal": True, "master_host": "127.0.0.1", "master_port": DEFAULT_PORT,
    "services": SERVICES, "hostname": socket.gethostname, "bind": "127.0.0.1", "advertise": "127.0.0.1",
    "cpus": Lazy(_cpu_count), "memory": Lazy(_memory_mb), "spool": user_state_dir, "log_file": "",
    "pid_file": "", "log_level": "info", "node_timeout": 60.0, "heartbeat": 5.0, "default_cpus": 1.0,
    "default_memory": 100, "output_keep": 86400.0, "requeue": True, "min_free_disk": 64,
    "default_priority": 20, "reserve_after": 300.0, "hard_factor": 1.5, "ulimit": dict, "resources": dict,
    "labels": dict, "count_outside_load": True, "raw": dict,
}


class Config:
    """The effective configuration; load_config() fills every field (see _FIELDS for the names).

    Constructing it directly (handy in tests) gives personal-mode values; a log_file or
    pid_file left as "" is derived from spool. A plain class, not a dataclass: `dataclasses` pulls in
    `inspect`, which every `grun CMD` would pay for."""

    def __init__(self, **values):
        unknown = set(values) - set(_FIELDS)
        if unknown:
            raise TypeError(f"Config() got unexpected keys: {', '.join(sorted(unknown))}")
        lazy = {}
        for name, default in _FIELDS.items():
            value = values.get(name, default)
            if isinstance(value, Lazy):
                lazy[name] = value.compute
                continue
            if name not in values and callable(default):
                value = default()
            setattr(self, name, value)
        self._lazy = lazy
        if self.log_file == "":
            self.log_file = os.path.join(self.spool, "grun.log")
        if not self.pid_file:
            self.pid_file = os.path.join(self.spool, "grun.pid")

    def __getattr__(self, name: str):
        # only called for attributes not set yet: the lazy defaults
        compute = self.__dict__.get("_lazy", {}).pop(name, None)
        if compute is None:
            raise AttributeError(f"'Config' object has no attribute {name!r}")
        value = compute()
        setattr(self, name, value)
        return value

    def _values(self) -> dict:
        return {name: getattr(self, name) for name in _FIELDS}

    def __eq__(self, other) -> bool:
        return isinstance(other, Config) and self._values() == other._values()

    def __repr__(self) -> str:
        return "Config(" + ", ".join(f"{k}={v!r}" for k, v in self._values().items()) + ")"

    @property
    def master_address(self) -> str:
        return format_hostport(self.master_host, self.master_port)

    @property
    def master_dir(self) -> str:
        return os.path.join(self.spool, "master")

    @property
    def node_dir(self) -> str:
        return os.path.join(self.spool, "node")

    @property
    def unknown_keys(self) -> list[str]:
        """Keys in the file that nothing reads (typos, or keys of a newer grun): worth a warning."""
        return sorted(str(k) for k in self.raw if k not in KNOWN_KEYS)


# "master: [::1]:6000" is not valid YAML (a flow list, then junk) and "master: 10:30" is the
# base-60 integer 630, so an unquoted top-level master value is quoted before parsing.
_MASTER_LINE = re.compile(r"^(master[ \t]*:[ \t]*)([^\s'\"#|>&*!{][^\s'\"#]*)([ \t]+#.*)?[ \t]*$",
                          re.MULTILINE)


def _quote_master(text: str) -> str:
    def quote(m):
        if m.group(2) in ("~", "null", "Null", "NULL"):
            return m.group(0)
        return f"{m.group(1)}'{m.group(2)}'{m.group(3) or ''}"
    return _MASTER_LINE.sub(quote, text)


# The fast path for the common config file, one `key: value` a line with plain values: read without
# importing yaml (~12 ms of every `grun CMD`). Anything else (nesting, flow collections, lists,
# anchors, escapes, tabs, duplicate keys, values YAML 1.1 would read as something other than the
# int, float, bool, null or string taken here) returns None and goes to PyYAML, which then also
# gives the errors. tests/test_config.py checks that both agree.
_SIMPLE_LINE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*):(?: +([^ #'\"][^#'\"]*?|'[^'\n]*'|\"[^\"\\\n]*\"))?(?: +#.*)? *")
_PLAIN = re.compile(r"[A-Za-z0-9_./-]+(?: [A-Za-z0-9_./-]+)*")
_YAML_BOOL = {"yes": True, "Yes": True, "YES": True, "true": True, "True": True, "TRUE": True, "on": True,
              "On": True, "ON": True, "no": False, "No": False, "NO": False, "false": False, "False": False,
              "FALSE": False, "off": False, "Off": False, "OFF": False}
_YAML_NULL = ("~", "null", "Null", "NULL")


def _maybe_yaml_number(value: str) -> bool:
    """Whether YAML 1.1 (PyYAML's implicit resolvers) might read a plain value that starts with a digit
    or a dot as an int, float or timestamp. Values here have no ':', '+' or leading '-' (see _PLAIN), so
    no base-60 number and no signed exponent is possible. (PyYAML's own patterns took 6 ms to compile.)"""
    if "-" in value or value[:2] in ("0x", "0b") or value.lower() in (".inf", ".nan"):
        return True  # dates, hex, binary, inf/nan: left to PyYAML
    return value.count(".") <= 1 and all(c in "0123456789_." for c in value)


def _read_simple(text: str) -> tuple[dict, dict[str, int]] | None:
    raw: dict = {}
    lines: dict[str, int] = {}
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip(" ") or line.startswith("#"):
            continue
        m = _SIMPLE_LINE.fullmatch(line)
        if m is None:
            return None
        key, value = m.group(1), m.group(2)
        if key in raw or key in _YAML_BOOL or key in _YAML_NULL:
            return None
        if value is None or value in _YAML_NULL:
            raw[key] = None
        elif value[0] in "'\"":
            raw[key] = value[1:-1]
        elif not _PLAIN.fullmatch(value) or value[0] == "-":  # "- x" is a list; "-5" left to PyYAML
            return None
        elif value in _YAML_BOOL:
            raw[key] = _YAML_BOOL[value]
        elif re.fullmatch(r"0|[1-9][0-9]*", value):
            raw[key] = int(value)
        elif re.fullmatch(r"[0-9]+\.[0-9]+", value):
            raw[key] = float(value)
        elif value[0] in "0123456789." and _maybe_yaml_number(value):
            return None
        else:
            raw[key] = value
        lines[key] = number
    return raw, lines


def _read_yaml(path: str) -> tuple[dict, dict[str, int]]:
    """The top-level mapping and the line of each key in it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError("not valid UTF-8", path, data[:e.start].count(b"\n") + 1) from None
    text = _quote_master(text)
    simple = _read_simple(text)
    if simple is not None:
        return simple
    import yaml
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        value = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or "parse error"
        raise ConfigError(f"not valid YAML: {problem}", path, mark.line + 1 if mark else None) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {e}", path) from None
    finally:
        loader.dispose()
    if value is None:  # empty file, only comments, or a bare "~"
        return {}, {}
    if not isinstance(value, dict):
        kind = {list: "a list"}.get(type(value), f"a single value {_got(value)}")
        raise ConfigError(f"expected a mapping of key: value at the top level, got {kind}",
                          path, node.start_mark.line + 1)
    lines: dict[str, int] = {}
    for key_node, _ in node.value:
        key, line = key_node.value, key_node.start_mark.line + 1
        if isinstance(key_node, yaml.ScalarNode) and key in lines:
            # YAML quietly keeps the last one; a silently ignored setting is worse than an error.
            raise ConfigError(f"given twice (first on line {lines[key]})", path, line, key)
        if isinstance(key_node, yaml.ScalarNode):
            lines[key] = line
    return value, lines


def load_config(path: str | None = None, environ=os.environ) -> Config:
    """Build the effective Config from `path` (as from find_config_path), or personal mode if None."""
    raw, lines = _read_yaml(path) if path is not None else ({}, {})
    personal = path is None

    def get(key, parse, default):
        value = raw.get(key)
        if value is None:
            return default() if callable(default) else default
        try:
            return parse(value)
        except ValueError as e:
            raise ConfigError(str(e), path, lines.get(key), key) from None

    def env(name, parse):
        try:
            return parse(environ[name])
        except ValueError as e:
            raise ConfigError(str(e), f"${name}") from None

    master_host, master_port = get("master", parse_hostport, lambda: (
        "127.0.0.1" if personal else socket.gethostname(), DEFAULT_PORT))
    if environ.get("GRUN_MASTER"):
        master_host, master_port = env("GRUN_MASTER", parse_hostport)
    hostname = get("hostname", _parse_host, socket.gethostname)
    if personal:
        services = SERVICES
    else:
        services = get("services", parse_services, lambda: Lazy(lambda: frozenset(
            {"exec", "queue"} if is_this_host(master_host, hostname) else {"exec"})))

    bind = get("bind", _parse_host, "127.0.0.1" if personal else "0.0.0.0")
    advertise = get("advertise", _parse_host, lambda: Lazy(lambda: _guess_advertise(bind, hostname)))

    if environ.get("GRUN_SPOOL"):
        spool = os.path.abspath(os.path.expanduser(environ["GRUN_SPOOL"]))
    else:
        spool = get("spool", _absolute_path, lambda: (
            user_state_dir(environ) if personal else default_state_dir(environ)))
    if "log_file" in raw and raw["log_file"] in (None, "", "-"):
        log_file = None  # explicitly asked for no file: log to stderr
    else:
        log_file = get("log_file", _path(spool), os.path.join(spool, "grun.log"))

    return Config(
        path=path, personal=personal, master_host=master_host, master_port=master_port,
        services=services, hostname=hostname, bind=bind, advertise=advertise,
        cpus=get("cpus", parse_cpus, lambda: Lazy(_cpu_count)),
        memory=get("memory", parse_memory, lambda: Lazy(_memory_mb)),
        spool=spool, log_file=log_file,
        pid_file=get("pid_file", _path(spool), os.path.join(spool, "grun.pid")),
        log_level=get("log_level", _parse_level, "info"),
        node_timeout=get("node_timeout", _positive_duration, 60.0),
        heartbeat=get("heartbeat", _positive_duration, 5.0),
        default_cpus=get("default_cpus", parse_cpus, 1.0),
        default_memory=get("default_memory", parse_memory, 100),
        output_keep=get("output_keep", parse_duration, 86400.0),
        requeue=get("requeue", parse_bool, True),
        min_free_disk=get("min_free_disk", parse_memory, 64),
        default_priority=get("default_priority", parse_priority, 20),
        reserve_after=get("reserve_after", parse_duration, 300.0),
        hard_factor=get("hard_factor", parse_hard_factor, 1.5),
        ulimit=get("ulimit", parse_ulimit, dict),
        resources=get("resources", parse_resources, dict),
        labels=get("labels", parse_labels, dict),
        count_outside_load=get("count_outside_load", parse_bool, True),
        raw=raw,
    )


def _guess_advertise(bind: str, hostname: str) -> str:
    import ipaddress
    if bind.lower() == "localhost":
        return "127.0.0.1"
    try:
        addr = ipaddress.ip_address(bind)
    except ValueError:
        return bind  # a host name: others can resolve it too
    # A loopback bind is only reachable at that very address (127.0.0.1 for the default).
    return hostname if addr.is_unspecified else bind


def describe(cfg: Config) -> str:
    """The effective config as YAML that load_config() reads back to the same values."""
    origin = cfg.path or "personal mode, no config file"
    effective = {
        "master": cfg.master_address, "services": sorted(cfg.services),
        "hostname": cfg.hostname, "bind": cfg.bind, "advertise": cfg.advertise,
        "cpus": cfg.cpus, "memory": cfg.memory, "spool": cfg.spool,
        "log_file": cfg.log_file, "pid_file": cfg.pid_file, "log_level": cfg.log_level,
        "node_timeout": cfg.node_timeout, "heartbeat": cfg.heartbeat,
        "default_cpus": cfg.default_cpus, "default_memory": cfg.default_memory,
        "output_keep": cfg.output_keep, "requeue": cfg.requeue, "min_free_disk": cfg.min_free_disk,
        "default_priority": cfg.default_priority, "reserve_after": cfg.reserve_after,
        "hard_factor": cfg.hard_factor, "ulimit": dict(cfg.ulimit), "resources": dict(cfg.resources),
        "labels": dict(cfg.labels), "count_outside_load": cfg.count_outside_load,
    }
    extra = {k: v for k, v in cfg.raw.items() if k not in effective}
    import yaml
    body = yaml.safe_dump({**effective, **extra}, sort_keys=False, default_flow_style=False)
    return f"# grun config ({origin}); memory in MB, durations in seconds\n{body}"
