"""What the master knows of its nodes: a `NodeView` each, whether a job's request matches and fits it, and the
`NodeIndex` that files the up nodes by free capacity. Pure code, no I/O.

A node's free capacity is its total minus what grun jobs have reserved (their requests, not their use) minus the load
of other processes, as its node last measured it. Requests are cpus, memory, consumables (`-p gpu=1` against
`resources:`), labels (`-p os=debian12` against `labels:`, globs allowed) and hosts. A consumable offered as a list
(`gpu: ["0", "1"]`) is indexed: a job placed there is also given that many devices (`pick`) no other job there holds."""

import fnmatch
import math
import random
from bisect import bisect_left, insort
from dataclasses import dataclass, field

from ..mounts import unmounted
from .rules import meets

EPS = 1e-9
# What changes NodeIndex.remembered()'s answers (a node's description), and what else re-files a node (usage, up/down).
_DESCRIBED = frozenset({"cpus", "memory", "resources", "labels", "devices", "mounts", "stage"})
_WATCHED = _DESCRIBED | {"used_cpus", "used_memory", "up", "outside_cpus", "outside_memory"}

# The most heartbeats a second the master asks of all its nodes together: each costs it ~130-180 us (Pyro5), so
# 10,000 nodes beating every 5 s took 25-37 % of a core; never so seldom that three do not fit in node_timeout.
HEARTBEATS_PER_SEC = 500
# Each connection to the master holds one of its daemon's threads (Pyro5's pool: 1,024), so past this many nodes a
# node closes its connection after IDLE_LINGER_SECS with nothing to say, and opens one for its next call.
HOLD_CONNECTIONS_MAX, IDLE_LINGER_SECS = 500, 0.5


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
    devices: dict = field(default_factory=dict)         # indexed consumable name -> its device ids
    held: dict = field(default_factory=dict)            # indexed consumable name -> the ids jobs hold
    uri: str | None = None
    incarnation: str = ""
    seen: float = 0.0
    lost: bool = False
    stopped: bool = False
    heartbeat: float = 0.0  # its own interval: it is down after node_timeout or 3 of them unheard (else it flaps)
    grun_cpus: float = 0.0
    spool_free: float | None = None  # MB, and (refusing, text) when its spool is getting full (explain.disk_low)
    disk: tuple | None = None
    mounts: list | None = None  # its network filesystems (grun.mounts.network), None: not known
    stage: str = "auto"  # its config key stage: (grun.stage), which lets a job with files run where its cwd is not

    def __setattr__(self, name: str, value) -> None:
        object.__setattr__(self, name, value)
        if name in _WATCHED and (index := self.__dict__.get("_index")) is not None:
            index._touch(self, name)

    @property
    def free_cpus(self) -> float:
        return self.cpus - self.used_cpus - self.outside_cpus

    @property
    def free_memory(self) -> int:
        return self.memory - self.used_memory - self.outside_memory

    def free(self, resource: str) -> float:
        return self.resources.get(resource, 0) - self.used_resources.get(resource, 0)

    def fits(self, job: dict) -> bool:
        if not self.up or self.disk and self.disk[0] or job["cpus"] > self.free_cpus + EPS or \
                job["memory"] > self.free_memory or mismatch(self, job):  # (disk[0]: its spool is nearly full)
            return False
        return all(self.free(name) + EPS >= need for name, need in consumables(job, self).items())

    def could_ever_fit(self, job: dict) -> bool:
        if job["cpus"] > self.cpus + EPS or job["memory"] > self.memory or mismatch(self, job):
            return False
        return all(self.resources.get(name, 0) + EPS >= need for name, need in consumables(job, self).items())

    def take(self, job: dict, sign: int = 1, devices: dict | None = None) -> None:
        """Count (sign=-1: uncount) a job's request on this node, and its devices (`devices`, else the job's own)."""
        self.used_cpus += sign * job["cpus"]
        self.used_memory += sign * job["memory"]
        for name, need in consumables(job, self).items():  # (used_cpus' assignment above re-filed the node)
            self.used_resources[name] = self.used_resources.get(name, 0) + sign * need
        for name, ids in (job.get("devices") or {} if devices is None else devices).items():
            held = self.held.setdefault(name, set())
            held.update(ids) if sign > 0 else held.difference_update(ids)

    def public(self, now: float) -> dict:
        """As `grun -q status` shows it. `state`: up; stopped (its daemon said so, its jobs not lost yet); unknown (not
        heard from since the master restarted); else down. `resources`: [free, total]; `devices`: [ids, held]."""
        state = ("up" if self.up else "down" if self.lost else "stopped" if self.stopped else
                 "unknown" if self.uri is None else "down")
        return {"name": self.name, "up": self.up, "state": state, "cpus": self.cpus, "memory": self.memory,
                "free_cpus": max(0.0, round(self.free_cpus, 6)), "free_memory": max(0, self.free_memory),
                "running": len(self.jobs), "uri": self.uri, "outside_cpus": self.outside_cpus,
                "outside_memory": self.outside_memory, "grun_cpus": self.grun_cpus, "last_seen": now - self.seen,
                "devices": {k: [ids, sorted(self.held.get(k, ()))] for k, ids in self.devices.items()},
                "resources": {k: [self.free(k), total] for k, total in sorted(self.resources.items())
                              if k not in self.devices},
                "labels": dict(self.labels), "spool_free": self.spool_free}

    def timeout(self, node_timeout: float) -> float:
        return max(node_timeout, 3 * self.heartbeat)

    def rival(self, uri: str, incarnation: str, now: float, node_timeout: float) -> str | None:
        """Why a daemon registering at `uri` may not take this node's name from its daemon, alive elsewhere (heard within
        its timeout; QA: a copied config ran the node's jobs twice); None: it may (its restart has its address)."""
        if self.up and self.uri not in (None, uri) and incarnation != self.incarnation and \
                now - self.seen <= self.timeout(node_timeout):
            return (f"node {self.name} at {uri} refused: its name is served by a live daemon at {self.uri} (a copied "
                    f"config? each node daemon needs its own name, hostname:)")

    def leave(self, incarnation: str) -> bool:
        """Its daemon stops cleanly: down at once, not lost (its jobs run on; lost if silent past node_timeout).
        False if it was down already, or this is an older run of its daemon (`grun -d -R`)."""
        if not self.up or incarnation != self.incarnation:
            return False
        self.up, self.stopped = False, True
        return True

    def pick(self, job: dict) -> dict[str, list[str]]:
        """The devices a job placed here gets: of each indexed consumable it asks for, the first free ones."""
        return {name: [d for d in self.devices[name] if d not in self.held.get(name, ())][:round(need)]
                for name, need in consumables(job, self).items() if name in self.devices and need}


