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

With thousands of nodes, best fit must not look at every node for every job: the job table keeps its
nodes in a `NodeIndex`, which files the up nodes by free capacity (free cpus, then free memory), so a
search starts at the nodes that come closest and a plain job looks at one bucket of equal nodes.
The index learns of every change of a node's capacity or usage through `NodeView.__setattr__`.
"""

from __future__ import annotations

import fnmatch
import random
from bisect import bisect_left, insort
from dataclasses import dataclass, field

# A scheduling pass stops looking after this many jobs that did not fit: with a deep queue and a
# full cluster, a pass must not cost O(queue length).
MAX_MISSES_PER_PASS = 2000
# ... and stops after placing this many: a pass runs under the master's lock, and 40,000 free cpus
# (10,000 nodes) filled in one pass held it for seconds, so heartbeats waited past their timeout.
# The master runs the next pass at once when a pass was cut short.
MAX_PLACED_PER_PASS = 2000
EPS = 1e-9
# What moves a node to another place in its index (usage, capacity, up/down), and what changes the
# answer of impossible() (a node's description).
_FILED = frozenset({"cpus", "memory", "used_cpus", "used_memory", "up", "outside_cpus", "outside_memory"})
_DESCRIBED = frozenset({"cpus", "memory", "resources", "labels"})


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
    # what the master knows of the node itself: where to call it, which run of its daemon, when it
    # was last heard from, whether its jobs were declared lost since, and its grun jobs' cpu use
    uri: str | None = None
    incarnation: str = ""
    seen: float = 0.0
    lost: bool = False
    grun_cpus: float = 0.0

    def __setattr__(self, name: str, value) -> None:
        object.__setattr__(self, name, value)
        if name in _FILED or name in _DESCRIBED:
            index = self.__dict__.get("_index")
            if index is not None:
                index._touch(self, name)

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


class NodeIndex(dict):
    """Nodes by name (a dict), with the up ones also filed by free capacity for best fit.

    Buckets hold the up nodes with equal (free cpus, free memory); their keys are kept sorted. A
    search bisects to the first bucket with enough cpus, skips within a cpu level to enough memory,
    and takes the first bucket with a node the job may use (best fit: fewest cpus left, then least
    memory); among the equal nodes of that bucket it picks one at random. A NodeView put in the index reports changes to
    it (NodeView.__setattr__); they are re-filed before the next search, so a pass that places many
    jobs costs O(log buckets) per job, not O(nodes). Add and remove nodes by item assignment/del."""

    def __init__(self, nodes=()):
        super().__init__()
        self._keys: list[tuple] = []                # sorted bucket keys
        self._buckets: dict[tuple, list] = {}       # key -> the NodeViews filed there
        self._where: dict[str, tuple] = {}          # name -> (key, position in its bucket)
        self._dirty: dict[str, NodeView] = {}       # nodes to re-file
        self._impossible: dict[tuple, str | None] = {}  # job shape -> impossible(), until a description changes
        for node in nodes:
            self[node.name] = node

    # ---- the dict --------------------------------------------------------------------------------

    def __setitem__(self, name: str, node: NodeView) -> None:
        old = self.get(name)
        if old is not None and old is not node:
            self._unfile(old)
            object.__setattr__(old, "_index", None)
        super().__setitem__(name, node)
        object.__setattr__(node, "_index", self)
        self._dirty[name] = node
        self._impossible.clear()

    def __delitem__(self, name: str) -> None:
        node = self[name]
        self._unfile(node)
        self._dirty.pop(name, None)
        object.__setattr__(node, "_index", None)
        super().__delitem__(name)
        self._impossible.clear()

    def _bypass(self, *args, **kwargs):
        raise TypeError("a NodeIndex changes only by item assignment and del, which keep it filed")

    pop = popitem = setdefault = update = clear = _bypass

    # ---- filing --------------------------------------------------------------------------------

    def _touch(self, node: NodeView, attr: str) -> None:
        if self.get(node.name) is node:
            self._dirty[node.name] = node
            if attr in _DESCRIBED:
                self._impossible.clear()

    @staticmethod
    def _key(node: NodeView) -> tuple | None:
        # rounded: float sums of fractional cpus (0.1 + 0.2) must not split equal nodes
        return (round(node.free_cpus, 9), node.free_memory) if node.up else None

    def _file(self, node: NodeView, key: tuple) -> None:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = []
            insort(self._keys, key)
        self._where[node.name] = (key, len(bucket))
        bucket.append(node)

    def _unfile(self, node: NodeView) -> None:
        where = self._where.pop(node.name, None)
        if where is None:
            return
        key, i = where
        bucket = self._buckets[key]
        last = bucket.pop()
        if i < len(bucket):
            bucket[i] = last
            self._where[last.name] = (key, i)
        if not bucket:
            del self._buckets[key]
            del self._keys[bisect_left(self._keys, key)]

    def refresh(self) -> None:
        """Re-file the nodes that changed since the last search."""
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, {}
        for name, node in dirty.items():
            if self.get(name) is not node:
                continue
            key = self._key(node)
            where = self._where.get(name)
            if where is not None and where[0] == key:
                continue
            self._unfile(node)
            if key is not None:
                self._file(node, key)

    # ---- questions -----------------------------------------------------------------------------

    def up_count(self) -> int:
        self.refresh()
        return len(self._where)

    def any_free(self) -> bool:
        """Whether some up node has cpus free (else only jobs that ask for no cpus can be placed)."""
        self.refresh()
        return bool(self._keys) and self._keys[-1][0] > EPS

    def best(self, job: dict, rng: random.Random = random, claims: dict | None = None) -> NodeView | None:
        """The best-fitting up node the job may use now, or None, without looking at every node."""
        self.refresh()
        keys, memory = self._keys, job["memory"]
        i, n = bisect_left(keys, (job["cpus"] - EPS,)), len(keys)
        while i < n:
            key = keys[i]
            if key[1] < memory:  # not enough memory at this cpu level: skip to where there is
                i = bisect_left(keys, (key[0], memory), i + 1)
                continue
            node = self._pick(self._buckets[key], job, rng, claims)
            if node is not None:
                return node
            i += 1
        return None

    @staticmethod
    def _pick(bucket: list, job: dict, rng, claims) -> NodeView | None:
        """A node of the bucket (all equally good) the job may use, uniformly at random."""
        def ok(node):
            return node.fits(job) and not delays_claim(node, job, claims)
        if len(bucket) > 1:
            # rejection sampling: a random draw is almost always usable (plain jobs, few claims),
            # and the draws stay uniform over the usable nodes
            for _ in range(4):
                node = bucket[rng.randrange(len(bucket))]
                if ok(node):
                    return node
        usable = [node for node in bucket if ok(node)]
        if not usable:
            return None
        return usable[0] if len(usable) == 1 else rng.choice(usable)

    def impossible(self, job: dict) -> str | None:
        """impossible(job, nodes), remembered per job shape until a node's description changes."""
        shape = _shape(job)
        if shape not in self._impossible:
            if len(self._impossible) > 1000:
                self._impossible.clear()
            self._impossible[shape] = impossible(job, list(self.values()))
        return self._impossible[shape]


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


