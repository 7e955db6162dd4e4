"""A job followed to its end (Client.follow: `grun CMD`, Job.stdout, the calls): once it runs, its output streamed from its
node (grun.stream), its staged files pulled (grun.stage), then its exit code; riding through a master or node daemon
restart, a dropped connection and a lost node or a retry (the run that counts)."""

import contextlib
import time

from . import mounts, stream, wire
from .client import Client, GrunError, _failure, _tell_limit
from .core import jobs as J

# How long _settle waits for the record of a job whose output ended (ms; s under load), then gives the stream's code.
SETTLE_WAIT = 300.0


def follow(client: Client, job_id: int, *, on_note=None, **how) -> int:
    """_follow's, but a run whose input was cut off (its stream broke before all of it went out: the node daemon ends
    the job's input with the connection) is killed, its results wrong (no afterok dependant runs): its code if it
    had failed (not killed), else 1."""
    on_note, cut = on_note or (lambda text: None), []
    code = _follow(client, job_id, on_note=on_note, cut=cut, **how)
    if not cut or client.job(job_id)["state"] == J.LOST:  # (its node is gone: lost, not an input cut)
        return code
    if len(cut) == 1:  # (its node never answered again)
        _cut_off(client, job_id, cut[0], on_note)
    job = client.job(job_id)
    return int(job.get("exit") or 1) if job["state"] == J.FAILED and not job.get("kill_signal") else 1


def _cut_off(client: Client, job_id: int, broken: stream.StreamBroken, on_note) -> None:
    on_note(f"job {job_id}'s input was cut off when its node daemon restarted ({broken.args[0]}): killing it")
    try:
        client.kill([job_id], 9)
    except GrunError as exc:
        on_note(f"could not kill job {job_id}: {exc}")


def _end_input(client: Client, job_id: int, job: dict) -> None:
    """A run nobody will follow (the grun that fed the job's input stopped at its re-queue) gets the end of its input
    at once, not a wait for ever: our connection, closed (its output stays on its node for `grun --attach`)."""
    with contextlib.suppress(Exception):  # (ended, its node away, staging: no input to end)
        with client.supervisor(job_id, job) as sup:
            ticket = sup.attach(0, 0, True, job.get("attempt") or 0)
        stream.connect(ticket["host"], ticket["port"], ticket["token"]).close()


