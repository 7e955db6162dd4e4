"""Values as a config file or the command line gives them -> the values grun uses: memory sizes, durations, cpus,
priorities, host:port, resources and labels, ulimits, users. Each parser returns the value or raises
ValueError("expected WHAT, got VALUE"); grun.config adds the file, line and key. Pure: no I/O. No `re` either:
with the enum it brings, it was 4 ms of every `grun` call, a fifth of a `grun --nowait` (bench/README.md)."""

import math
import os

DEFAULT_PORT = 5184
SERVICES = frozenset({"queue", "exec"})
STAGE_MODES = ("auto", "always", "never")  # config key stage:, grun --stage (grun.stage)
# the words YAML 1.1 reads as true, false and null
YAML_WORDS = {form: value for value, words in ((True, "yes true on"), (False, "no false off"), (None, "~ null"))
              for word in words.split() for form in (word, word.title(), word.upper())}


def expect(ok, what: str, value, got: str = "") -> None:
    """The one error of every parser: `expected WHAT, got VALUE`."""
    if not ok:
        text = repr(value)
        raise ValueError(f"expected {what}, got {got}{text if len(text) <= 60 else text[:57] + '...'}")


_NAME_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_NAME = _NAME_START | frozenset("0123456789.-")
_MEMORY_UNIT = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 ** 2}  # in MB
_DURATION_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def close_to(name, known, cutoff: float = 0.6) -> str:
    """ "; did you mean 'cpus'?" for the name in `known` closest to a mistyped `name`, or "" (difflib: only then)."""
    import difflib
    return "".join(f"; did you mean {m!r}?" for m in difflib.get_close_matches(str(name), known, 1, cutoff))


def is_name(text) -> bool:
    """A resource's, label's or -p parameter's name: a letter or _, then letters, digits, _ . -; 64 at most."""
    return isinstance(text, str) and text[:1] in _NAME_START and _NAME.issuperset(text) and len(text) <= 64


def decimal(text: str) -> float | None:
    """The number of "4", "4.", "0.5" or ".5" (digits and at most one point: no sign, exponent or "_"), else None."""
    return float(text) if text.replace(".", "", 1).isdecimal() else None


def number(value, what: str, most: float = 2 ** 53, least: float = 0) -> float:
    """A number from `least` to `most`, or its text ("4", "0.5"); bools are YAML's yes/no, not numbers. Past
    2**53 no float is exact (and a YAML integer of 400 digits would not even convert): surely a mistake."""
    number = decimal(value.strip()) if isinstance(value, str) else value
    expect(isinstance(number, (int, float)) and not isinstance(number, bool) and number >= least, what, value)
    expect(number <= most, what, value, "an absurd value ")
    return float(number)


def number_or_text(text: str):
    """`-p gpu=2` asks for 2 of a consumable; `-p os=debian12` for a label (a value not a string stays as it is)."""
    try:
        if isinstance(text, str) and math.isfinite(value := float(text)):
            return int(value) if value.is_integer() else value
    except ValueError:
        pass
    return text


def parse_memory(text) -> int:
    """Memory in MB: 3000, "3000", "500M", "4 g", "1.5gib", "2Gi", "1T", "512kb": a number and at most one unit (MB
    without one), rounded up to whole MB."""
    what, size = "a memory size like 4096 (MB), 500M or 4G", str(text).strip().lower()
    for suffix in ("ib", "i", "b"):  # (4GiB, 4Gi as Kubernetes writes it, 4GB)
        if size.endswith(suffix) and size[:-len(suffix)][-1:] in _MEMORY_UNIT:
            size = size[:-len(suffix)]
            break
    unit = size[-1:] if size[-1:] in _MEMORY_UNIT else ""
    amount = decimal(size.removesuffix(unit).rstrip()) if isinstance(text, str) else None
    mb = number(text, what) if amount is None else amount * _MEMORY_UNIT[unit or "m"]
    expect(mb <= 2 ** 40, what, text, "an absurd size ")  # an exabyte: surely a units mistake
    return math.ceil(mb)  # the units are powers of two: no rounding beyond the number's own


def parse_cpus(text) -> float:
    return number(text, "a number of CPUs like 4 or 0.5", most=100_000)


def parse_duration(text, positive: bool = False) -> float:
    """Seconds from a number or "45s", "30m", "12h", "1d", "2w", "1h30m" (spaces around either): once there are
    several numbers, each needs its unit ("1h 30" is ambiguous)."""
    terms, amount = [], ""  # (a unit after no number: kept in amount, which is then no number)
    for char in text.strip().lower() if isinstance(text, str) else "":
        if char in _DURATION_UNIT and (value := decimal(amount.strip())) is not None:
            terms, amount = [*terms, value * _DURATION_UNIT[char]], ""
        else:
            amount += char
    seconds = round(sum(terms), 6) if terms and not amount.strip() else number(
        text, "a duration like 30, 45s, 30m, 12h or 1d")  # 0.7h: 2520
    expect(seconds > 0 or not positive, "a duration above zero", text)
    return seconds


