"""The master's read-only answers: a job's record (live, recent or from history), the live jobs, the nodes, history,
why a job waits, a name's job id, the cluster's status, and the waits for jobs to start or end. Each shows a user
only what private_queries lets them see, and none changes a job. A mixin of grun.actors.master.Master, whose lock,
core, store and watchers (the waits' events, which the master's records wake) it reads.
"""

import fnmatch
import heapq
import re
import threading
import time

import Pyro5.api

from .. import auth
from ..client import JOBS_PAGE
from ..core import jobs as J
from ..core.arrays import has_task
from ..core.deps import named
from ..core.explain import disk_low, explain, placement, progress, provenance
from ..spool import spool_space
from ..values import task_ref

MAX_WAIT_SECS = 60.0


@Pyro5.api.expose
class Queries:
    def job(self, job_id: int | str) -> dict:
        """A job's record: live, or ended (recent, else from history). A task `12.7` (task 7 of array 12): its own
        record once it has begun (live, or ended), its array's while it has not (the array's has no `task`)."""
        job_id, task = task_ref(job_id) or (J.parse_job_id(job_id), None)
        with self.lock:
            live = self.core.table.tasks.get(job_id, {}).get(task)  # (a task begun and not ended)
            job = self.core.table.jobs.get(live or job_id) or self.core.recent.get(job_id)
            view = None if job is None else self.core.view(job)
        if view is None and (found := self.store.find_history(job_id)) is not None:
            view = self._ended(found)[0]
        if view is None or self._only() not in (None, view.get("uid")):
            raise LookupError(f"no such job {job_id}")
        if task is None or (view.get("array"), view.get("task")) == (job_id, task) or has_task(view, task):
            return view  # (a task not begun yet: its array's)
        if "ranges" not in view or not any(task in range(*r) for r in view["ranges"]):
            raise LookupError(f"job {job_id} {f'has no task {task}' if 'ranges' in view else 'is not an array'}")
        ended = self.store.history(1, lambda j: (j.get("array"), j.get("task")) == (job_id, task), job_id)
        if not ended:
            raise LookupError(f"task {job_id}.{task} ended too long ago (see grun -q history)")
        return self._ended(ended[0])[0]

    def _ended(self, *jobs: dict) -> list[dict]:
        """Jobs from history as queries show them: their dependencies named as core.view names them (from history too),
        each looked up once and in id order, so a history file is read once (a dependency a row: 1,000 rows, 35 s)."""
        ids = sorted({i for job in jobs for _, i in job.get("deps") or ()})
        with self.lock:
            found = {i: self.core.table.jobs.get(i) or self.core.recent.get(i) for i in ids}
        found.update((i, self.store.find_history(i)) for i in ids if found[i] is None)
        views = [J.public_view(job) for job in jobs]
        for view in views:
            if deps := view.get("deps"):
                view["deps"] = named(deps, found.get)
        return views

    def jobs(self, after: int = 0, limit: int = JOBS_PAGE) -> list[dict]:
        """The live jobs with ids above `after`, the first `limit` (JOBS_PAGE at most: Client.jobs asks on from the
        last one's id). All at once, 100,000 held the master's lock 2 s and grew its memory by 74 MB."""
        only, jobs = self._only(), self.core.table.jobs
        with self.lock:
            ids = heapq.nsmallest(min(int(limit), JOBS_PAGE), (i for i, j in jobs.items() if i > int(after) and only
                                                              in (None, j.get("uid"))))
            return [self.core.view(jobs[i]) for i in ids]

    def makers(self, paths: list) -> list[int]:
        """The uids of the live jobs that make any of these files (grun -M: an input a job of yours remakes is not
        up to date), from the master's index: not every job of a big queue over the wire."""
        only = self._only()
        with self.lock:
            uids = [self.core.table.jobs[i].get("uid") for p in paths for i in self.core.table.makers.get(p, ())]
        return [u for u in uids if only in (None, u)]

    def _only(self) -> int | None:
        """private_queries: the uid whose jobs alone a user's queries show (None: all; root, admins, daemons)."""
        who = auth.confined(self.core.settings["admins"]) if self.core.settings["private_queries"] else None
        return None if who is None else who["uid"]

    def nodes(self) -> list[dict]:
        now = time.time()
        with self.lock:
            return [n.public(now) for _, n in sorted(self.core.table.nodes.items())]

    def history(self, limit=50, user: str | None = None, grep: str | None = None, array=0, since=0.0) -> list[dict]:
        array = J.parse_job_id(array) if array else 0
        asked, only = J.history_filter(user, grep, array), self._only()
        chosen = asked if only is None else lambda job: job.get("uid") == only and (asked is None or asked(job))
        return self._ended(*self.store.history(int(limit), chosen, array, float(since), J.public_view))

    def why(self, job_id: int, short: bool = False) -> str:
        """One paragraph: why the job is not running (or what became of it); `short`: a line (progress)."""
        job, private = self.job(job_id), self._only() is not None  # (private: no other user's job ids)
        with self.lock:
            return progress(job, self.core, time.time(), private) if short else \
                explain(job, self.core, time.time(), private) + provenance(job)

    def placement(self, job_id: int) -> str | None:
        """For a queued job, where it could go now (explain.placement's kind: starting, busy, none up, no node)."""
        job = self.job(job_id)
        with self.lock:
            return placement(job, self.core, time.time())[0] if job["state"] == J.QUEUED else None

    def lookup(self, name: str, user: str | None = None, ended: bool | None = None, anyone: bool = False) -> int | None:
        """The id of a user's job with this name: the live one, else (`ended`; by default when the user is given) their
        newest finished one; else, with `anyone`, for root and admins (as root's `scancel -n`), any user's live one, if
        only one user has one (a ValueError names them), or None. A confined user is always themselves."""
        confined, who = auth.confined(self.core.settings["admins"]), auth.caller()  # (private_queries: the same)
        ended, name = bool(user) if ended is None else ended, str(name)
        user = confined["user"] if confined else str(user) if user else who["user"] if isinstance(who, dict) else None
        with self.lock:
            found = self.core.table.names.get((user, name))
        if found is None and user and ended:
            found = (self.store.find_name(user, name) or {}).get("id")
        if found is None and anyone and not confined:
            with self.lock:
                theirs = sorted((i, u) for (u, n), i in self.core.table.names.items() if n == name)
            if len(theirs) > 1:
                raise ValueError(f"jobs of {len(theirs)} users are named {name!r}: give the id of one of them: "
                                 + ", ".join(f"{i} ({u})" for i, u in theirs))
            found = theirs[0][0] if theirs else None
        return found

    def matching(self, pattern: str, user: str | None = None) -> list[int]:
        """The ids of the live jobs whose names match a glob (`bulk*`: grun -k and -e of many jobs, in one call): the
        user's (a confined caller: always theirs); for root and admins, if none of theirs does, any user's."""
        confined, who = auth.confined(self.core.settings["admins"]), auth.caller()
        user = confined["user"] if confined else str(user) if user else who["user"] if isinstance(who, dict) else None
        match = re.compile(fnmatch.translate(str(pattern))).match
        with self.lock:
            found = [(u, i) for (u, name), i in self.core.table.names.items() if match(name)]
        own = sorted(i for u, i in found if u == user)
        return own if own or confined else sorted(i for _, i in found)

    def status(self, long: bool = False) -> dict:
        """`grun -q status`: nodes, problems for an admin, the master's spool (MB); `long`: each daemon's plugins."""
        space, refusal = spool_space(self.store.dir), self.store.refusal(self.core.settings["min_free_disk"])
        own = None if refusal else disk_low("the master", space, self.core.settings)
        with self.lock:  # nodes whose spool is nearly full (they take no new jobs) or getting full
            disks = [n.disk[1] for _, n in sorted(self.core.table.nodes.items()) if n.disk]
            disks += self.core.table.quotas.unoffered(self.core.table.nodes.values())  # (a typo: "gpus" for "gpu")
        warnings = [*self.store.problems, *filter(None, [refusal, own and own[1]]), *disks]
        out = {"nodes": self.nodes(), "warnings": warnings, "master_spool": space}
        if long:
            nodes = {f"node {n}": p for n, p in sorted(self.node_plugins.items())}
            out["plugins"] = {"master": self.plugins.names, **nodes}
        return out

    def wait_started(self, job_id: int | list, timeout: float = 30.0) -> dict:
        """Returns the job once it runs (or has finished), or as it is when the timeout passes. Given a list of ids:
        {id: job} of those that run or have finished, once one does (none: the timeout passed; grun.calls)."""
        ids = [J.parse_job_id(i) for i in (job_id if isinstance(job_id, list) else [job_id])]
        jobs = self.core.table.jobs
        self._until(lambda: ids if all(jobs.get(i, {}).get("state") in J.UNSTARTED for i in ids) else [], timeout)
        if not isinstance(job_id, list):
            return self.job(ids[0])
        return {str(i): job for i in ids if (job := self.job(i))["state"] not in J.UNSTARTED}

    def wait(self, job_ids: list, timeout: float = 30.0) -> dict:
        """Finished records of the given jobs, once all have finished or the timeout passed; an unknown id: refused."""
        views = {i: self.job(i) for i in map(J.parse_job_id, job_ids)}
        self._until(lambda: [i for i in views if i in self.core.table.jobs], timeout)  # (none when all have finished)
        views = {i: view if view["state"] in J.FINAL_STATES else self.job(i) for i, view in views.items()}
        return {str(i): view for i, view in views.items() if view["state"] in J.FINAL_STATES}

    def _until(self, waiting, timeout: float) -> None:
        """Until waiting() (under the lock) names no job, waking at every record of those it names, or the timeout."""
        deadline, event, watched = time.monotonic() + min(float(timeout), MAX_WAIT_SECS), threading.Event(), set()
        try:
            while True:
                with self.lock:
                    ids = waiting()
                    event.clear()
                    for i in ids:
                        self.watchers.setdefault(i, set()).add(event)
                    watched.update(ids)
                if not ids or (left := deadline - time.monotonic()) <= 0 or not event.wait(left):
                    return
        finally:
            with self.lock:
                for i in watched & self.watchers.keys():
                    self.watchers[i].discard(event)
                    if not self.watchers[i]:
                        del self.watchers[i]