class Hearing:
    """Whether the master hears its nodes at all. One that has heard none of several nodes for half node_timeout (or
    1.5 beats of the slowest: each beats 3 times in its timeout, so the first one cut off could not time out yet) is cut
    off itself (its network, a wrong `bind:`), not facing lost nodes (else it re-runs all their jobs on the first back):
    a node's silence counts only while another is heard, and from when the master hears one again. With one node it
    cannot tell: that one is lost (its jobs can only go back to it). Its own pause is no node's silence (`stood`)."""

    def __init__(self, now: float = 0.0):
        self.heard = self.since = now  # when a node was last heard; when the master began hearing them (again)
        self.said = False  # that it hears none: then the next node heard starts every silence again
        self.limit = math.inf  # how long hearing none makes it cut off (deaf's last): a pause as long counts too
        self.gone: set = set()  # hearing none, the nodes whose host refused a connection to their daemon (the master's)

    def hear(self, now: float, log) -> None:
        """A node talks: `log(level, text)` hears when that ends a spell of hearing none."""
        if self.said or now - self.heard > self.limit:  # (a master paused, SIGSTOP, host asleep: no sweep saw it)
            log("info", f"a node heard after {now - self.heard:.0f} s with none: the silence of the others counts from now")
            self.since, self.said, self.gone = now, False, set()
        self.heard = now

    def deaf(self, nodes: dict, now: float, node_timeout: float, log, stood: float = 0.0) -> bool:
        """Whether no node's silence counts now (it hears none, and knows several; but those `gone`'s do); said once a
        spell. `stood`: how long since the master last looked (each second); longer, it stood still (SIGSTOP, asleep)."""
        if stood > max(node_timeout / 2, 2.0):  # (a stopped one-node master declared its own node lost; at least 2 s:
            # it looks each second, so a node_timeout of 1 s would read every look as a stall)
            log("warning", f"this master stood still for {stood:.0f} s: its nodes' silence counts from now")
            self.since = now
        beats = [n.heartbeat for n in nodes.values() if not n.lost]
        self.limit = max(node_timeout / 2, 1.5 * max(beats, default=0)) if len(beats) > 1 else math.inf
        deaf = now - self.heard > self.limit
        if deaf and not self.said:
            self.said = True
            log("warning", f"no node heard for {now - self.heard:.0f} s: this master seems cut off from them (its "
                           f"network? its bind:?); none is declared lost until one is heard")
        return deaf

    def silent(self, node: NodeView, now: float) -> float:
        """How long its silence counts: not from before the master heard its nodes again."""
        return now - max(node.seen, self.since)


