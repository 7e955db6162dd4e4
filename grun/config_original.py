"""The original Perl grun's /etc/grun.conf, read as this grun's config: its `key: value` lines (a file YAML cannot read
goes through the original's own reader, with `include:` and `$key` values), each of its keys turned into ours
(`param-NAME: 2` a counted resource, `param-NAME: text` a label, `default_cpu`, `bind` with a port, ...) or reported at
its FILE:LINE as not supported, with what to use instead. Perl (`match:`, the `auto_profile` script, `{code}` values) is
never run: the report shows the rule that replaces it. Imported only for a config with a key that is not ours."""

import math
import os
import re

from .config import ConfigError
from .values import format_hostport, parse_hostport

_RENAMED = {"default_cpu": "default_cpus", "io_keep": "output_keep", "ping_secs": "heartbeat",
            "ping_expire": "node_timeout", "expire_secs": "node_timeout", "run_asroot": "allow_root",
            "hostip": "advertise"}
_NO = "not supported in this grun"
_RULES = f"{_NO}: its Perl is not run; "
_UNSUPPORTED = {
    "match": _RULES + """a rule's `nodes:` condition replaces it (README: Rules), e.g. `rules: [{nodes: 'load < 4
        and labels.os == "debian12"'}]`, or for some jobs only `rules: [{if: 'user == "bob"', nodes: 'name like
        "big*"'}]`""",
    "auto_profile": _RULES + """rules replace it (README: Rules): `$mem = 3000 if $cmd =~ /tophat/ && -s $cmd[4] >
        100000` is `rules: [{if: 'prog == "tophat" and size(argv[4]) > 100K', default: {memory: 3000}}]`""",
    "env": f"{_NO}: PATH and the usual session variables always go with a job; `grun -E VAR,...` passes others",
    "idle_load": "not needed: grun counts what other programs use of each node (count_outside_load)",
    **dict.fromkeys(("remove_secs", "retry_secs", "max_buf", "max_sched", "spread_pct"), "not needed: grun's nodes "
                    "report, and its scheduler places jobs, otherwise (node_timeout, heartbeat; README: How it works)"),
    **dict.fromkeys(("full_match", "full_exec"), f"{_NO}: it runs no command when the queue is full"),
    "kickstart": f"{_NO}: systemd restarts a dead daemon (`grun -d --systemd --install`)",
    **dict.fromkeys(("bench", "bench_secs"), f"{_NO}: nodes are not benchmarked"),
    **dict.fromkeys(("backup_grid", "debug_memory"), _NO),
}


def read(text: str, theirs: bool = True) -> tuple[dict, dict] | None:
    """The original's reader, for a file YAML cannot read: `key: value` lines, `#` comments; None when a line
    is not one, or (`theirs`) no key is the original's (then the YAML error stands)."""
    raw, lines = {}, {}
    for number, line in enumerate(text.split("\n"), 1):
        m = re.fullmatch(r"([A-Za-z_][\w.-]*)[ \t]*:[ \t]*(.*?)\s*", line)
        if m is None and line.strip() and not line.lstrip().startswith("#"):
            return None
        if m:  # ('master' comes quoted by grun.config's _MASTER_LINE)
            raw[m[1].lower()], lines[m[1].lower()] = re.sub(r"^'(.*)'$", r"\1", m[2]), number
    known = set(_RENAMED) | set(_UNSUPPORTED) | {"port", "expire_action", "log_types", "trace", "include"}
    return (raw, lines) if not theirs or any(k in known or k.startswith(("param-", "label-")) for k in raw) else None


