"""grun's config: the one table of its keys (KEYS) and all that follows from it: reading and checking values,
defaults and guesses, where each value came from (`grun -q conf`), unknown-key warnings, what a reload applies.
No config file: personal mode, a master and a node on this machine, on 127.0.0.1. Every `grun` call imports
this module, so it stays light: a default that is a function is computed when first read (the machine's
guesses import psutil or ask DNS then), and yaml is imported only for a file the fast reader leaves."""

import os
from collections import namedtuple

from .values import (
    _NAME_START,
    DEFAULT_PORT,
    SERVICES,
    STAGE_MODES,
    YAML_WORDS,
    choice,
    close_to,
    format_hostport,
    is_any_address,
    label,
    named,
    number,
    parse_bool,
    parse_cpus,
    parse_duration,
    parse_host,
    parse_hostport,
    parse_memory,
    parse_path,
    parse_priority,
    parse_services,
    parse_tls,
    parse_ulimit,
    resource,
    words,
)


class ConfigError(Exception):
    """A config problem, rendered as one line: ``FILE:LINE: key 'KEY': MESSAGE``."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None, key: str | None = None):
        self.path, self.line, self.key = path, line, key
        where = ":".join(str(p) for p in (path, line) if p is not None)
        text = (f"key {key!r}: " if key is not None else "") + " ".join(str(message).split())  # one line
        super().__init__(f"{where}: {text}" if where else text)


def user_state_dir(environ=os.environ) -> str:
    """$XDG_STATE_HOME/grun, else ~/.local/state/grun (XDG says to ignore relative values)."""
    xdg = environ.get("XDG_STATE_HOME", "")
    home = environ.get("HOME") or os.path.expanduser("~")
    return os.path.join(xdg if os.path.isabs(xdg) else os.path.join(home, ".local", "state"), "grun")


def is_this_host(host: str, hostname: str | None = None) -> bool:
    """Whether `host` is this machine: by name ("node1" is "node1.example.org" too), then by address (DNS if needed)."""
    import socket  # (DNS: only a daemon asks; socket would cost every `grun --version` and --completion 2.4 ms)
    h = host.lower().rstrip(".")
    names = {os.uname().nodename.lower(), "localhost"} | ({hostname.lower()} if hostname else set())
    if any(h == n or ("." not in h or "." not in n) and h.split(".")[0] == n.split(".")[0] for n in names):
        return True
    try:
        addrs = {info[4][0] for info in socket.getaddrinfo(h, None)}  # an address as it is, a name through DNS
    except (OSError, UnicodeError):
        return False
    local = {a.address.split("%")[0] for nic in _psutil().net_if_addrs().values() for a in nic}
    return any(a.startswith("127.") or a == "::1" or a in local for a in addrs)  # getaddrinfo gives canonical text


# A config key: its parser; its default (a value, or a function of the Config computed when first read, `guess`
# saying what a guess comes from); the service that reads it ("queue", "exec", "daemon": either, "all": the client
# too); whether a reload applies it (else `grun -d -R`); its doc (the README's); the variable that replaces it.
Key = namedtuple("Key", "name parse default service reload doc guess env", defaults=("", ""))

_Q, _X, _D = "queue", "exec", "daemon"
_positive_duration = lambda v: parse_duration(v, positive=True)
_psutil = lambda: __import__("psutil")  # for the machine's guesses, which only a daemon (or `grun -q conf`) reads
quotas = lambda: __import__("grun.core.quotas", fromlist=["_"])  # (only a config with limits: imports it)
KEYS = {key.name: key for key in (
    Key("master", parse_hostport, lambda c: ("127.0.0.1" if c.personal else os.uname().nodename, DEFAULT_PORT), "all",
        False, "where the queue runs (port 5184 by default)", "this host (127.0.0.1 in personal mode)", "GRUN_MASTER"),
    Key("services", parse_services, lambda c: SERVICES if c.personal or is_this_host(
        c.master_host, c.hostname) else frozenset({"exec"}), _D, False, 'on the master; "exec" alone on compute nodes',
        "both on the master's host (and in personal mode), else exec"),
    Key("hostname", parse_host, lambda c: os.uname().nodename, _X, False, "this node's name", "this host's name"),
    Key("bind", parse_host, lambda c: "127.0.0.1" if c.personal else "0.0.0.0", _D, False,
        "the address the daemons listen on (127.0.0.1 in personal mode)"),
    # (advertise: a loopback bind is reached only at its very address)
    Key("advertise", parse_host, lambda c: c.hostname if is_any_address(c.bind) else
        "127.0.0.1" if c.bind.lower() == "localhost" else c.bind, _D, False, "the address others reach them at",
        "bind, or hostname if that is 0.0.0.0"),
    Key("cpus", parse_cpus, lambda c: float(_psutil().cpu_count(logical=True) or 1), _X, True,
        "cpus offered to jobs (fractions allowed)", "logical cores"),
    Key("memory", parse_memory, lambda c: _psutil().virtual_memory().total // 2 ** 20, _X, True,
        "MB offered to jobs (or 500M, 4G)", "physical memory"),
    Key("spool", lambda v: parse_path(v, absolute=True),
        lambda c: "/var/spool/grun" if not c.personal and os.geteuid() == 0 else user_state_dir(c.environ),
        "all", False, "state: /var/spool/grun as root, ~/.local/state/grun otherwise", env="GRUN_SPOOL"),
    Key("log_file", lambda v: None if v in (None, "", "-") else parse_path(v),  # None: log to stderr
        lambda c: os.path.join(c.spool, "grun.log"), _D, False, "relative to the spool; null: log to stderr"),
    Key("pid_file", parse_path, lambda c: os.path.join(c.spool, "grun.pid"), _D, False, "relative to the spool"),
    Key("log_level", choice("debug", "info", "warning", "error", warn="warning"), "info", _D, True,
        "debug, info, warning or error"),
    Key("node_timeout", _positive_duration, 60.0, _Q, True,
        "a node silent this long (or 3 of its heartbeats) is down; its running jobs are lost (re-queued)"),
    Key("heartbeat", _positive_duration, 5.0, _X, True, "how often a node reports to the master"),
    Key("requeue", parse_bool, True, _Q, True, "run lost jobs again (per job: grun --norequeue)"),
    Key("min_free_disk", parse_memory, 64, _Q, True, "refuse submissions when the master's spool has less free space; place no job on a node's with less"),
    Key("output_keep", parse_duration, 86400.0, _X, True, "how long a node keeps output nobody fetched"),
    Key("resources", lambda v: named(v, "resource", "amounts or device lists", resource), lambda c: {}, _X,
        True, "this node's consumables (-p gpu=1): counts, sizes counted in MB (500G), or device names: jobs get specific ones"),
    Key("labels", lambda v: named(v, "label", "values", label), lambda c: {}, _X, True,
        "this node's labels (-p os=debian12, globs allowed)"),
    Key("default_cpus", parse_cpus, 1.0, _Q, True, "for a job that does not say (-c)"),
    Key("default_memory", parse_memory, 100, _Q, True, "for a job that does not say (-m)"),
    Key("default_priority", parse_priority, 20, _Q, True, "for a job that does not say (-r, $GRUN_PRIORITY); users may not ask more"),
    Key("deps_other_users", parse_bool, True, _Q, True, "a job may wait for (--after) another user's jobs"),
    Key("default_retries", lambda v: int(number(v, "a whole number from 0 to 100", most=100)), 0, _Q, True,
        "for a job that does not say (--retries): runs again after a failure"),
    Key("reserve_after", parse_duration, 300.0, _Q, True,
        "a job waiting longer gets a node reserved; others backfill around it"),
    Key("fair_share", parse_bool, True, _Q, True,
        "at equal priority the next job is the oldest of the user holding fewest cpus; off: first come, first served"),
    Key("hard_factor", lambda v: number(v, "a factor between 1 and 100, like 1.5", least=1, most=100), 1.5, _X,
        True, "memory limit = -m x this (RLIMIT_DATA, and the node kills a job above it); no -m: no limit"),
    Key("min_free_memory", parse_memory, lambda c: min(1024, _psutil().virtual_memory().total // 2 ** 20 // 20), _X,
        True, "below this much available memory, the node kills the job furthest over its reservation",
        "5% of physical memory, at most 1G"),
    Key("kill_grace", parse_duration, 30.0, _X, True, "a job at its time limit (-t) gets TERM, then KILL this long after"),
    Key("input_wait", parse_duration, 60.0, _X, True,
        "a job's input ends (EOF) if no grun feeds it by this long after it starts"),
    Key("ulimit", parse_ulimit, lambda c: {}, _X, True, "limits for every job: cpu, fsize, nofile, nproc, core, stack"),
    Key("count_outside_load", parse_bool, True, _X, True,
        "cpu and memory non-grun programs use beyond what cpus/memory leave of the machine are not offered to jobs"),
    Key("auth", choice("secret", "munge", "none"), lambda c: "secret" if c.personal else "none", "all", False,
        "secret: every connection proves secret_file; munge: MUNGE credentials (README: Trust); none",
        "secret in personal mode, else none (as the original grun)"),
    Key("secret_file", parse_path, lambda c: os.path.join(c.spool, "secret") if c.personal else "/etc/grun.secret", "all",
        False, "the same on every host (personal mode: made in the spool, mode 0600)"),
    Key("allow_root", parse_bool, lambda c: c.personal, _Q, True, "run jobs as root (uid 0)",
        "yes in personal mode (its user's own cluster), else no"),
    Key("tls", parse_tls, lambda c: {}, "all", False, "{cert: FILE, key: FILE, ca: FILE}: TLS on every connection (README: Trust)"),
    Key("admins", lambda v: frozenset(words(v, "user names", lambda u: ":" not in u)), lambda c: frozenset(), _Q, True,
        "users who may kill, hold, edit and attach to anyone's jobs and raise priorities (as root and the daemons may)"),
    Key("limits", lambda v: quotas().parse_limits(v), lambda c: {}, _Q, True,
        "the most running at once per user, user.NAME, group, group.NAME or all (README: GPUs and limits)"),
    Key("plugins", lambda v: words(v, "a list of module:Class", lambda i: i.count(":") == 1 and all(
        name.isidentifier() for name in i.replace(":", ".").split("."))), lambda c: [], _D, True,
        "more plugins, as module:Class (installed ones, entry point grun.plugins, load by themselves)"),
    Key("spool_max", parse_memory, 1024, _X, True,
        "MB of a job's unread output a node keeps; past it the job waits for its reader"),
    Key("wrap", lambda v: str(v or ""), "", _X, True, "a prefix for every job's command here, at {cmd} (a container, a module)"),
    Key("disk_warn", lambda v: f"{number(v.strip()[:-1], 'a percentage like 10%', most=100):g}%" if str(v).strip()
        .endswith("%") else parse_memory(v), "10%", _Q, True, "warn when the master's or a node's spool has less free (10% or 2G)"),
    Key("rules", lambda v: __import__("grun.core.rules", fromlist=["_"]).compile_rules(v), (), _Q, True,
        "policy at submit: a list of {if: CONDITION, ACTION: ...} (README: Rules)"),  # grun/core/rules.py
    Key("learn", parse_bool, True, _Q, True, "a job without -m, -c, -t gets them from its program's last runs"),
    Key("learn_memory_factor", lambda v: number(0 if v in (False, "off") else v, "a factor, or off", most=100),
        4.0, _Q, True, "a learned memory's limit: the estimate x this (0 or off: no limit)"),  # grun.core.learn
    Key("learn_runs", lambda v: int(number(v, "3 to 1000", least=3, most=1000)), 20, _Q, True, "how many of a "
        "program's last runs its estimates come from (p95)"),
    Key("nfs_sync", parse_bool, True, _X, True,
        "refresh NFS's cache of a job's cwd, command and -M files before and after it"),
    Key("stage", choice(*STAGE_MODES), "auto", _X, True,
        "send jobs' -M and --stage-in/out files to and from this node: auto (when it lacks their cwd), always, never"),
    Key("fetch_path", lambda v: [os.path.normpath(p) for p in words(v, "a list of absolute paths", os.path.isabs)],
        lambda c: [], _X, True, "with stage: auto, jobs whose cwd lies under these paths are staged too"),
    Key("stage_wait", _positive_duration, 300.0, _X, True,
        "a staged job fails if no client begins to send its inputs this soon; its end waits as long for its outputs to be fetched"),
    Key("munge_socket", lambda v: parse_path(v, absolute=True), "/run/munge/munge.socket.2", "all", False,
        "munged's socket, with auth: munge"),
    Key("private_queries", parse_bool, False, _Q, True, "users see only their own jobs (root, admins: all)"),
)}


class Config:
    """The effective configuration: an attribute per key of KEYS, path (None: personal mode), where (key -> "FILE:LINE"
    or "$VAR" of each value given), warnings. A plain class: `dataclasses` imports `inspect`, a cost to `grun CMD`."""

    def __init__(self, path=None, where=None, warnings=(), environ=os.environ, **values):
        assert set(values) <= set(KEYS), f"not config keys: {sorted(set(values) - set(KEYS))}"
        self.path, self.environ, self.where, self.warnings = path, environ, dict(where or {}), list(warnings)
        self._unread = {name: values.get(name, key.default) for name, key in KEYS.items()}

    def __getattr__(self, name: str):
        # only called for a key not read yet: a value that is a function of the Config is computed now
        if name not in self.__dict__.get("_unread", ()):
            raise AttributeError(f"'Config' object has no attribute {name!r}")
        value = self._unread.pop(name)
        setattr(self, name, value(self) if callable(value) else value)
        return self.__dict__[name]

    personal = property(lambda self: self.path is None)
    master_host = property(lambda self: self.master[0])
    master_port = property(lambda self: self.master[1])
    master_address = property(lambda self: format_hostport(*self.master))

    def __repr__(self) -> str:
        return "Config(" + ", ".join(f"{name}={getattr(self, name)!r}" for name in KEYS) + ")"


def load_config(path: str | None = None, environ=os.environ, use_auth: bool = True, lenient: bool = False) -> Config:
    """The effective Config from the file at `path` (as find_config_path gives it), or personal mode if None;
    `use_auth`: this process presents and checks what it says (a daemon's reload must not: it needs a restart);
    `lenient`: a bad value of a key a reload applies is left out (`grun -d -r` finds its daemon, which refuses it)."""
    raw, lines = _read_yaml(path) if path is not None else ({}, {})
    values, where, warnings = {}, {}, []
    if raw.keys() - KEYS.keys() or ":" in str(raw.get("bind", "")):  # the original grun's keys, maybe
        from .config_original import translate
        raw, lines, warnings = translate(raw, lines, path)
    given = [(name, value, path, lines.get(name)) for name, value in raw.items()]
    given += [(key.name, environ[key.env], f"${key.env}", None) for key in KEYS.values() if environ.get(key.env)]
    for name, value, source, line in given:
        at = f"{source}:{line}" if line else source
        if name not in KEYS:
            warnings.append(f"{at}: unknown key {str(name)!r} ignored{close_to(name, KEYS)}")
        elif value is not None or name == "log_file":  # null takes the default; log_file: null logs to stderr
            if source == "$GRUN_SPOOL":  # relative to where it was set, unlike a relative path in a file
                value = os.path.abspath(os.path.expanduser(value))
            try:
                values[name], where[name] = KEYS[name].parse(value), at
            except ValueError as e:
                if lenient and KEYS[name].reload:  # (not spool, pid_file, master: the default's would be another daemon)
                    continue
                raise ConfigError(str(e), source, getattr(e, "at", line), name if source == path else None) from None
    cfg = Config(path, where, warnings, environ, **values)
    if use_auth:
        from . import auth  # the secret of the config read last is the one this process's connections present
        auth.configure(cfg)
    return cfg


def find_config_path(explicit: str | None = None, environ=os.environ, etc_path: str = "/etc/grun.conf") -> str | None:
    """-C FILE, then $GRUN_CONF, then etc_path if it exists; None means personal mode. A file the user named
    must exist: falling back to personal mode would start a private cluster when they meant to join a real one."""
    named = explicit or environ.get("GRUN_CONF")
    if named and not os.path.exists(named):
        raise ConfigError("cannot read: No such file or directory", named)
    return named or (etc_path if os.path.exists(etc_path) else None)


def describe(cfg: Config, as_dict: bool = False):
    """The effective config as `grun -q conf` prints it: its warnings, then each key with its value and where it came
    from (FILE:LINE, $VAR, a guess or the default), as YAML that load_config reads back; `as_dict`: for --json."""
    warnings = checks(cfg)
    try:
        __import__("grun.plugins", fromlist=["_"]).load(cfg, instantiate=False)  # (as `grun -d` checks them)
    except ConfigError as exc:
        warnings.append(str(exc))
    lines = [f"# grun config from {cfg.path or 'no file (personal mode)'}; memory in MB, durations in seconds",
             *(f"# warning: {w}" for w in warnings)]
    keys = {}
    for name, key in KEYS.items():
        value = written(cfg.master_address if name == "master" else getattr(cfg, name))
        origin = cfg.where.get(name) or (f"guessed: {key.guess}" if key.guess else "default")
        keys[name] = {"value": value, "origin": origin}
        lines.append(f"{f'{name}: {written(value, True)}':<31} # {origin}")
    return {"file": cfg.path, "warnings": warnings, "keys": keys} if as_dict else "\n".join(lines) + "\n"


def written(value, text: bool = False):
    """A parsed value as a config file writes it (its source: rules'; a set as a list; 4.0 as 4), or (`text`) as YAML on
    one line: `grun -q conf`, a reload's log."""
    if text:
        import yaml
        return yaml.safe_dump(written(value), default_flow_style=True, width=2 ** 16).removesuffix("\n...\n").strip()
    value = getattr(value, "source", value)
    if isinstance(value, dict):
        return {k: written(v) for k, v in value.items()}
    return sorted(value) if isinstance(value, frozenset) else int(value) if isinstance(
        value, float) and value.is_integer() else value


def checks(cfg: Config, services=SERVICES) -> list[str]:
    """The config's warnings, with what a daemon of `services` looks up (at start and reload; `grun -q conf`: all),
    not every client: cpus or memory given beyond this machine's (not refused: overcommitting may be meant), or below
    what a job asks by default (a node here), users (admins, limits' user.NAME, rules') or groups (group.NAME, rules')
    this host does not know: they match nobody; a rule's condition that fails on every job (grun.core.rules' notes)."""
    import grp
    import pwd
    found = list(cfg.warnings)
    if "exec" in services:
        found += [f"{cfg.where[name]}: {name}: {given:,.10g} offered, more than this machine's {have:,.10g} {unit}"
                  for name, unit in (("cpus", "logical cores"), ("memory", "MB")) if name in cfg.where
                  and (given := getattr(cfg, name)) > (have := KEYS[name].default(cfg))]
    for name, flag in (("cpus", "-c"), ("memory", "-m")) if "exec" in services and "exec" in cfg.services else ():
        have, key = getattr(cfg, name), f"default_{name}"  # (a job that does not say asks the master's default_)
        if not have:
            found.append(f"{cfg.where.get(name, name)}: {name}: 0 offered: no job can run on this node")
        elif (want := getattr(cfg, key)) > have:
            found.append(f"{cfg.where.get(key) or cfg.where.get(name, name)}: {key}: {want:,.10g}, more than the {have:,.10g} "
                         f"{name} this node offers: a job without {flag} cannot run on it")
    named = [("user", u, "admins") for u in cfg.admins] + [(*s.split(".", 1), "limits") for s in cfg.limits if "." in s]
    named = [(kind, name, f"{cfg.where.get(key, key)}: {key}") for kind, name, key in named]
    notes = getattr(cfg.rules, "notes", ()) if "queue" in services else ()  # (no rules: ())
    if "queue" in services and cfg.limits:
        found += [f"{cfg.where.get('limits', 'config')}: limits: {text}" for text in quotas().typos(cfg.limits)]
    found += [f"{where}: {text}" for kind, text, where in notes if kind == "warning"]
    named += [note for note in notes if note[0] != "warning"]
    for kind, name, where in sorted(set(named)) if "queue" in services else ():
        try:
            (pwd.getpwnam if kind == "user" else grp.getgrnam)(name)
        except (KeyError, ValueError):  # (ValueError: a name with a NUL)
            found.append(f"{where}: no {kind} {name!r} on this host")
    return found


# "master: [::1]:6000" is not valid YAML (a flow list, then junk) and "master: 10:30" is the base-60 integer
# 630, so an unquoted top-level master value is quoted before PyYAML reads it (the fast path takes it as written).
_MASTER_LINE = r"(?m)^(master[ \t]*:[ \t]*)([^\s'\"#|>&*!{][^\s'\"#]*)([ \t]+#.*)?[ \t]*$"

# The fast path for the common file, one `key: value` a line with plain values, read without importing yaml
# (~12 ms of every `grun CMD`) or re (~4 ms). Anything else (nesting, flow collections, lists, anchors, escapes,
# tabs, duplicate keys, values YAML 1.1 would read otherwise than the int, float, bool, null or string taken here)
# returns None and goes to PyYAML, which also gives the errors. tests/test_cli_fast.py checks they agree.
_KEY = _NAME_START | frozenset("0123456789")
_PLAIN = _KEY | frozenset("./-")  # a plain value: words of these, one space between


def _read_simple(text: str) -> tuple[dict, dict[str, int]] | None:
    if not text.replace("\n", "").isprintable():  # control characters (YAML refuses them, in comments too), tabs, CR
        return None
    raw, lines = {}, {}
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip(" ") or line.startswith("#"):
            continue
        key, colon, rest = line.partition(":")
        if not colon or key[:1] not in _NAME_START or not _KEY.issuperset(key) or key in raw or key in YAML_WORDS \
                or rest[:1] not in ("", " "):
            return None  # not a key, twice, a key YAML reads as no string, or no space after its colon
        value = rest.lstrip(" ")
        if value[:1] in ("'", '"'):  # 'text' or "text" (no escapes), then maybe a comment
            end = value.find(value[0], 1)
            quoted, after = value[1:end], value[end + 1:]
            if end < 0 or after.strip(" ") and not (after.startswith(" ") and after.lstrip(" ").startswith("#")) \
                    or value[0] == '"' and "\\" in quoted:
                return None
            raw[key], lines[key] = quoted, lineno
            continue
        value = value.partition(" #")[0].rstrip(" ") if not value.startswith("#") else ""
        if key == "master" and value and YAML_WORDS.get(value, "") is not None and value[0] not in "|>&*!{" and not any(
                c.isspace() or c in "#'\"" for c in value):
            pass  # master's value is the address as written, as PyYAML reads it once _MASTER_LINE has quoted it
        elif not value or value in YAML_WORDS:
            value = YAML_WORDS.get(value)
        elif not _PLAIN.issuperset(value.replace(" ", "")) or "  " in value or value[0] == "-":  # "-5", "- x": PyYAML's
            return None
        elif (num := value.partition("."))[0].isdigit() and (num[2].isdigit() or not num[1] and (
                num[0] == "0" or num[0][0] != "0")):
            value = float(value) if num[1] else int(value)
        # a plain value YAML 1.1 might read as an int, float or timestamp though it is none of the forms above: a date,
        # hex, binary, .inf/.nan, 1_000, "1.". (There is no ':', '+' or leading '-' here: no base-60, no signed exponent.)
        elif value[0] in "0123456789." and ("-" in value or value.startswith(("0x", "0b")) or value.lower() in (
                ".inf", ".nan") or not value.replace("_", "").replace(".", "", 1).strip("0123456789")):
            return None
        raw[key], lines[key] = value, lineno
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
    if (simple := _read_simple(text)) is not None:
        return simple
    import re

    import yaml
    text = re.sub(_MASTER_LINE, lambda m: m.group(0) if YAML_WORDS.get(m.group(2), "") is None else
                  f"{m.group(1)}'{m.group(2)}'{m.group(3) or ''}", text)
    loader = yaml.SafeLoader(text)  # one loader for both: the value, and its node for each key's line
    try:
        node = loader.get_single_node()
        value = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:  # a MarkedYAMLError says where, and what without the whole context
        from .config_original import read
        if (original := read(text)) is not None:  # `key: value` lines that are not YAML: the original's format
            return original
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        problem = getattr(e, "problem", None) or getattr(e, "context", None) or e
        raise ConfigError(f"not valid YAML: {problem}", path, mark.line + 1 if mark else None) from None
    if value is not None and not isinstance(value, dict):
        kind = "a list" if isinstance(value, list) else f"a single value {str(value)[:60]!r}"
        raise ConfigError(f"expected a mapping of key: value at the top level, got {kind}", path,
                          node.start_mark.line + 1)
    lines: dict[str, int] = {}
    for key, item in node.value if value else ():
        if isinstance(key, yaml.ScalarNode):  # YAML keeps the last of two quietly: worse than an error
            line = key.start_mark.line + 1
            if key.value in lines:
                raise ConfigError(f"given twice (first on line {lines[key.value]})", path, line, key.value)
            lines[key.value] = line
            if key.value == "rules":  # each scalar with where it starts, for grun.core.rules' errors
                value["rules"] = __import__("grun.core.rules", fromlist=["_"]).marked(item, path)
    return value or {}, lines