def pace(nodes: int, settings: dict) -> dict:
    """The heartbeat the master asks (0: the node's own; it beats at the longer), whether to keep connections, admins."""
    return {"heartbeat": round(min(nodes / HEARTBEATS_PER_SEC, settings["node_timeout"] / 3), 3),
            "linger": IDLE_LINGER_SECS if nodes > HOLD_CONNECTIONS_MAX else None, "admins": sorted(settings["admins"])}


def host_matches(name: str, pattern: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p.strip()) for p in pattern.split(",") if p.strip())


def label_matches(have, want) -> bool:
    """A label request matches the node's value exactly, numerically (12 == "12.0"), or as a glob."""
    try:
        return float(have) == float(want)
    except (TypeError, ValueError):
        return fnmatch.fnmatchcase(str(have), str(want))


def consumables(job: dict, node: NodeView | None = None) -> dict[str, float]:
    """The job's numeric requests that are consumables (on this node: not the names it declares as labels)."""
    return {name: float(value) for name, value in (job.get("params") or {}).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
            and (node is None or name not in node.labels)}


def mismatch(node: NodeView, job: dict) -> str | None:
    """Why the job can never run on this node whatever else runs there, or None."""
    if job.get("host") and not host_matches(node.name, job["host"]):
        return f"not in hosts {job['host']}"
    if job.get("nodes") and not meets(job["nodes"], node):  # a policy rule's nodes: condition
        return f"does not meet {job['nodes']}"
    if "exclude" in job and node.name in job["exclude"]:  # its cwd was found missing there (MasterState.on_finished)
        return f"cwd {job['cwd']} does not exist there"
    if "cwd_fs" in job and (fs := unmounted(job, node)):
        return f"does not mount {fs}"
    for name, want in (job.get("params") or {}).items():
        if name in node.labels:
            if not label_matches(node.labels[name], want):
                return f"{name} is {node.labels[name]}"
        elif name not in node.resources:
            return f"no {name}"
        elif not isinstance(want, (int, float)):
            return f"{name} is a consumable, not a label"
        elif name in node.devices and want != round(want):
            return f"{name} is indexed: ask for a whole number"
    return None


def delays_claim(node: NodeView, job: dict, claims: dict | None) -> bool:
    """Whether the job takes on this node something the job that reserved it needs, maybe past when that one would
    start (EASY backfill: a job whose -t or learned estimate ends within the owner's `window` may run)."""
    owner = claims.get(node.name) if claims else None
    if owner is None or owner["id"] == job["id"] or (
            (run := job.get("time") or job.get("expected_time")) and run <= owner.get("window", 0.0)):
        return False
    if job["cpus"] > EPS and node.free_cpus - job["cpus"] < owner["cpus"] - EPS or \
            job["memory"] > 0 and node.free_memory - job["memory"] < owner["memory"]:
        return True
    owner_needs = consumables(owner, node)
    return any(need > EPS and name in owner_needs and node.free(name) - need < owner_needs[name] - EPS
               for name, need in consumables(job, node).items())


def shape(job: dict) -> tuple:
    """What placement sees of a job: jobs of one shape fit the same nodes."""
    params = tuple(sorted((job.get("params") or {}).items()))
    fs, out = job.get("cwd_fs"), job.get("exclude")  # (nodes: a rule's condition; exclude: nodes without its cwd)
    return job["cpus"], job["memory"], job.get("host"), params, job.get("nodes"), \
        fs and (fs["source"], fs["root"], fs["sub"]), out and tuple(out)


