"""Placement policy: which queued job goes to which node. Pure code, no I/O.

Jobs are considered in priority order (higher first, FIFO within a priority). A job that does not fit
anywhere stays queued and smaller jobs behind it may still run. Among the nodes a job fits, the one
left fullest wins (best fit), ties broken at random, so big jobs still find empty machines.
"""

from __future__ import annotations

import fnmatch
import random
from dataclasses import dataclass, field

# A scheduling pass stops looking after this many jobs that did not fit: with a deep queue and a
# full cluster, a pass must not cost O(queue length).
MAX_MISSES_PER_PASS = 2000


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

    @property
    def free_cpus(self) -> float:
        return self.cpus - self.used_cpus - self.outside_cpus

    @property
    def free_memory(self) -> int:
        return self.memory - self.used_memory - self.outside_memory

    def fits(self, job: dict) -> bool:
        if not self.up:
            return False
        if job.get("host") and not host_matches(self.name, job["host"]):
            return False
        return job["cpus"] <= self.free_cpus + 1e-9 and job["memory"] <= self.free_memory

    def could_ever_fit(self, job: dict) -> bool:
        return job["cpus"] <= self.cpus + 1e-9 and job["memory"] <= self.memory


def host_matches(name: str, pattern: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p.strip()) for p in pattern.split(",") if p.strip())


def best_node(job: dict, nodes: list[NodeView], rng: random.Random = random) -> NodeView | None:
    best: list[NodeView] = []
    best_left = None
    for node in nodes:
        if not node.fits(job):
            continue
        left = node.free_cpus - job["cpus"]
        if best_left is None or left < best_left - 1e-9:
            best, best_left = [node], left
        elif abs(left - best_left) <= 1e-9:
            best.append(node)
    if not best:
        return None
    return best[0] if len(best) == 1 else rng.choice(best)


def place(ordered_jobs, nodes: list[NodeView], rng: random.Random = random) -> list[tuple[dict, NodeView]]:
    """Assign as many jobs as fit; updates the NodeViews' usage for the jobs it places."""
    placed = []
    live = [n for n in nodes if n.up]
    if not live:
        return placed
    misses = 0
    failed_shapes: set = set()
    for job in ordered_jobs:
        shape = (job["cpus"], job["memory"], job.get("host"))
        if shape in failed_shapes:
            misses += 1
        else:
            node = best_node(job, live, rng)
            if node is not None:
                node.used_cpus += job["cpus"]
                node.used_memory += job["memory"]
                node.jobs.add(job["id"])
                placed.append((job, node))
                if not any(n.free_cpus > 1e-9 for n in live):
                    break
                continue
            failed_shapes.add(shape)
            misses += 1
        if misses >= MAX_MISSES_PER_PASS:
            break
    return placed
