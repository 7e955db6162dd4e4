"""The master's scheduling and job-control face: admission (unique names, requests no node could
ever run), nested grun's lending, node descriptions and load, hold/resume/suspend, edits, `why`,
lookups by name, and the live usage nodes report. A mixin of `grun.actors.master.Master`, which owns
the lock, the job table and the journal; every change here is a record applied through the table.
"""

from __future__ import annotations

import collections
import logging
import re
import time

import Pyro5.api

from ..core import jobs as J
from ..core.explain import explain
from ..core.placement import impossible

log = logging.getLogger("grun.master")

USAGE_FIELDS = ("cpu", "rss_mb", "cputime", "read_bytes", "write_bytes", "procs", "time")


@Pyro5.api.expose
class JobControl:
    """Needs from its host class: lock, table, live_usage, _record, _durable, _call_node, _kick."""

    # ---- records and their follow-ups -----------------------------------------------------------

    def _apply_all(self, records: list[dict]) -> tuple[list, list[dict]]:
        """Apply records and the records that must follow them (nested grun's lend/unlend); returns
        what apply() returned for each (the given records' first) and every record applied."""
        todo, out = list(records), []
        i = 0
        while i < len(todo):
            job = self.table.apply(todo[i])
            out.append(job)
            todo.extend(self.table.followups(todo[i], job))
            i += 1
        return out, todo

    # ---- admission ------------------------------------------------------------------------------

    def _admit(self, request: dict, batch_names: set) -> None:
        """Refuse (ValueError, one line) a duplicate name or a request no known node could ever run."""
        name = request.get("name")
        if name:
            other = self.table.names.get(name)
            if other is not None or name in batch_names:
                raise ValueError(f"a job named {name!r} already exists" + (f" (job {other})" if other else ""))
            batch_names.add(name)
        if not request.get("force"):
            why = impossible(request, self.table.nodes)  # the NodeIndex remembers it per job shape
            if why:
                raise ValueError(f"{why} (--force queues it anyway)")

    def lookup(self, name: str) -> int | None:
        """The live job with this name, or None."""
        with self.lock:
            return self.table.names.get(str(name))

    # ---- nodes ----------------------------------------------------------------------------------

    def _node_up(self, name: str, info: dict) -> None:
        """A node registers: journal its description when new or changed, then count its jobs."""
        resources = {str(k): float(v) for k, v in (info.get("resources") or {}).items()}
        labels = {str(k): str(v) for k, v in (info.get("labels") or {}).items()}
        rec = self.table.node_record(name, float(info["cpus"]), int(info["memory"]), resources, labels)
        if rec is not None:
            self._record([rec])
        self.table.node_up(name, float(info["cpus"]), int(info["memory"]), resources, labels)

    def _note_load(self, node, info: dict) -> None:
        """A heartbeat's measurements: load from non-grun processes, and its jobs' usage."""
        node.outside_cpus = max(0.0, float(info.get("outside_cpus", 0.0) or 0.0))
        node.outside_memory = max(0, int(info.get("outside_memory", 0) or 0))
        self.node_info[node.name]["load"] = {"outside_cpus": node.outside_cpus, "outside_memory": node.outside_memory,
                                             "grun_cpus": float(info.get("grun_cpus", 0.0) or 0.0)}
        for job_id, usage in (info.get("usage") or {}).items():
            job = self.table.jobs.get(int(job_id))
            if job is not None and job.get("node") == node.name:
                self.live_usage[int(job_id)] = {k: usage.get(k) for k in USAGE_FIELDS if k in usage}
        # (a finished job's entry is dropped when it finishes, Master._remember: a scan of every
        # entry here cost O(running jobs) per heartbeat)

    # ---- hold, resume, suspend -----------------------------------------------------------------

    def hold(self, job_ids: list) -> dict:
        """Hold queued jobs; suspend running ones (SIGSTOP to the process group, cpus released)."""
        return self._control(job_ids, "hold")

    def resume(self, job_ids: list) -> dict:
        """Release held jobs; continue suspended ones (SIGCONT, cpus taken back)."""
        return self._control(job_ids, "resume")

    def _control(self, job_ids: list, what: str) -> dict:
        ids = [J.parse_job_id(i) for i in job_ids]
        now = time.time()
        local = {"hold": (J.QUEUED, "hold"), "resume": (J.HELD, "release")}[what]
        remote_state = {"hold": J.RUNNING, "resume": J.SUSPENDED}[what]
        found, on_nodes = {}, collections.defaultdict(list)
        with self.lock:
            records = []
            for job_id in ids:
                job = self.table.jobs.get(job_id)
                found[str(job_id)] = job is not None
                if job is None:
                    continue
                if job["state"] == local[0]:
                    records.append({"op": local[1], "id": job_id, "time": now})
                elif job["state"] == remote_state:
                    on_nodes[job["node"]].append(job_id)
            self._record(records)
        self._durable()
        failed = self._signal_nodes(on_nodes, what, now)
        self._kick.set()
        if failed:
            raise ValueError(f"could not {'suspend' if what == 'hold' else 'continue'} job "
                             f"{', '.join(map(str, failed))}: its node did not answer")
        return found

    def _signal_nodes(self, on_nodes: dict, what: str, now: float) -> list[int]:
        """SIGSTOP/SIGCONT on the nodes (no lock held), then record what was done. Returns failures."""
        method, op = {"hold": ("suspend", "suspend"), "resume": ("resume", "resume")}[what]
        done, failed = [], []
        for node, ids in on_nodes.items():
            reply = self._call_node(node, method, ids)
            for job_id in ids:
                ok = reply is not None and reply.get(str(job_id)) is not False
                (done if ok else failed).append((node, job_id))
        with self.lock:
            records = [{"op": op, "id": job_id, "time": now} for node, job_id in done
                       if self.table.jobs.get(job_id, {}).get("node") == node]
            self._record(records)
        self._durable()
        return [job_id for _, job_id in failed]

    # ---- edits ----------------------------------------------------------------------------------

    def edit(self, job_ids: list, changes: dict) -> dict:
        """Change queued or held jobs: priority, cpus, memory, hosts, params (`p.NAME`)."""
        ids = [J.parse_job_id(i) for i in job_ids]
        try:
            parsed = J.parse_edit(changes)
        except J.SpecError as exc:
            raise ValueError(str(exc)) from None
        now = time.time()
        found = {}
        with self.lock:
            records = []
            for job_id in ids:
                job = self.table.jobs.get(job_id)
                found[str(job_id)] = job is not None
                if job is None:
                    continue
                if job["state"] not in (J.QUEUED, J.HELD):
                    raise ValueError(f"job {job_id} is {job['state']}: only queued or held jobs can be edited")
                try:
                    new = J.edited_request(job, parsed, self.default_cpus, self.default_memory)
                except J.SpecError as exc:
                    raise ValueError(f"job {job_id}: {exc}") from None
                why = None if job.get("force") else impossible({**job, **new}, list(self.table.nodes.values()))
                if why:
                    raise ValueError(f"job {job_id}: {why}")
                records.append({"op": "edit", "id": job_id, "changes": new, "time": now})
            self._record(records)
        self._durable()
        self._kick.set()
        return found

    # ---- questions ------------------------------------------------------------------------------

    def why(self, job_id: int) -> str:
        """One paragraph: why the job is not running (or what became of it)."""
        job_id = J.parse_job_id(job_id)
        with self.lock:
            job = self.table.jobs.get(job_id)
            if job is not None:
                return explain(job, self.table, time.time())
        return explain(self.job(job_id), self.table)

    def _history_predicate(self, user: str | None, grep: str | None):
        pattern = None
        if grep:
            try:
                pattern = re.compile(str(grep))
            except re.error as exc:
                raise ValueError(f"bad regular expression {grep!r}: {exc}") from None

        def keep(job: dict) -> bool:
            if user and job.get("user") != user:
                return False
            if pattern is not None:
                cmd = job.get("cmd") or []
                text = cmd[0] if job.get("shell") and cmd else " ".join(cmd)
                return bool(pattern.search(text) or pattern.search(job.get("name") or ""))
            return True
        return keep if (user or pattern) else None