MAX_TIME = 366 * 86400.0  # a time limit's, a retry delay's


def parse_time_limit(text) -> float:
    """Seconds of a wall-time limit, in Slurm's forms (30 = minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) or
    with units as grun's durations (90s, 30m, 2h, 1d, 1h30m); 0 (or Slurm's UNLIMITED, INFINITE) is none."""
    word = str(text).strip()
    days, dash, clock = word.partition("-")
    given = clock.split(":") if dash else word.split(":")
    if word.upper() in ("UNLIMITED", "INFINITE"):
        seconds = 0.0
    elif word[:1].isdecimal() and word[-1:].isdecimal() and (minutes := decimal(word)) is not None:
        seconds = minutes * 60  # (as Slurm reads a bare number)
    elif (days.isdecimal() or not dash) and all(map(str.isdecimal, given)) and (1 if dash else 2) <= len(given) <= 3:
        hms = [*map(int, given), *[0] * (3 - len(given))] if dash else [*[0] * (3 - len(given)), *map(int, given)]
        seconds = (int(days) * 86400 if dash else 0) + hms[0] * 3600 + hms[1] * 60 + hms[2]  # D-HH[:MM[:SS]], [HH:]MM:SS
    else:
        try:
            seconds = parse_duration(word)
        except ValueError:
            seconds = -1
    expect(0 <= seconds <= MAX_TIME, "a time limit of at most a year (0: none), like 30 (minutes), 2h, 1:30:00 or "
           "1-12:00", text)
    return float(seconds)


def parse_bool(value) -> bool:
    word = value if isinstance(value, bool) else {"1": True, "0": False, **YAML_WORDS}.get(str(value).strip().lower())
    expect(word is not None, "true or false", value)
    return word


def named(value, kind: str, values: str, parse) -> dict:
    """resources and labels: a mapping of names to values, each through `parse`."""
    expect(isinstance(value, dict), f"a mapping of {kind} names to {values}", value)
    out = {}
    for name, item in value.items():
        expect(is_name(name) and name not in ("cpus", "memory"),
                f"{kind} names of letters, digits, _ . - (not cpus or memory)", name)
        try:
            out[name] = parse(item)
        except ValueError as e:
            raise ValueError(f"{kind} {name}: {e}") from None
    return out


def resource(value):
    """An amount (a counted consumable; a size, 500G, in MB as memory is), or a list of device ids (gpu: [0, 1])."""
    if not isinstance(value, list):
        try:  # (a bad one in words that fit a resource: parse_memory's say "a memory size")
            return parse_memory(value) if str(value).strip()[-1:].isalpha() else number(value, "")
        except ValueError:
            expect(False, "a count like 8, a size counted in MB like 500G or a list of device names like [0, 1]", value)
    ids = [label(v) for v in value]
    expect(len(set(ids)) == len(ids), "device ids listed once each", value, "duplicates in ")
    return ids


def label(text) -> str:
    expect(not isinstance(text, (dict, list)) and text is not None and str(text).strip(), "a single value", text)
    return str(text).strip() if not isinstance(text, bool) else str(text).lower()


def words(value, what: str, ok=lambda word: True) -> list[str]:
    """A YAML list of words, or one string of them separated by spaces or commas; each one `ok`."""
    items = value.replace(",", " ").split() if isinstance(value, str) else value
    expect(isinstance(items, list) and all(isinstance(i, str) and ok(i.strip()) for i in items), what, value)
    return [i.strip() for i in items if i.strip()]


def choice(*names: str, **aliases: str):
    """The parser of a word among `names` (any case; `aliases`: other words for some of them)."""
    def parse(text) -> str:
        word = aliases.get(str(text).strip().lower(), str(text).strip().lower())
        expect(word in names, f"{', '.join(names[:-1])} or {names[-1]}", text)
        return word
    return parse


_count = lambda v: int(number(v, "a count"))
_ULIMITS = {"cpu": (lambda v: max(1, math.ceil(parse_duration(v))), 0), "fsize": (parse_memory, 1),
            "nofile": (_count, 16), "nproc": (_count, 0), "core": (parse_memory, 0), "stack": (parse_memory, 0)}


