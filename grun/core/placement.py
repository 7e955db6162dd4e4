"""Placement policy: which queued job goes to which node. Pure code, no I/O.

A node's free capacity is its total minus what grun jobs have reserved (soft locks: a reservation is
the job's request, not its use) minus the load of processes that are not grun jobs, as its node last
measured it. Requests are cpus, memory, custom consumables (`-p gpu=1` against `resources:`), labels
that must match (`-p os=debian12` against `labels:`, globs allowed) and a host pattern.

Jobs are considered in priority order (higher first, FIFO within a priority). A job that does not fit
anywhere stays queued and smaller jobs behind it may still run. Among the nodes a job fits, the one
left fullest wins (best fit: fewest cpus left, then least memory left), ties broken at random, so big
jobs still find empty machines. A job that has waited longer than `reserve_after` without fitting
claims the node that comes closest to fitting it; from then on other jobs go there only if they take
nothing that job still needs (backfill that cannot delay it).
"""

from __future__ import annotations

import fnmatch
import random
from dataclasses import dataclass, field

# A scheduling pass stops looking after this many jobs that did not fit: with a deep queue and a
# full cluster, a pass must not cost O(queue length).
MAX_MISSES_PER_PASS = 2000
EPS = 1e-9


@dataclass
class NodeView:
    """What the scheduler knows of one node."""
    name: str
    cpus: float
    memory: int
    used_cpus: float = 0.0
    used_memory: int = 0
    up: bool = True
    outside_cpus: float = 0.0   # load from processes that are not grun jobs
    outside_memory: int = 0
    jobs: set = field(default_factory=set)
    resources: dict = field(default_factory=dict)       # consumable name -> total
    used_resources: dict = field(default_factory=dict)  # consumable name -> reserved by jobs
    labels: dict = field(default_factory=dict)          # label name -> value (a string)

    @property
    def free_cpus(self) -> float:
        return self.cpus - self.used_cpus - self.outside_cpus

    @property
    def free_memory(self) -> int:
        return self.memory - self.used_memory - self.outside_memory

    def free(self, resource: str) -> float:
        return self.resources.get(resource, 0) - self.used_resources.get(resource, 0)

    def matches(self, job: dict) -> bool:
        """Whether the job may ever run here: hosts, labels and the consumables it names."""
        return not mismatch(self, job)

    def fits(self, job: dict) -> bool:
        if not self.up or not self.matches(job):
            return False
        if job["cpus"] > self.free_cpus + EPS or job["memory"] > self.free_memory:
            return False
        return all(self.free(name) + EPS >= need for name, need in consumables(job, self).items())

    def could_ever_fit(self, job: dict) -> bool:
        if not self.matches(job) or job["cpus"] > self.cpus + EPS or job["memory"] > self.memory:
            return False
        return all(self.resources.get(name, 0) + EPS >= need for name, need in consumables(job, self).items())

    def take(self, job: dict, sign: int = 1) -> None:
        """Count (or with sign=-1, uncount) a job's request on this node."""
        self.used_cpus += sign * job["cpus"]
        self.used_memory += sign * job["memory"]
        for name, need in consumables(job, self).items():
            self.used_resources[name] = self.used_resources.get(name, 0) + sign * need


def host_matches(name: str, pattern: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p.strip()) for p in pattern.split(",") if p.strip())


def label_matches(have, want) -> bool:
    """A label request matches the node's value exactly, numerically (12 == "12.0"), or as a glob."""
    try:
        return float(have) == float(want)
    except (TypeError, ValueError):
        return fnmatch.fnmatchcase(str(have), str(want))