def translate(raw: dict, lines: dict, path: str) -> tuple[dict, dict, list[str]]:
    """The original's keys among `raw` as ours: (values, their lines, reports); other keys are left as they are."""
    if "include" in raw:  # as if it were part of the file; what the file itself says wins
        try:
            with open(os.path.join(os.path.dirname(path), str(raw["include"]))) as f:
                extra = read(f.read(), theirs=False) or ({}, {})
        except OSError as e:
            raise ConfigError(f"cannot read {raw['include']}: {e.strerror}", path, lines.get("include"), "include")
        raw, lines = {**extra[0], **raw}, {**{k: f"{v} of {raw['include']}" for k, v in extra[1].items()}, **lines}
    out, where, reports, params, listen = {}, {}, [], {"resources": {}, "labels": {}}, None

    def report(key, why):
        value = " ".join(str(raw[key]).split())
        reports.append(f"{path}:{lines.get(key)}: key {key!r} ({value[:40] + '...' if len(value) > 43 else value}) "
                       f"{' '.join(why.split())}")

    def put(ours, key, value):
        if ours in out:
            return report(key, f"not used: {ours} is set already, by line {where[ours]}")
        out[ours], where[ours] = value, lines.get(key) if key == ours else f"{lines.get(key)} (original {key})"

    for key, value in raw.items():
        if isinstance(value, str) and "$" in value and key not in ("match", "auto_profile"):
            value = re.sub(r"\$([\w-]+)", lambda m: str(raw.get(m[1].lower(), m[1])), value)
        try:
            if isinstance(value, str) and re.fullmatch(r"\{.*\}", value.strip()):
                report(key, "not supported in this grun: Perl code in {...} is not run; write its value")
            elif key.startswith("param-"):  # a number: a counted resource; else a label
                kind = "resources" if _is_number(value) else "labels"
                params[kind][key[6:]] = value
                where.setdefault(kind, f"{lines.get(key)} (original {key})")
            elif key in _RENAMED:
                put(_RENAMED[key], key, value)
            elif key == "default_memory" and _is_number(value):  # in kB there, 1000 kB a MB (4G: as ours)
                out[key], where[key] = math.ceil(float(value) / 1000), f"{lines.get(key)} (in kB there: {value})"
            elif key == "bind":  # its port is the one the master listens on, unless `master:` gives one
                host, port = parse_hostport(str(value), 0)
                put(key, key, host)
                listen = (port, key) if port else listen
            elif key == "port":
                listen = listen or (int(value), key)
            elif key == "expire_action":
                put("requeue", key, str(value).strip() != "fail")
            elif key == "log_types" or key == "trace" and str(value).strip() not in ("0", "", "False", "None"):
                words = str(value).split() if key == "log_types" else ["debug"]  # its default: note error warn
                level = "debug" if "debug" in words else "info" if "note" in words else "warning" if "warn" in words \
                    else "error"
                if level == "debug" or "log_level" not in out:
                    out["log_level"], where["log_level"] = level, f"{lines.get(key)} (original {key})"
            elif key == "ulimit" and isinstance(value, str):  # -f BYTES -t SECONDS -v -m there
                report(key, f"{_NO}: write it as `ulimit: {{fsize: 100G, cpu: 12h}}`; memory limits come from -m x "
                            "hard_factor")
            elif key in _UNSUPPORTED or key.startswith("label-") or key in ("config", "version"):
                report(key, _UNSUPPORTED.get(key) or _UNSUPPORTED["match"])
            elif key != "include":
                put(key, key, value)  # ours, or nobody's: then reported as unknown, with the closest key
        except ValueError as e:
            raise ConfigError(str(e), path, lines.get(key), key) from None
    for kind, found in params.items():
        if found:
            out[kind] = {**found, **out[kind]} if isinstance(out.get(kind), dict) else found
    if listen and not (master := parse_hostport(str(out.get("master", "localhost")), 0))[1]:
        out["master"] = format_hostport(master[0], listen[0])
        where["master"] = f"{where.get('master', lines.get(listen[1]))} (the port: line {lines.get(listen[1])}'s)"
    elif listen and master[1] != listen[0]:  # (a node's own port for a firewall: grun has none, say so)
        report(listen[1], f"its port is not used: the master listens on master:'s ({master[1]}), nodes on ports the OS gives")
    return out, where, reports


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) or bool(
        re.fullmatch(r"\d+(\.\d*)?", str(value).strip()))