class NodeIndex(dict):
    """Nodes by name, the up ones also filed in buckets of equal free capacity, their keys sorted, so that best fit
    costs O(log buckets) per job, not O(nodes); nodes that changed (NodeView.__setattr__) are re-filed first."""

    def __init__(self, nodes=()):
        super().__init__()
        self._keys: list[tuple] = []                # sorted bucket keys
        self._buckets: dict[tuple, list] = {}       # key -> the NodeViews filed there
        self._where: dict[str, tuple] = {}          # name -> (key, position in its bucket)
        self._dirty: dict[str, NodeView] = {}       # nodes to re-file
        self._remembered: dict = {}                 # see remembered()
        for node in nodes:
            self[node.name] = node

    def __setitem__(self, name: str, node: NodeView) -> None:
        if name in self:  # (another view of the node replaces it)
            del self[name]
        super().__setitem__(name, node)
        object.__setattr__(node, "_index", self)
        self._dirty[name] = node
        self._remembered.clear()

    def __delitem__(self, name: str) -> None:  # (a node left in _dirty is skipped: refresh() checks)
        node = self[name]
        self._unfile(node)
        object.__setattr__(node, "_index", None)
        super().__delitem__(name)
        self._remembered.clear()

    def remembered(self, key, compute):
        """compute(), remembered under key until a node is added, removed or described anew (explain.refusal)."""
        if key not in self._remembered:
            if len(self._remembered) > 1000:
                self._remembered.clear()
            self._remembered[key] = compute()
        return self._remembered[key]

    def _touch(self, node: NodeView, attr: str) -> None:  # (only a node in the index points to it)
        self._dirty[node.name] = node
        if attr in _DESCRIBED:
            self._remembered.clear()

    def _unfile(self, node: NodeView) -> None:
        if (where := self._where.pop(node.name, None)) is None:
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
        dirty, self._dirty = self._dirty, {}
        for name, node in dirty.items():
            if self.get(name) is not node:
                continue
            # rounded: 0.1 + 0.2 must not split equal nodes; consumables too, to pass over nodes whose GPUs are taken
            key = (round(node.free_cpus, 9), node.free_memory,
                   tuple((name, round(node.free(name), 9)) for name in sorted(node.resources))) if node.up else None
            if (where := self._where.get(name)) is not None and where[0] == key:
                continue
            self._unfile(node)
            if key is not None:
                if key not in self._buckets:
                    self._buckets[key] = []
                    insort(self._keys, key)
                self._where[name] = (key, len(self._buckets[key]))
                self._buckets[key].append(node)

    def up_count(self) -> int:
        self.refresh()
        return len(self._where)

    def any_free(self) -> bool:
        """Whether some up node has cpus free (else only jobs that ask for no cpus can be placed)."""
        self.refresh()
        return bool(self._keys) and self._keys[-1][0] > EPS

    def best(self, job: dict, rng: random.Random = random, claims: dict | None = None) -> NodeView | None:
        """The best-fitting up node the job may use now (fewest cpus left, then least memory), or None."""
        self.refresh()
        keys, memory, needs = self._keys, job["memory"], consumables(job)
        i, n = bisect_left(keys, (job["cpus"] - EPS,)), len(keys)
        while i < n:
            key = keys[i]
            if key[1] < memory:  # not enough memory at this cpu level: skip to where there is
                i = bisect_left(keys, (key[0], memory), i + 1)
                continue
            # (too few of a consumable; a name the node has as a label is matched, not consumed: not in key[2])
            short = needs and key[2] and any(needs.get(name, 0) > free + EPS for name, free in key[2])
            if not short and (node := self._pick(self._buckets[key], job, rng, claims)) is not None:
                return node
            i += 1
        return None

    @staticmethod
    def _pick(bucket: list, job: dict, rng, claims) -> NodeView | None:
        """A node of the bucket (all equally good) the job may use, uniformly at random."""
        ok = lambda node: node.fits(job) and not delays_claim(node, job, claims)
        if len(bucket) > 1:
            # rejection sampling, uniform over usable nodes: a random draw nearly always is one (plain jobs, few claims)
            for _ in range(4):
                node = bucket[rng.randrange(len(bucket))]
                if ok(node):
                    return node
        usable = [node for node in bucket if ok(node)]
        return rng.choice(usable) if usable else None
