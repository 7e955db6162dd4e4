"""The job supervisor actor (`grun.job.<id>`): a job's remote face, an object of its node's Pyro5 daemon (the
node's URI with this object id). Clients ask it for the job's status, a one-time token to stream its output
(grun.stream_server) or stage its files, and say when they have fetched the output."""

import contextlib
import os

import Pyro5.api

from .. import auth


@Pyro5.api.expose
class JobSupervisor:
    def __init__(self, node, job_id: int):
        self._node, self._id = node, job_id

    @property
    def _live(self):
        live = self._node.live.get(self._id)
        if live is None:
            raise LookupError(f"job {self._id} is no longer on this node")
        return live

    def info(self) -> dict:
        live = self._live
        sizes = dict.fromkeys(("stdout", "stderr"), 0)  # (0: not started yet, or just forgotten)
        for stream in sizes:
            with contextlib.suppress(OSError):
                sizes[stream] = os.path.getsize(os.path.join(live.dir, stream))
        return {"id": self._id, "node": self._node.name, "status": self._node.job_status(live), **sizes}

    def _owned(self, what: str):
        """The live job, if the caller may `what` it: its owner, root, a daemon, or an admin as the master said at its
        start (in the job, by the master's proven call: not in a heartbeat reply, which anyone at its address could fake)
        and still says (its last reply: one that drops an admin can only take rights away, so a reload revokes at once)."""
        live, now = self._live, self._node.admins
        admins = frozenset(live.job.get("admins") or ())
        auth.require(f"{what} job {self._id}, which is {live.job.get('user')}'s", live.job.get("uid"),
                     admins if now is None else admins & now)
        return live

    def attach(self, out_offset: int = 0, err_offset: int = 0, stdin: bool = False, attempt: int = 0) -> dict:
        """A one-time ticket to stream the job's output from the given offsets (and feed its stdin), which says
        whether the job has staged outputs to pull once it ended; for a staged job that still waits for its inputs,
        a ticket to push them first instead: {"inputs": ticket} (grun.stage). Not for a run before `attempt`."""
        if int(out_offset) < 0 or int(err_offset) < 0:
            raise ValueError("offsets must be >= 0")
        live = self._owned("attach to")
        if live.attempt < int(attempt):  # (the master started the next run: its offer is on its way here)
            raise LookupError(f"job {self._id}'s attempt {attempt} has not reached this node yet")
        if (staged := live.stage) and (push := staged.offer(False)):
            return {"inputs": push}
        ticket = self._node.offer_stream(live, int(out_offset), int(err_offset), bool(stdin))
        return dict(ticket, outputs=bool(staged and staged.outputs))

    def stage(self, out: bool = False) -> dict | None:
        """A one-time ticket to push a staged job's inputs, or (`out`, once it ended) to pull its outputs (grun.stage)."""
        staged = self._owned("stage files of").stage
        return staged and staged.offer(bool(out))

    def release(self, what: str = "all") -> None:
        """The client has the whole output (the spool may go once the master has the status too), or a staged job's
        outputs ("outputs": its work dir goes), or failed to fetch them ("tried"); another word does nothing."""
        self._node.mark_fetched(self._owned("release"), what)
