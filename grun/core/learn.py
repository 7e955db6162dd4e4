"""Learned requests (README: Learned requests): what a user's program used in its last runs, as the request
of its next run when the user does not say (-m, -c, -t). Pure code.

`Learned` is a bounded table keyed by (user, `program_of`), the key whose last run is oldest going first; each keeps a
ring of its last runs and its prediction, worked out when a run is added, so submit and finish cost one dict lookup
whatever the history. It lives in the JobTable and its snapshot: a finish record adds its run when applied, live or
replayed after the snapshot, so a restart counts nothing twice. `fill` only reads (it runs outside the master's lock).
No input-size bucket: the master cannot see the submitter's files, and stat-ing them would cost every `grun CMD`.
"""

import collections
import math
import os
from array import array

from . import jobs as J
from .explain import refusal
from .jobs import HELD, KEYED, QUEUED, WAITING, argv, asked_to_end, batch_script, commands_of, run_of
from .nodes import shape

MIN_RUNS = 3           # runs of a key before its prediction is used
MAX_KEYS = 10_000      # (user, program) pairs kept (~0.5 KB each)
NEAR, NEAR_RUNS = 0.9, 3  # this many runs in a row within 10 % of a limit: a warning
FAR_FACTOR, FAR_MB = 4, 1024  # -m this many times the largest peak, and this much over it: a warning
# Shorter runs teach no cpus: cpu/wall says 0.7-0.8 for `true` (the program's start, the reaper's latency); from
# 1 s on, a start of up to 0.1 s moves the ratio by at most a tenth, the unit cpus are learned in.
MIN_CPU_WALL = 1.0
# Programs whose argument is their run time (`sleep 5`): the argument is part of their key.
LENGTH_IN_ARGUMENT = frozenset({"sleep"})


def program_of(job: dict) -> str:
    """What a job runs: `align.py` for `python3 -u /x/align.py ARGS`, `python3 -c 'CODE'`, else `sort`; a pipeline's or
    list's commands joined by their operators (`zcat|bwa`: not zcat's, which a big `zcat x | bwa mem` would inherit)."""
    words, shell = argv(job), job.get("shell")
    if not shell and (named := batch_script(words)):
        return os.path.basename(named[0])
    return "".join(_program(command) + operator for command, operator in commands_of(words, shell)[:KEYED])


def _program(command: list[str]) -> str:
    path, inline, name = run_of(command)
    if name in LENGTH_IN_ARGUMENT and command[1:]:
        return f"{name} {command[1][:20]}"
    if inline == ("-m", "grun.remote_worker"):  # a Python call (grun.calls): its function's name and code_key
        return f"{name} call {' '.join(word[:60] for word in command[command.index(inline[1]) + 1:])}"
    return f"{name} {inline[0]} {inline[1][:40]!r}" if inline else os.path.basename(path) if path else name


def p95(values) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered), math.ceil(0.95 * len(ordered))) - 1]


def size(mb: float) -> str:
    return f"{mb / 1024:.1f}G" if mb >= 1024 else f"{mb:.0f}M"


class Runs:
    """One key's last runs (float32 rings: ~0.5 KB a key) and what they predict."""
    __slots__ = ("cpus", "guess", "near", "near_what", "peaks", "walls")

    def __init__(self, peaks=(), walls=(), cpus=(), near=0, near_what=""):
        self.peaks, self.walls, self.cpus = array("f", peaks), array("f", walls), array("f", cpus)
        self.near, self.near_what = near, near_what
        self.predict()

    def predict(self) -> None:
        """(memory MB, cpus in tenths or None, wall s, largest peak MB) from the p95 of the runs kept."""
        cpus = max(0.1, math.ceil(p95(self.cpus) * 10 - 1e-6) / 10) if self.cpus else None
        self.guess = (max(1, math.ceil(p95(self.peaks))), cpus, round(p95(self.walls), 1),
                      max(self.peaks)) if self.walls else None