def place(ordered_jobs, index: NodeIndex, rng: random.Random = random, *, now: float | None = None,
          reserve_after: float | None = None, claims: dict | None = None) -> Plan:
    """Assign as many jobs as fit, and reserve nodes for starving jobs. Updates the NodeViews' usage
    for the jobs it places; `claims` (node name -> the job that reserved it) is updated in place.
    A job costs a search of the index, not a look at every node."""
    plan = Plan()
    claims = {} if claims is None else claims
    n_live, live = index.up_count(), None
    if not n_live:
        return plan
    misses = 0
    full = not index.any_free()
    failed_shapes: set = set()       # shapes that fit nowhere in this pass
    unreservable: set = set()        # shapes no unclaimed node could ever take
    for job in ordered_jobs:
        shape = _shape(job)
        if not full and (shape not in failed_shapes or job.get("reserved_node")):
            node = index.best(job, rng, claims)
            if node is not None:
                node.take(job)
                node.jobs.add(job["id"])
                plan.placed.append((job, node))
                _drop_claim(claims, job)
                if len(plan.placed) >= MAX_PLACED_PER_PASS:
                    break
                full = not index.any_free()
                continue
            failed_shapes.add(shape)
        misses += 1
        if shape not in unreservable and starving(job, now, reserve_after) and (
                len(claims) < n_live or job.get("reserved_node")):
            if live is None:
                live = [n for n in index.values() if n.up]  # every node: rare (starving jobs only)
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


def impossible(job: dict, nodes: list[NodeView]) -> str | None:
    """Why no known node could ever run this job ("no node has 64 cpus; largest is 48"), or None.
    With no nodes known at all, nothing can be judged, so nothing is refused (NodeIndex.impossible
    remembers the answer per job shape)."""
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
                return f"no node has {want:g} {name}; largest is {largest:g}"
            pool = [n for n in having if n.resources[name] + EPS >= want]
        else:
            return f"no node has {name}"
        if not pool:
            return f"no node has {name}={want}"
    largest = max(n.cpus for n in pool)
    if job["cpus"] > largest + EPS:
        return f"no node has {job['cpus']:g} cpus; largest is {largest:g}"
    largest = max(n.memory for n in pool)
    if job["memory"] > largest:
        return f"no node has {job['memory']} MB of memory; largest is {largest} MB"
    if not any(n.could_ever_fit(job) for n in pool):
        return f"no node has {job['cpus']:g} cpus and {job['memory']} MB of memory together"
    return None