def consumables(job: dict, node: NodeView | None = None) -> dict[str, float]:
    """The job's numeric requests that are consumables (on this node: names it declares as labels
    are matched, not consumed)."""
    out = {}
    for name, value in (job.get("params") or {}).items():
        if node is not None and name in node.labels:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def mismatch(node: NodeView, job: dict) -> str | None:
    """Why the job can never run on this node whatever else runs there, or None."""
    if job.get("host") and not host_matches(node.name, job["host"]):
        return f"not in hosts {job['host']}"
    for name, want in (job.get("params") or {}).items():
        if name in node.labels:
            if not label_matches(node.labels[name], want):
                return f"{name} is {node.labels[name]}"
        elif name not in node.resources:
            return f"no {name}"
        elif not isinstance(want, (int, float)):
            return f"{name} is a consumable, not a label"
    return None


# ---- best fit -----------------------------------------------------------------------------------

def best_node(job: dict, nodes: list[NodeView], rng: random.Random = random,
              claims: dict | None = None) -> NodeView | None:
    best: list[NodeView] = []
    best_key = None
    for node in nodes:
        if not node.fits(job) or delays_claim(node, job, claims):
            continue
        key = (node.free_cpus - job["cpus"], node.free_memory - job["memory"])
        if best_key is None or key[0] < best_key[0] - EPS or (abs(key[0] - best_key[0]) <= EPS and key[1] < best_key[1]):
            best, best_key = [node], key
        elif abs(key[0] - best_key[0]) <= EPS and key[1] == best_key[1]:
            best.append(node)
    if not best:
        return None
    return best[0] if len(best) == 1 else rng.choice(best)


# ---- reservations -------------------------------------------------------------------------------

def delays_claim(node: NodeView, job: dict, claims: dict | None) -> bool:
    """Whether placing the job on this node takes something a job that claimed the node still needs."""
    if not claims:
        return False
    owner = claims.get(node.name)
    if owner is None or owner["id"] == job["id"]:
        return False
    if job["cpus"] > EPS and node.free_cpus - job["cpus"] < owner["cpus"] - EPS:
        return True
    if job["memory"] > 0 and node.free_memory - job["memory"] < owner["memory"]:
        return True
    owner_needs = consumables(owner, node)
    for name, need in consumables(job, node).items():
        if need > EPS and name in owner_needs and node.free(name) - need < owner_needs[name] - EPS:
            return True
    return False


def shortfall(node: NodeView, job: dict) -> float:
    """How far the node is from fitting the job now, each resource as a share of the node's total."""
    short = max(0.0, job["cpus"] - node.free_cpus) / max(node.cpus, EPS)
    short += max(0, job["memory"] - node.free_memory) / max(node.memory, 1)
    for name, need in consumables(job, node).items():
        short += max(0.0, need - node.free(name)) / max(node.resources.get(name, 0), EPS)
    return short


def node_to_reserve(job: dict, nodes: list[NodeView], claims: dict, rng: random.Random = random) -> NodeView | None:
    """The node that comes closest to fitting a starving job, among those no other job has claimed."""
    candidates = [n for n in nodes if n.up and n.could_ever_fit(job)
                  and (n.name not in claims or claims[n.name]["id"] == job["id"])]
    if not candidates:
        return None
    current = job.get("reserved_node")
    for node in candidates:
        if node.name == current:
            return node  # a reservation sticks while it can still be honoured
    least = min(shortfall(n, job) for n in candidates)
    closest = [n for n in candidates if shortfall(n, job) <= least + EPS]
    return closest[0] if len(closest) == 1 else rng.choice(closest)


def starving(job: dict, now: float | None, reserve_after: float | None) -> bool:
    if now is None or reserve_after is None:
        return False
    return now - job.get("queued_time", job.get("submit_time", now)) > reserve_after


# ---- a pass -------------------------------------------------------------------------------------

@dataclass
class Plan:
    placed: list = field(default_factory=list)     # (job, node)
    reserve: list = field(default_factory=list)    # (job, node): new or moved reservations


def _shape(job: dict) -> tuple:
    params = job.get("params") or {}
    return job["cpus"], job["memory"], job.get("host"), tuple(sorted(params.items()))


