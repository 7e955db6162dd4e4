"""Policy rules (`rules:` in the config): their conditions over a job's fields (in grun.core.expr's language),
their actions and the order they run in at submit, and the nodes: condition placement checks. Pure code: the
files and groups a condition reads come through the `facts` the caller gives, asked only when a rule reads them."""

import functools
import operator
import os.path

from ..values import parse_cpus, parse_memory, parse_priority, parse_time_limit
from . import jobs as J
from .expr import RuleError, compile_expr
from .rule_checks import notes_of

SCRIPT_BYTES = 64 * 1024


class Job:
    """What a condition reads: the request as earlier rules left it (its `group`: the master's) and, read once when
    asked, `facts`.head(path, uid, gid) -> first bytes, .size(...) -> bytes, .groups(user, gid) -> names (or None)."""

    def __init__(self, req: dict, facts=None):
        self.req, self.facts = req, facts

    argv = functools.cached_property(lambda self: J.argv(self.req))
    script_path = functools.cached_property(lambda self: J.script_of(self.argv, self.req.get("shell")))

    def _fact(self, what: str, *args):
        return getattr(self.facts, what)(*args) if self.facts is not None else None

    def _file(self, what: str, path):
        ok = isinstance(path, str) and path
        return self._fact(what, os.path.join(self.req["cwd"], path), self.req["uid"], self.req["gid"]) if ok else None

    @functools.cached_property
    def script(self) -> str | None:
        data = self._file("head", self.script_path[0])
        inline = self.script_path[1] if self.script_path[1] and self.script_path[1][0] != "-m" else (None, None)
        return inline[1] if data is None else data[:SCRIPT_BYTES].decode("utf-8", "replace")

    size = lambda self, path: None if (b := self._file("size", path)) is None else b / 2 ** 20
    groups = functools.cached_property(lambda self: self._fact("groups", self.req["user"], self.req["gid"]) or [])


_req = lambda key: lambda env: env.req.get(key)
JOB_FIELDS = {"user": _req("user"), "group": _req("group"), "groups": operator.attrgetter("groups"),
              "cmd": lambda env: env.req["cmd"][0] if env.req.get("shell") else " ".join(env.req["cmd"]),
              "argv": operator.attrgetter("argv"), "script": operator.attrgetter("script"),
              "prog": lambda env: os.path.basename(env.script_path[0] or (  # `python3 -m pip`: pip, as before
                  env.script_path[1][1] if env.script_path[1] and env.script_path[1][0] == "-m" else env.script_path[2])),
              **{k: _req(k) for k in ("cwd", "cpus", "memory", "time", "priority", "params", "name", "array")},
              "hosts": _req("host")}
NODE_FIELDS = {**{k: operator.attrgetter(k) for k in ("name", "labels", "resources", "cpus", "memory")},
               "load": lambda node: node.grun_cpus + node.outside_cpus}
_job_test = functools.partial(compile_expr, fields=JOB_FIELDS, functions={"size": lambda env, path: env.size(path)})
_node_test = functools.lru_cache(maxsize=1024)(functools.partial(compile_expr, fields=NODE_FIELDS))


def meets(condition: str, node) -> bool:
    """Whether a node (a grun.core.nodes.NodeView) meets a job's `nodes:` condition; one that fails is not met."""
    try:
        return bool(_node_test(condition)(node))
    except Exception:  # (a label compared with a list, say): this node is not for the job
        return False


_SETTABLE = {"cpus": parse_cpus, "memory": parse_memory, "time": parse_time_limit, "priority": parse_priority,
             "host": lambda v: J.validate_spec({"cmd": ["-"], "host": v})["host"],
             "retries": lambda v: J.validate_spec({"cmd": ["-"], "retries": parse_priority(v)})["retries"]}
ACTIONS = ("if", "name", "default", "set", "params", "labels", "priority", "hosts", "warn", "reject", "nodes")
# LINE:COLUMN of a config value read with its position (Marked), else None
_at = lambda text, offset=0: f"{text.line}:{text.column + offset + 1}" if getattr(text, "line", None) else None


def _mapping(value, parse) -> dict:
    if not isinstance(value, dict) or not value:
        raise ValueError(f"expected a mapping like {{memory: 4G, cpus: 2}}, got {value!r}")
    try:
        return dict(parse(str(name), str(item)) for name, item in value.items())
    except (TypeError, ValueError) as e:
        item = next((v for k, v in value.items() if str(k) in str(e)), None)  # (the message names it)
        raise RuleError(str(e), _at(item)) from None


def _settable(name: str, value: str) -> tuple:
    key = "host" if name == "hosts" else name
    if key not in _SETTABLE:
        raise ValueError(f"{name}: not a field a rule sets (these are: cpus, memory, time, priority, hosts, retries)")
    try:
        return key, _SETTABLE[key](value)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


_PARSE = {"default": _settable, "set": _settable,  # (labels are strings; params numbers where they read as one)
          "params": lambda name, value: (name, J.validate_params({name: J.number_or_text(value)})[name]),
          "labels": lambda name, value: (name, J.validate_params({name: value})[name])}


