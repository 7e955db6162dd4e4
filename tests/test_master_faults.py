"""The master when a request fails inside its core, through real daemons: the waiters the failed event's records
woke are woken (not left asleep until their next poll), and the caller gets the core's one-line error."""
from __future__ import annotations

import threading
import time

import pytest

from grun.client import GrunError, current_user


def _spec(**extra) -> dict:
    return {"cmd": ["true"], "cwd": "/", "user": current_user(), **extra}


def test_a_waiter_is_woken_when_an_event_fails_after_touching_its_job(cluster):
    """A submission --after task A.3 (not begun: the core makes it a job, a "task" record of array A) whose name is
    taken fails in the core after that record: the waiters of A were taken from the watchers and never woken, so a
    `grun wait A` slept through A's end until its poll's timeout (30 s)."""
    client = cluster.client()
    array, taken = client.submit_many([_spec(array="1-5", hold=True), _spec(name="taken-name", hold=True)])
    got = []
    waiter = threading.Thread(target=lambda: got.append(client.call("wait", [array], 25.0)))
    waiter.start()
    time.sleep(0.5)  # (the waiter is in the master's watchers)
    with pytest.raises(GrunError, match="^a job named 'taken-name' already exists"):
        client.submit_many([_spec(name="taken-name", after=[f"{array}.3"])])
    client.kill([array, taken])
    began = time.monotonic()
    waiter.join(30)
    assert got and got[0][str(array)]["state"] == "killed"
    assert time.monotonic() - began < 5, "the waiter slept through the end of the job it waits for"
