"""What a node measures every second with psutil: each running job's usage (a job is its session, all its process
groups: its reaper starts it as a session leader; what calls setsid escapes), and the load that is not grun's, so the
scheduler never counts on cpus or memory other programs use (grun's processes: the node daemon, its descendants, every
job's session, and the master's if it runs on this host); and which job goes when a memory limit is hit (its own, or
the node's min_free_memory).

Outside cpu load, over the heartbeat window: the machine's busy cpu time (all but idle and iowait) minus
grun's, in whole cores, a core counting once it is BUSY_CORE busy, so a few percent of daemon noise never
costs a 1-cpu job its node. Outside memory: the machine's used memory minus grun's resident memory.
Both are charged to the node only beyond the part of the machine its config does not offer (cpus:, memory: below
the machine's): other programs use that part first.
"""

import math
import os
import time

import psutil

from ..core.learn import size

SAMPLE_SECS = 1.0
BUSY_CORE = 0.7  # a core of outside load counts once it is this busy
USAGE = ("procs", "rss_mb", "cpu", "cputime", "read_bytes", "write_bytes")  # of a job, in each sample


def this_process() -> list | None:
    """This process as another of its host's can tell it from any other: [boot id, pid, start time] (the start time
    tells a reused pid or another namespace's apart; a master's registration reply carries it: Monitor.master)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:  # (no such file: not Linux; its master is then not recognised, as before)
        return None
    return [boot, os.getpid(), psutil.Process().create_time()]


def _busy_seconds() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)


class Monitor:
    def __init__(self):
        self.prev_cpu: dict[tuple, tuple] = {}     # (pid, create time) -> (own cpu s, reaped children's, ppid)
        self.credit: dict[int, float] = {}         # pid -> cpu s of its vanished children already counted
        self.last_sample = time.time()
        # the window's start, the machine's busy cpu s then, and grun's cpu s since
        self.window_start, self.window_busy0, self.window_grun = time.monotonic(), _busy_seconds(), 0.0
        self.usage: dict[int, dict] = {}           # job id -> latest usage
        self.outside_memory, self.grun_cores, self._last_outside = 0, 0.0, (0.0, 0)
        self.available_mb = 1 << 40                # the machine's available memory at the last sample
        self.machine = (psutil.cpu_count() or 1, psutil.virtual_memory().total // 2**20)  # (cores, MB): they stay
        self.master, self.boot = None, (this_process() or [None])[0]  # the master's this_process() (its registration reply)

    def sample(self, sessions: dict[int, int]) -> dict[int, dict]:
        """One sample. `sessions`: job id -> its session id (its pid). Returns job id -> usage, also kept in .usage."""
        now = time.time()
        interval = max(1e-3, now - self.last_sample)
        by_session = {sid: job_id for job_id, sid in sessions.items()}
        per_job: dict[int, dict] = {job_id: dict.fromkeys(USAGE, 0) for job_id in sessions}
        grun_rss, seen = 0, {}
        own = self._tree(os.getpid())  # (QA: a busy master was other programs' load, and stalled a one-host cluster)
        if (master := self.master) and self.boot and master[0] == self.boot:  # (on this host)
            own |= self._tree(master[1], master[2])
        for pid in psutil.pids():
            try:
                job_id = by_session.get(os.getsid(pid))
            except OSError:
                continue
            if job_id is None and pid not in own:
                continue
            if (got := self._read(pid)) is None:
                continue
            key, cpu_total, delta, rss, anon, io, state = got
            seen[key] = state
            grun_rss += rss
            self.window_grun += delta
            if job_id is not None:
                for field, value in zip(USAGE, (1, anon / 2**20, delta / interval, cpu_total, *io)):
                    per_job[job_id][field] += value
        self._credit_vanished(seen)
        self.prev_cpu, self.last_sample = seen, now
        vm = psutil.virtual_memory()
        self.available_mb = vm.available // 2**20
        self.outside_memory = max(0, (vm.total - vm.available - grun_rss) // 2**20)
        for u in per_job.values():
            u.update(rss_mb=int(u["rss_mb"]), cpu=round(u["cpu"], 2), cputime=round(u["cputime"], 2), time=now)
        self.usage = per_job
        return per_job

    @staticmethod
    def _tree(pid: int, started: float | None = None) -> set[int]:
        """The process and its descendants; none if it is gone, or is not the process `started` then."""
        try:
            p = psutil.Process(pid)
            if started is not None and abs(p.create_time() - started) > 0.05:
                return set()
            return {pid, *(c.pid for c in p.children(recursive=True))}
        except psutil.Error:
            return set() if started else {pid}

    def _read(self, pid: int):
        try:
            p = psutil.Process(pid)
            with p.oneshot():
                created, t, mem, ppid = p.create_time(), p.cpu_times(), p.memory_info(), p.ppid()
                try:
                    io = p.io_counters()
                    io = (io.read_bytes, io.write_bytes)
                except (psutil.AccessDenied, AttributeError):
                    io = (0, 0)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            return None
        key = (pid, created)
        own, reaped = t.user + t.system, t.children_user + t.children_system
        total = own + reaped
        if (prev := self.prev_cpu.get(key)) is None:
            delta = total if created >= self.last_sample else 0.0  # new since the last sample: all of it
        else:
            # A reaped child's time lands in its parent's: what we counted of it is credited, not counted again
            reaped_new = max(0.0, reaped - prev[1])
            if (credit := self.credit.pop(pid, 0.0)) > reaped_new:
                self.credit[pid] = credit - reaped_new  # not reaped yet (a zombie): keep it for later
            delta = max(0.0, own - prev[0]) + max(0.0, reaped_new - credit)
        anon = max(0, mem.rss - getattr(mem, "shared", 0))  # resident and private: what the job holds
        return key, total, delta, mem.rss, anon, io, (own, reaped, ppid)

    def _credit_vanished(self, seen: dict) -> None:
        """Processes gone since the last sample: credit what we counted of them to their parents."""
        alive = {key[0] for key in seen}
        for key, (own, reaped, ppid) in self.prev_cpu.items():
            if key not in seen and ppid:
                self.credit[ppid] = self.credit.get(ppid, 0.0) + own + reaped
        # a parent gone (or not ours): nobody will be credited
        self.credit = {pid: cpu for pid, cpu in self.credit.items() if pid in alive}

    def outside(self, cpus: float, memory_mb: int) -> tuple[float, int]:
        """(cores, MB) that programs not grun's take of what the node offers, over the window since the last call."""
        now, busy = time.monotonic(), _busy_seconds()
        if (elapsed := now - self.window_start) >= 0.5:
            cores = max(0.0, (busy - self.window_busy0 - self.window_grun) / elapsed)
            self.grun_cores = round(self.window_grun / elapsed, 2)  # what was excluded, for inspection
            self.window_start, self.window_busy0, self.window_grun = now, busy, 0.0
            self._last_outside = (float(max(0, math.floor(cores + (1 - BUSY_CORE)))), int(self.outside_memory))
        cores, memory = self._last_outside
        return (max(0.0, cores - max(0, self.machine[0] - cpus)), max(0, memory - max(0, self.machine[1] - memory_mb)))


def over_memory_limit(rss_mb: int, limits: dict) -> str | None:
    """Why a job whose processes hold rss_mb is killed for its memory limit (grun.limits.job_limits), or None."""
    if limits.get("memory_mb") and rss_mb > limits["memory_mb"]:
        return f"its processes held {rss_mb} MB; limit {limits['memory_mb']} MB = {limits['memory_basis']}"


def node_memory_victim(jobs: dict, available_mb: int, min_free_mb: int) -> tuple | None:
    """Under min_free_mb available: (job id, why) of the job furthest over its reservation (`jobs`: id -> (resident MB,
    reservation MB)); None when there is enough, or no job is over (within it, a job was promised that much)."""
    over = {job_id: rss - reserved for job_id, (rss, reserved) in jobs.items() if rss > reserved}
    if available_mb >= min_free_mb or not over:
        return None
    job_id = max(over, key=over.get)
    rss, reserved = jobs[job_id]
    return job_id, (f"the node was out of memory ({available_mb} MB available, min_free_memory {min_free_mb} MB); "
                    f"this job used {size(rss)}, {rss / max(reserved, 1):.1f}x its reservation of {size(reserved)}")