def place(ordered_jobs, nodes: list[NodeView], rng: random.Random = random, *, now: float | None = None,
          reserve_after: float | None = None, claims: dict | None = None) -> Plan:
    """Assign as many jobs as fit, and reserve nodes for starving jobs. Updates the NodeViews' usage
    for the jobs it places; `claims` (node name -> the job that reserved it) is updated in place."""
    plan = Plan()
    claims = {} if claims is None else claims
    live = [n for n in nodes if n.up]
    if not live:
        return plan
    misses = 0
    full = not any(n.free_cpus > EPS for n in live)
    failed_shapes: set = set()       # shapes that fit nowhere in this pass
    unreservable: set = set()        # shapes no unclaimed node could ever take
    for job in ordered_jobs:
        shape = _shape(job)
        if not full and (shape not in failed_shapes or job.get("reserved_node")):
            node = best_node(job, live, rng, claims)
            if node is not None:
                node.take(job)
                node.jobs.add(job["id"])
                plan.placed.append((job, node))
                _drop_claim(claims, job)
                full = not any(n.free_cpus > EPS for n in live)
                continue
            failed_shapes.add(shape)
        misses += 1
        if shape not in unreservable and starving(job, now, reserve_after) and (
                len(claims) < len(live) or job.get("reserved_node")):
            if not _reserve(job, live, claims, plan, rng):
                unreservable.add(shape)
        if misses >= MAX_MISSES_PER_PASS:
            break
    return plan


def _drop_claim(claims: dict, job: dict) -> None:
    for name, owner in list(claims.items()):
        if owner["id"] == job["id"]:
            del claims[name]


def _reserve(job: dict, nodes: list[NodeView], claims: dict, plan: Plan, rng) -> bool:
    node = node_to_reserve(job, nodes, claims, rng)
    if node is None:
        return False
    if job.get("reserved_node") != node.name:
        _drop_claim(claims, job)
        plan.reserve.append((job, node))
    claims[node.name] = job
    return True


# ---- refusing the impossible ---------------------------------------------------------------------

def _fmt(number: float) -> str:
    return f"{number:g}"


def impossible(job: dict, nodes: list[NodeView]) -> str | None:
    """Why no known node could ever run this job ("no node has 64 cpus; largest is 48"), or None.
    With no nodes known at all, nothing can be judged, so nothing is refused."""
    if not nodes:
        return None
    pool = [n for n in nodes if not job.get("host") or host_matches(n.name, job["host"])]
    if not pool:
        return f"no node matches hosts {job['host']!r}"
    for name, want in (job.get("params") or {}).items():
        labelled = [n for n in pool if name in n.labels]
        having = [n for n in pool if name in n.resources]
        if labelled:
            ok = [n for n in labelled if label_matches(n.labels[name], want)]
            if not ok and not having:
                values = sorted({str(n.labels[name]) for n in labelled})
                return f"no node has {name}={want}; {name} is {', '.join(values[:5])}"
            pool = ok + [n for n in having if n not in ok and isinstance(want, (int, float))]
        elif having:
            if not isinstance(want, (int, float)):
                return f"{name} is a consumable: ask for a number of {name}, not {want!r}"
            largest = max(n.resources[name] for n in having)
            if largest + EPS < want:
                return f"no node has {_fmt(want)} {name}; largest is {_fmt(largest)}"
            pool = [n for n in having if n.resources[name] + EPS >= want]
        else:
            return f"no node has {name}"
        if not pool:
            return f"no node has {name}={want}"
    largest = max(n.cpus for n in pool)
    if job["cpus"] > largest + EPS:
        return f"no node has {_fmt(job['cpus'])} cpus; largest is {_fmt(largest)}"
    largest = max(n.memory for n in pool)
    if job["memory"] > largest:
        return f"no node has {job['memory']} MB of memory; largest is {largest} MB"
    if not any(n.could_ever_fit(job) for n in pool):
        return f"no node has {_fmt(job['cpus'])} cpus and {job['memory']} MB of memory together"
    return None