class Rules(list):
    """Compiled rules (label, condition, actions) with `notes` (rule_checks), equal when their `source` (YAML) is."""
    __eq__ = lambda self, other: self.source == getattr(other, "source", other)
    __ne__ = lambda self, other: not self.__eq__(other)
    __repr__ = lambda self: f"<{len(self)} rules>"


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, list) else str(value) if isinstance(value, str) else value


class Marked(str):
    """A config scalar as written, with its file, line and column: for errors that point there."""


def marked(node, path: str):
    """A YAML node (grun.config reads the file) as data whose strings are Marked."""
    if node.id != "scalar":
        return {marked(k, path): marked(v, path) for k, v in node.value} if node.id == "mapping" else \
            [marked(v, path) for v in node.value]
    text = Marked(node.value)
    text.path, text.line = path, node.start_mark.line + 1
    text.column = node.start_mark.column + (node.style in ("'", '"'))  # (a quoted one starts after its quote)
    return text


def compile_rules(value) -> Rules | tuple:
    """The `rules:` key: a list of mappings, each `if: CONDITION` (none: every job) and actions; a RuleError."""
    if value is None or value == [] or isinstance(value, str) and value.strip() in ("", "~", "null"):
        return ()  # (the key's default)
    if not isinstance(value, list):
        raise RuleError(f"expected a list of rules like `- if: CONDITION` with actions, got {value!r}", _at(value))
    notes: list[tuple] = []
    rules = Rules(_rule(n, raw, notes) for n, raw in enumerate(value, 1))
    rules.source, rules.notes = _plain(value), notes
    return rules


def _rule(number: int, raw, notes: list) -> tuple:
    if not isinstance(raw, dict) or not raw:
        raise RuleError(f"rule {number}: expected a mapping like {{if: CONDITION, set: {{cpus: 2}}}}", _at(raw))
    first = next(iter(raw))
    name, test, actions = f"rule {raw.get('name') or number}", (lambda env: True), []
    label = name + (f" ({os.path.basename(first.path)}:{first.line})" if getattr(first, "path", None) else "")
    for key, value in raw.items():
        text = " ".join(str(value).split())
        try:
            if key == "if":
                test = _job_test(value, compares=(compares := []))
                notes_of(label, compares, JOB_FIELDS, notes, "it fails on every job (the rule is skipped)")
            elif key in _PARSE:
                actions.append(("params" if key == "labels" else key, _mapping(value, _PARSE[key])))
            elif key in ("priority", "hosts"):  # (a priority of +N or -N: relative)
                actions.append(("priority", parse_priority(text)) if key == "priority" and text[:1] in "+-" else
                               ("set", dict([_settable(key, text)])))
            elif key in ("warn", "reject", "nodes"):
                if key == "nodes":  # (compiled only to check it: placement compiles its own)
                    compile_expr(value, NODE_FIELDS, compares=(compares := []))
                    notes_of(label, compares, NODE_FIELDS, notes, "no node meets it")
                actions.append((key, (text, name) if key == "reject" else text))
            elif key != "name":
                raise RuleError(f"unknown action (known: {', '.join(ACTIONS)})", _at(key))
        except ValueError as e:  # (a RuleError's `at`: where in the expression, or LINE:COLUMN)
            at = getattr(e, "at", None)
            at = _at(value, at) if isinstance(at, int) else at or _at(value) or _at(key)
            raise RuleError(f"{label}, {key}: {e}", at) from None
    return label, test, actions


def apply(rules, req: dict, spec: dict, facts=None, log: list | None = None) -> dict:
    """Run the rules on a validated request in order (`default:` fills what neither the user, `spec`, nor an earlier
    rule gave; `set:` overrides), in place; (level, text, command) for the admin to `log`; a reject: a ValueError."""
    env, log = Job(req, facts), [] if log is None else log
    for label, test, actions in rules:
        try:
            if not test(env):
                continue
        except Exception as e:  # a condition that fails on this job: logged and skipped, the job goes on
            log.append(("warning", f"{label} skipped for a job of {req['user']}: {type(e).__name__}: {e}", req["cmd"]))
            continue
        origin = req.setdefault("origin", {})
        for kind, value in actions:
            if kind == "reject":  # (the user sees which rule, as a plugin's Reject names its plugin)
                log.append(("info", f"{label} refused a job of {req['user']}: {value[0]}", req["cmd"]))
                raise ValueError(f"{value[0]} ({value[1]})")
            for key, v in value.items() if isinstance(value, dict) else ():
                if kind == "params":
                    req["params"], origin[f"params.{key}"] = {**req["params"], key: v}, label
                elif kind == "set" or spec.get(key) is None and key not in origin:
                    req[key], origin[key] = v, label
                    req.update({f"{key}_set": True} if key in ("cpus", "memory") else {})  # as -c/-m: a limit too
            if kind == "priority":
                req["priority"], origin["priority"] = req["priority"] + value, label
            elif kind == "warn":
                req.setdefault("warnings", []).append(value)
            elif kind == "nodes":
                req["nodes"], origin["nodes"] = f"({req['nodes']}) and ({value})" if req.get("nodes") else value, label
        if not origin:
            del req["origin"]
    return req
