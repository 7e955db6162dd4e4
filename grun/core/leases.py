"""Leases, as HyperQueue and Dask tie work to a live client: a job submitted with `lease: SECONDS` (grun.calls' jobs, which
wait for their call from the caller once they run) ends once that long has passed without a renewal (the master's
`renew`, every lease / 3 from one thread of the caller's): queued, held or waiting, cancelled; on a node, killed at once
(as `kill --force`). A caller killed with kill -9 left each of its calls to start and wait 300 s for nothing (a map of
10,000: ~800 slot-hours). Pure code; due times live in memory only: after a master restart each runs from then."""

from . import jobs as J

REASON = "its caller stopped renewing its lease"
PAUSE_SECS = 5.0  # a gap between two sweeps (made every second or so) longer than this: the master did not run


class Leases(dict):
    """Job id -> when its lease runs out; `swept`: when the master last looked (time it did not run, stopped or paused,
    or a step of the clock, must not end a live caller's calls: each lease is pushed on by it)."""

    swept = 0.0

    def start(self, jobs, now: float) -> None:
        self.update((job["id"], now + job["lease"]) for job in jobs if "lease" in job)

    def renew(self, table, job_ids: list, now: float) -> dict:
        """{id: whether it is a live job with a lease, renewed from `now`}."""
        ids = {str(raw): J.parse_job_id(raw) for raw in job_ids}
        live = {i for i in ids.values() if i in self and i in table.jobs}
        self.update((i, now + table.jobs[i]["lease"]) for i in live)
        return {raw: i in live for raw, i in ids.items()}

    def expire(self, table, now: float) -> tuple[list[dict], list[tuple]]:
        """The records that end the live jobs whose lease ran out by `now`, and the instructions: their nodes' kills."""
        if self.swept and now - self.swept > PAUSE_SECS:  # (a master SIGSTOPped 5 s killed every 3 s lease's calls)
            for job_id in self:
                self[job_id] += now - self.swept
        self.swept = now
        ended = [job_id for job_id, due in self.items() if due <= now]  # (a job that ended, renewed no more, leaves so)
        records, on_nodes = [], {}
        for job in filter(None, map(table.jobs.get, ended)):
            if job["state"] in J.ON_NODE_STATES:
                on_nodes.setdefault(job["node"], []).append(job["id"])
                result = {"status": J.KILLED, "signal": 15, "exit_code": None, "reason": REASON}
            else:
                result = J.never_started(J.CANCELLED, None, REASON)
            records.append({"op": "finish", "id": job["id"], "time": now, "result": {**result, "error": REASON}})
        for job_id in ended:
            del self[job_id]
        do = [("kill", node, ids, 15) for node, ids in on_nodes.items()]
        if records:  # (one line however many)
            more = f" and {len(records) - 1} more" * (len(records) > 1)
            do.append(("log", "info", f"job {records[0]['id']}{more}: {REASON}"))
        return records, do
