"""Per-user, per-group and cluster-wide limits on what runs at once (config `limits:`, README: GPUs and limits):
running totals per owner, kept as jobs start and end, limits or not (fair share reads the users' cpus), and whether
one more job would pass a limit. Pure code. A named scope's fields (`user.NAME`) replace the general one's (`user`)
for that user. A job counts, from its dispatch to its end, what it holds on its node (no cpus while suspended): a
check costs a few dict lookups, however many jobs run."""

import re
from functools import lru_cache

from ..values import close_to, expect, is_name, number, parse_memory
from .nodes import EPS, consumables

FIELDS = ("jobs", "cpus", "memory")


def owners(job: dict) -> tuple:
    return ("user", job.get("user") or "?"), ("group", job.get("group") or "?"), ("all", "")


def amounts(job: dict) -> dict:
    """What one job counts for (a claim: its request as its node holds it)."""
    return {"jobs": 1, "cpus": job["cpus"], "memory": job["memory"], **consumables(job)}


class Quotas:
    def __init__(self, limits: dict | None = None):
        self.totals: dict[tuple, dict] = {}   # owner -> {field: amount its running jobs hold}
        self.configure(limits)

    def configure(self, limits: dict | None) -> None:
        self.limits = dict(limits or {})
        self.caps = lru_cache(maxsize=100_000)(self._caps)  # owner -> {field: cap}, for each new limits

    def _caps(self, owner: tuple) -> dict:
        kind, name = owner
        return {**self.limits.get(kind, {}), **self.limits.get(f"{kind}.{name}", {})}

    def count(self, job: dict, claim: dict, sign: int = 1, totals: dict | None = None) -> None:
        """Count (sign -1: no longer) what the job holds on its node, or one more copy of it in a pass's `totals`."""
        what = amounts(claim)
        for owner in owners(job):
            if totals is None or self.caps(owner):
                sums = (self.totals if totals is None else totals).setdefault(owner, {})
                for name, n in what.items():
                    sums[name] = sums.get(name, 0) + sign * n

    def held(self, user: str) -> float:
        """The cpus a user's jobs hold now (fair share: grun.core.placement.PendingQueue)."""
        return self.totals.get(("user", user), {}).get("cpus", 0.0)

    def refusal(self, job: dict, extra: dict | None = None, alone: bool = False) -> str | None:
        """Why one more copy of the job would pass limits (`alone`: with nothing else running), each one, or None."""
        if not self.limits:
            return None
        need, out, extra = amounts(job), [], extra or {}
        for owner in owners(job):
            for name, cap in self.caps(owner).items():
                have = 0 if alone else self.totals.get(owner, {}).get(name, 0) + extra.get(owner, {}).get(name, 0)
                if need.get(name) and have + need[name] > cap + EPS:
                    out.append(_text(owner, name, cap, have, need[name]))
        return "; ".join(out) or None

    def unoffered(self, nodes) -> list[str]:
        """A warning for each resource the limits name that none of these nodes offers: it limits nothing."""
        offered = {name for node in nodes for name in node.resources}
        names = sorted({name for fields in self.limits.values() for name in fields} - set(FIELDS) - offered)
        return [f"limits: no node offers {name!r}: it limits nothing{close_to(name, [*offered, *FIELDS], 0.75)}"
                for name in names]


def typos(limits: dict) -> list[str]:
    """A warning for each name in `limits` that reads as a misspelt count of grun's (cpuz; not gpus: nearer grun's gpu):
    it limits a resource of that name, which no node is likely to offer (the config's checks: log, `grun -q conf`)."""
    return [f"{scope}: {name!r} limits a resource of that name, not one of {', '.join(FIELDS)}{hint}"
            for scope, fields in limits.items() for name in fields
            if name not in FIELDS and (hint := close_to(name, (*FIELDS, "gpu"), 0.75)) and "'gpu'" not in hint]


def _text(owner: tuple, name: str, cap: float, have: float, need: float) -> str:
    kind, who = owner
    who, their = {"user": (f"user {who}", "their"), "group": (f"group {who}", "its")}.get(kind, ("the cluster", "its"))
    unit = "MB of memory" if name == "memory" else name
    if need > cap + EPS:
        return f"{who} may run at most {cap:g} {unit} at once and this job alone asks for {need:g}"
    return f"{who} already runs {have:g} of {their} {cap:g} {unit}" + f" and this job needs {need:g}" * (name != "jobs")


def parse_limits(value) -> dict:
    """The config's `limits:`: {scope: {field: amount}}; a ValueError, one line, for anything else."""
    expect(isinstance(value, dict), "a mapping like {user: {cpus: 64, jobs: 500}, group.students: {gpu: 2}}", value)
    out = {}
    for scope, fields in value.items():
        expect(isinstance(scope, str) and re.fullmatch(r"(user|group)(\.[^\s.][^\s]*)?|all", scope),
                "scopes user, user.NAME, group, group.NAME or all", scope)
        expect(isinstance(fields, dict) and fields, f"for {scope} a mapping like {{cpus: 64, jobs: 500}}", fields)
        out[scope] = {}
        for name, amount in fields.items():
            expect(is_name(name), f"in {scope} jobs, cpus, memory or a resource", name)
            if name not in FIELDS and (close := close_to(name, FIELDS, 0.8)):
                raise ValueError(f"{scope}: unknown field {name!r}{close}")
            out[scope][name] = parse_memory(amount) if name == "memory" else number(amount, f"{scope} {name}: a number")
    return out
