"""The master's memory stays flat as history grows (DESIGN.md invariant 6). QA: a master at 20k queued + 17k finished
held 321 MB, the same state after a restart 114 MB; each `grun -q history -c 1000000` added 50-100 MB. Measured here
in Python objects (tracemalloc), which a loaded machine does not move; bench/master_memory.py prints a real master's
RSS for the same workload."""
from __future__ import annotations

import random
import tracemalloc

from grun.core import jobs as J
from grun.core import master_state as MS
from grun.store import Store

ENV = {f"VAR_{i}": "x" * 80 for i in range(24)}  # a submitter's environment: ~2.5 KB a job


def test_finished_jobs_kept_whole_are_bounded_and_a_lost_one_still_takes_its_late_end(monkeypatch):
    """recent held 20,000 finished records whole (2-6 KB each) that history has too; a restart started without them."""
    assert MS.RECENT_FINISHED <= 2000
    monkeypatch.setattr(MS, "RECENT_FINISHED", 50)  # (the same code, in less time)
    m = MS.MasterState(random.Random(0), node_timeout=10.0)
    m.handle("register", {"name": "a", "uri": "PYRO:grun.node@a:1", "cpus": 4, "memory": 4000, "incarnation": "i1",
                          "seq": 0}, 0.0)
    lost = m.handle("submit", m.requests([{"cmd": ["sleep", "9"], "host": "a", "requeue": False}]), None, 1.0).reply[0]
    m.handle("schedule", 2.0)
    m.handle("started", "a", {"started": {str(lost): 99}, "incarnation": "i1", "seq": 1}, 2.0)
    m.handle("sweep", 11.0)
    assert m.recent[lost]["state"] == J.LOST
    ids = m.handle("submit", m.requests([{"cmd": ["true"], "env": ENV}] * 200), None, 12.0).reply
    m.handle("kill", ids, 15, False, 12.0)  # queued jobs killed: each a finished record
    assert len(m.recent) == 50 and lost not in m.recent
    m.handle("register", {"name": "a", "uri": "PYRO:grun.node@a:1", "cpus": 4, "memory": 4000, "incarnation": "i1",
                          "seq": 0, "finished": [lost]}, 13.0)
    step = m.handle("finished", "a", [{"id": lost, "attempt": 1, "exit_code": 32}], 14.0)
    assert [(r["op"], r["job"]["exit"]) for r in step.records] == [("late", 32)], "its run's end, though not recent"


def test_a_full_history_listing_holds_one_file_and_the_rows_it_returns(tmp_path):
    """store.history kept every record whole, env too, then copied them: 6.4x the listing it returned (now 1.9x)."""
    store = Store(str(tmp_path), history_rotate_docs=500)
    store.load()
    for start in range(0, 8000, 500):
        store.add_history([{"id": i, "cmd": ["true"], "env": dict(ENV), "user": "qa", "state": "done",
                            "end_time": 1000.0 + i, "usage": {"wall": 0.1}} for i in range(start + 1, start + 501)])
        store.flush()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        rows = store.history(10**6, view=J.public_view)
        kept, peak = (n - before for n in tracemalloc.get_traced_memory())
    finally:
        tracemalloc.stop()
        store.close()
    assert [r["id"] for r in rows] == list(range(8000, 0, -1)) and "env" not in rows[0]
    assert peak < 3 * kept, f"{peak / 1e6:.1f} MB at the peak for {kept / 1e6:.1f} MB of rows"