def parse_ulimit(value) -> dict[str, int | None]:
    """Limits for every job: cpu (a duration), fsize/core/stack (sizes, MB or with a unit), nofile and
    nproc (counts); "unlimited" for none. Returns name -> seconds, MB or count (None: unlimited)."""
    expect(isinstance(value, dict), "a mapping like {cpu: 12h, fsize: 10G, nofile: 1024}", value)
    out: dict[str, int | None] = {}
    for name, limit in value.items():
        expect(isinstance(name, str) and name in _ULIMITS, f"limits among {', '.join(_ULIMITS)}", name)
        parse, least = _ULIMITS[name]
        try:
            out[name] = None if str(limit).strip().lower() in ("unlimited", "infinity", "none") else parse(limit)
            expect(out[name] is None or out[name] >= least, f"at least {least}{'M' * (name == 'fsize')}", limit)
        except ValueError as e:
            raise ValueError(f"limit {name}: {e}") from None
    return out


MAX_PRIORITY = (1 << 31) - 1  # a job's priority, +- this: 32 bits (the master's check; -r, $GRUN_PRIORITY say it first)


def parse_priority(value, most: float = math.inf) -> int:
    """A whole number or its text ("7", "-3", "+2"; bools are YAML's yes/no, not numbers), from -`most` to `most`."""
    text = value.strip() if isinstance(value, str) else ""
    whole = (text[1:] if text[:1] in "+-" else text).isdecimal() or isinstance(value, int) and not isinstance(value, bool)
    expect(whole and -most <= int(value) <= most, "a whole number" + f" from {-most} to {most}" * (most < math.inf), value)
    return int(value)


def parse_job_priority(value) -> int:
    """A job's priority (-r, $GRUN_PRIORITY, an edit): a whole number the master takes; a ValueError saying the range."""
    return parse_priority(value, MAX_PRIORITY)


def task_ref(text) -> tuple[int, int] | None:
    """`12.7`, task 7 of array 12, as (12, 7); None for anything else (a job id, a name)."""
    head, dot, tail = str(text).strip().partition(".")
    return (int(head), int(tail)) if dot and head.isdecimal() and tail.isdecimal() and int(head) else None


def parse_hostport(text, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """ "host", "host:port", "[v6]:port", "[v6]" or a bare IPv6 address (two colons or more) -> (host, port)."""
    address = text.strip() if isinstance(text, str) else ""
    if address.startswith("["):
        host, closed, rest = address[1:].partition("]")
        port, ok = rest[1:] if rest else None, closed and rest[:1] in ("", ":")
    else:  # (two colons or more: a bare IPv6 address, no port)
        host, colon, port = (address, "", "") if address.count(":") >= 2 else address.partition(":")
        port, ok = port if colon else None, True
    expect(ok and host and not any(c.isspace() or c in "/[]" for c in host), "host or host:port ([addr]:port for IPv6)",
           text)
    expect(not host.isdigit(), "host or host:port", text, "only a number ")  # "master: 6000" is a port
    expect(port is None or port.isdecimal() and 1 <= int(port) <= 65535, "a port between 1 and 65535", text,
            f"{port!r} in ")
    return host, default_port if port is None else int(port)


def is_any_address(host: str) -> bool:
    """0.0.0.0, ::, ::0 or "": a bind to every interface, where others reach us by another name."""
    return not host.strip("0.:")


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_services(text) -> frozenset[str]:
    """ "queue", "queue,exec", "queue exec" or a YAML list -> a non-empty subset of SERVICES."""
    names = frozenset(w.lower() for w in words(text, "a list of services"))
    expect(names and not names - SERVICES, "one or both of queue, exec", text)
    return names


def parse_tls(value) -> dict:
    """{cert, key, ca}: absolute paths to PEM files (this host's certificate and key, the cluster's CA); {}: off."""
    if value in (None, "", "none", "off", {}):
        return {}
    expect(isinstance(value, dict) and set(value) == {"cert", "key", "ca"}, "a mapping {cert, key, ca}", value)
    return {name: parse_path(path, absolute=True) for name, path in value.items()}


def parse_host(text) -> str:
    expect(isinstance(text, str) and text.strip() and not any(c.isspace() or c == "/" for c in text.strip()),
           "a host or address", text)
    return text.strip()


def parse_path(text, absolute: bool = False):
    """A path; a relative one lives under the spool, so it is a function of the Config (see Config)."""
    expect(isinstance(text, str) and text.strip(), "a path", text)
    path = os.path.normpath(os.path.expanduser(text.strip()))
    expect(os.path.isabs(path) or not absolute, "an absolute path", text)
    return path if os.path.isabs(path) else lambda cfg: os.path.join(cfg.spool, path)