class Learned:
    def __init__(self):
        self.keys: collections.OrderedDict[tuple[str, str], Runs] = collections.OrderedDict()

    def observe(self, job: dict, keep: int) -> str | None:
        """Add a finished job's run (not one lost, cancelled, killed by a person or a lease, or cut short for its reader
        gone); a warning for the log when the key keeps running within 10 % of a limit."""
        usage = job.get("usage") or {}
        if not usage.get("wall") or job["state"] in ("lost", "cancelled") or J.reader_gone(job) or (
                (asked_to_end(job) or job["state"] == "killed") and not job.get("limit")):
            return None
        key = (job.get("user") or "?", program_of(job))
        self.keys[key] = runs = self.keys.pop(key, None) or Runs()  # (now the newest key)
        if len(self.keys) > MAX_KEYS:
            self.keys.popitem(last=False)
        wall, peak, limits = float(usage["wall"]), usage.get("maxrss_kb", 0) / 1024, job.get("limits") or {}
        learnt = [(runs.peaks, peak), (runs.walls, wall)]
        if wall >= MIN_CPU_WALL:
            learnt.append((runs.cpus, ((usage.get("utime") or 0) + (usage.get("stime") or 0)) / wall))
        if job.get("limit") == "memory":  # killed for memory: its wall and cpu were cut short, and it needed
            peak = max(peak, limits.get("memory_mb") or 0)  # more than its limit: all it tells (and it is near)
            learnt = [(runs.peaks, peak)]
        for ring, value in learnt:
            ring.append(value)
            del ring[:-keep]
        near = [f"{what} limit of {text}" for what, used, limit, text in (
            ("memory", peak, limits.get("memory_mb"), size(limits.get("memory_mb") or 0)),
            ("time", wall, limits.get("time"), f"{limits.get('time') or 0:g} s")) if limit and used >= NEAR * limit]
        runs.near, runs.near_what = (runs.near + 1, near[0]) if near else (0, "")
        runs.predict()
        if runs.near >= NEAR_RUNS:
            return f"{_runs_of(runs.near, key)} used 90 % or more of their {runs.near_what}: they need more"
        return None

    def fill(self, requests: list[dict], settings: dict) -> None:
        """Complete each request with its key's prediction where nobody gave a value (`origin` says so); `warnings`
        of a request far above what the runs used, and of runs that keep ending near their limit."""
        for req in requests if settings["learn"] else ():
            key = (req.get("user") or "?", program_of(req))
            runs = self.keys.get(key)
            if runs is None or len(runs.walls) < MIN_RUNS:
                continue
            (memory, cpus, wall, top), what = runs.guess, f"p95 of {_runs_of(len(runs.walls), key)}"
            origin, warnings = {}, []
            if not req.get("memory_set"):
                req["memory"], origin["memory"] = memory, f"learned: {what}"
                if settings["learn_memory_factor"]:
                    req["memory_limit"] = math.ceil(memory * settings["learn_memory_factor"])
            elif req["memory"] > FAR_FACTOR * top and req["memory"] - top > FAR_MB:
                warnings.append(f"-m {size(req['memory'])}, but {_runs_of(len(runs.walls), key)} peaked at {size(top)}")
            if not req.get("cpus_set") and cpus is not None:
                req["cpus"], origin["cpus"] = cpus, f"learned: {what} (cpu time / wall)"
            if "time" not in req:
                req["expected_time"], origin["time"] = wall, f"learned: {what} (an estimate, not a limit)"
            if runs.near >= NEAR_RUNS:
                warnings.append(f"{_runs_of(runs.near, key)} used 90 % or more of their {runs.near_what}")
            if origin:
                req.setdefault("origin", {}).update(origin)
            if warnings:
                req.setdefault("warnings", []).extend(warnings)

    @staticmethod
    def unlearn(req: dict, settings: dict, why: str) -> bool:
        """Put the defaults back in place of learned values, which no node or limit lets run (`why`), and a warning
        that says so; whether any were. Copies what it changes: `req` may be a copy of a live job."""
        origin = dict(req.get("origin") or {})
        learned = [field for field, text in origin.items() if text.startswith("learned")]
        if not learned:
            return False
        shown = {"memory": lambda: size(req["memory"]), "cpus": lambda: f"{req['cpus']:g} cpus",
                 "time": lambda: f"{req['expected_time']:g} s"}  # (the learned ones only: a job's -t has no estimate)
        what = origin[learned[0]].removeprefix("learned: ").split(" (")[0]
        said = f"its learned request ({', '.join(shown[f]() for f in learned)}: {what}) was dropped for the defaults: {why}"
        req["warnings"] = [*(req.get("warnings") or ()), said]
        for field in learned:  # (memory, cpus, time: what fill() learns)
            del origin[field]
            req.pop({"memory": "memory_limit", "time": "expected_time"}.get(field), None)
            req.update({field: settings[f"default_{field}"]} if field != "time" else {})
        req["origin"] = origin
        if not origin:
            req.pop("origin")
        return True

    @staticmethod
    def kept(job: dict, new: dict) -> dict:
        """An edit of a queued job keeps the learned values it does not ask to change."""
        return {**new, **{f: job[f] for f in ("cpus", "memory") if f in new and not new.get(f"{f}_set")
                          and (job.get("origin") or {}).get(f, "").startswith("learned")}}

    def dump(self) -> list:
        return [[*key, r.peaks.tolist(), r.walls.tolist(), r.cpus.tolist(), r.near, r.near_what]
                for key, r in self.keys.items()]

    def load(self, rows: list) -> None:
        self.keys = collections.OrderedDict(((user, program), Runs(*rest)) for user, program, *rest in rows or ())


def filed(job: dict) -> tuple | None:
    """The key of JobTable.learnt a live job is filed under while it holds learned values (not --force: no node need
    fit it): one refusal a key tells whether its jobs still fit. (Not its `exclude`: a retry adds to it.)"""
    if not job.get("force") and any(text.startswith("learned") for text in (job.get("origin") or {}).values()):
        return job.get("user"), job.get("group"), shape(job)[:-1]
    return None


def unlearned(table, settings: dict, now: float) -> list[dict]:
    """Edits putting the defaults back in place of learned values, as at submit, in the jobs not started that no node or
    limit lets run any more: the nodes or limits changed since (MasterState.on_schedule, then only)."""
    records = []
    for ids in table.learnt.values():
        for job in map(table.jobs.get, ids) if (why := refusal(table.jobs[next(iter(ids))], table)) else ():
            if job["state"] in (QUEUED, HELD, WAITING) and Learned.unlearn(new := dict(job), settings, why):
                changes = {k: new.get(k) for k in ("memory", "cpus", "memory_limit", "expected_time", "origin", "warnings")}
                records.append({"op": "edit", "id": job["id"], "changes": changes, "time": now})
    return records


def _runs_of(n: int, key: tuple[str, str]) -> str:
    return f"the last {n} run{'s' if n != 1 else ''} of {key[1]} by {key[0]}"