def _follow(client: Client, job_id: int, *, stdin_fd=None, stdout_fd=1, stderr_fd=2, on_start=None,
            release: bool = True, require_output: bool = False, tail: bool = False, on_note,
            on_limit=None, on_wait=None, one_run: bool = False, cut: list) -> int:
    """Once the job runs, stream its output from the start (`tail`: from now) into fds (or callables taking bytes)
    until it ends; return its exit code. `on_start(job)` hears of each run followed; `release`: the node drops the
    spool then; `require_output`: GrunError if the node no longer holds it; `on_note(text)`: what a user may want to
    know, `on_limit(text)` a limit it died of, `on_wait(line)` why it has not started yet. Rides through a master or
    node daemon restart, a dropped connection (re-attach at the offsets reached) and a lost node (its new run; not with
    `one_run` once the lost run's output reached us, two runs' bytes in one stream: 255, as srun fails on NODE_FAIL). `cut` gets the StreamBroken that cut the
    run's input off, then None once that is said."""
    job, where, out_off, err_off, failures = client.wait_started(job_id, on_wait), None, 0, 0, 0
    again = stream.input_again(stdin_fd)
    retried = 1 if job.get("retries") else None  # the attempt we follow next, when the job is retried
    wrote, requeues = False, job.get("requeues", 0)  # (bytes of the run followed, `where`, reached our fds; its requeues)
    while True:
        if one_run and wrote and job.get("requeues", 0) > requeues and (job.get("node"), job.get("attempt")) != where \
                and (job["state"] not in J.FINAL_STATES or job.get("node")):  # (not a retry, a run reclaimed on its
            # node come back, nor a re-queued job killed before its next run: followed to that end)
            on_note(f"job {job_id} was re-queued ({job.get('requeue_reason') or 'its node was lost'}) after its attempt "
                    f"{where[1]}'s output: not following the next (grun --attach {job_id} does)")
            if job.get("stdin") and job.get("node") and job["state"] not in J.UNSTARTED:
                _end_input(client, job_id, job)  # (its next run would wait for ever for the input we gave the first)
            return 255
        if job["state"] in J.UNSTARTED:  # re-queued (its node was lost), or retried
            job = client.wait_started(job_id, on_wait)
        node, attempt = run = (job.get("node"), job.get("attempt"))
        if where is not None and run != where:
            out_off, err_off, stdin_fd = 0, 0, again()
            on_note(f"job {job_id} was re-queued ({job.get('requeue_reason') or 'its node was lost'}); " + (
                f"following attempt {attempt} on {node}: its output starts over" + (
                    "; its input is not sent again" if stdin_fd == b"" else "") if node
                else f"it was {job['state']} before its next attempt"))  # (killed: it never ran again)
        elif retried and (attempt or 0) > retried:  # that run ended, and its node began the next, before we came
            gone = f"attempt {retried}" if attempt - 1 == retried else f"attempts {retried}-{attempt - 1}"
            on_note(f"job {job_id}: the output of {gone} was not kept (it ended and the job ran again "
                    f"before grun could attach); following attempt {attempt}")
        if cut and where is not None and run != where:  # (a next run gets its input anew)
            cut.clear()
        if on_start and run != where:  # the first run we follow, or the next one
            on_start(job)
        where, final, retried, requeues = run, job["state"] in J.FINAL_STATES, None, job.get("requeues", 0)
        try:
            if not (supervisor := client.supervisor(job_id, job)):
                if final:
                    gone = f"job {job_id} ran on {node}, which the master no longer knows: its output is out of reach"
                    break
                raise ConnectionError("its node has not registered with the master yet")
            with supervisor as sup:
                if tail:
                    sizes, tail = sup.info(), False
                    out_off, err_off = sizes.get("stdout", 0), sizes.get("stderr", 0)
                while "inputs" in (ticket := sup.attach(out_off, err_off, stdin_fd is not None, attempt or 0)):
                    from . import stage  # its node does not share our files, and waits for its inputs
                    if not stage.transfer(ticket["inputs"], job, on_note, False):
                        time.sleep(1)  # it broke before the node took it: the next ticket, not at once
                if len(cut) == 1 and job["state"] != J.LOST:  # its node answers again (the kill reaches it): said, and killed, once
                    cut.append(_cut_off(client, job_id, cut[0], on_note))
                for what, asked, key in (("output", out_off, "out_offset"), ("error output", err_off, "err_offset")):
                    if ticket.get(key, 0) > asked:  # the node keeps only spool_max of it
                        on_note(f"job {job_id}: {what} before byte {ticket[key]} was already delivered")
                out_off, err_off = ticket.get("out_offset", out_off), ticket.get("err_offset", err_off)
                status = stream.attach(ticket["host"], ticket["port"], ticket["token"], stdout_fd=stdout_fd,
                                       stderr_fd=stderr_fd, stdin_fd=stdin_fd, out_offset=out_off,
                                       err_offset=err_off, on_note=lambda text: on_note(f"job {job_id}: {text}"))
                wrote |= status.wrote
                _tell_limit(None if status.get("limit_told") else on_limit, status, job_id)  # (told: in its stderr)
                what = "all" if release and not status.get("superseded") and not ticket["outputs"] else None
                if ticket["outputs"] and not status.get("superseded"):  # (not a stale copy's)
                    from . import stage
                    what = stage.pull(sup, job, on_note, release)
                with contextlib.suppress(OSError):  # the node drops the spool once the master has it
                    what and sup._pyroOneway("release", what)
            last, code = _settle(client, job_id, where), J.exit_code_of(status)
            if last and (last.get("node"), last["attempt"]) != where and (  # re-run: follow the run that counts
                    status.get("superseded") or last.get("requeues", 0) > job.get("requeues", 0)):
                job = last  # (its node was lost meanwhile: our run killed as stale, or it ended and did not count)
                continue
            if last and last.get("retried", 0) > job.get("retried", 0):  # (its next run may have ended too)
                on_note(f"job {job_id} failed (exit {code}); it is retried: following its next run")
                job, where, retried, out_off, err_off, stdin_fd = last, None, (where[1] or 0) + 1, 0, 0, again()
                wrote = False  # (a retry's output follows the failed run's: README)
                continue
            if last and last.get("not_retried"):
                on_note(f"job {job_id} is not retried: {last['not_retried']}")
            if client.nfs_sync:
                mounts.after(job)
            if last and last["state"] == J.LOST:  # (its node was silent, then back with the run we followed: its
                _tell_limit(on_limit, last, job_id)  # code, whether the master has heard that end yet or not)
            return int(last["exit"]) if last and last["state"] in J.FINAL_STATES and (
                last["state"] != J.LOST or status.get("superseded")) else code  # (the run that counts)
        except stream.StreamBroken as broken:
            wrote |= broken.offsets != (out_off, err_off)
            out_off, err_off = broken.out_offset, broken.err_offset
            stdin_fd = None  # what was sent is gone with the connection; don't send the rest twice
            if broken.input_cut and not cut:  # (told and killed once the node answers: the kill reaches it)
                cut.append(broken)
        except (BrokenPipeError, stream.WriteError):
            raise  # our own reader went away (`grun yes | head -1`), or our stdout refuses the bytes
        except (LookupError, wire.CallRejected):  # (its node answers, but holds no such job)
            if final:  # (the node drops it once a client has read it to the end, or after output_keep)
                gone = f"job {job_id} has ended and its output is no longer kept on {node} (read already, or expired)"
                break
        except Exception as exc:
            if not wire.is_unreachable(exc):
                raise _failure(exc, f"job {job_id}") from None
        failures += 1
        if final and failures >= 5:  # the job has ended, and its node does not answer: the master has its exit code
            gone = f"job {job_id}: its node {node} does not answer, so its output cannot be fetched"
            break
        time.sleep(min(0.2 * failures, 2.0))
        job = client.call("job", job_id, wait=client.long_wait)  # ride through a master restart
    if require_output:
        raise GrunError(gone)
    if job.get("node"):  # a job that never ran had no output to keep
        on_note(gone)
    return client.exit_code(job_id, on_limit)


def _settle(client: Client, job_id: int, run: tuple) -> dict | None:
    """Wait until the master has this run's end (for `grun -q history` right after); not for a next run (the
    master's wait returns at the job's last end), a master away, nor past SETTLE_WAIT. Its record last seen/None."""
    deadline, patience, job = time.monotonic() + SETTLE_WAIT, 0.25, None
    try:
        while not (ended := client.call("wait", [job_id], min(patience, max(0.02, deadline - time.monotonic())),
                                        wait=0)):
            job = client.call("job", job_id, wait=0)
            if job["state"] in J.FINAL_STATES or (job.get("node"), job.get("attempt")) != run \
                    or time.monotonic() > deadline:
                return job
            patience = min(patience * 2, 30.0)
        return next(iter(ended.values()))
    except GrunError:
        return job
