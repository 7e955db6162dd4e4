"""The machine's CPU: how busy it is, who spent the CPU of a timed run (a cluster's daemons, its jobs,
the clients, other people), and timed commands that do not poll."""

from __future__ import annotations

import os
import resource
import subprocess
import threading
import time

import psutil

from bench.report import say

TICK = os.sysconf("SC_CLK_TCK")

# ---- how busy the machine is -------------------------------------------------------------------

def busy_ticks() -> tuple[int, int]:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
    return busy, busy + v[3] + v[4]


def machine_busy_pct(interval: float = 0.5) -> float:
    a = busy_ticks()
    time.sleep(interval)
    b = busy_ticks()
    total = b[1] - a[1]
    return 100.0 * (b[0] - a[0]) / total if total > 0 else 0.0


def wait_idle(max_wait: float) -> str:
    """Other work on a shared machine skews timings: wait (bounded) for < 15 % busy; '' when idle."""
    if max_wait <= 0:
        return ""
    deadline = time.monotonic() + max_wait
    while True:
        pct = machine_busy_pct()
        if pct < 15:
            return ""
        if time.monotonic() > deadline:
            say(f"machine still {pct:.0f}% busy; measuring anyway")
            return f"bg-busy-{pct:.0f}%"


# ---- who spent the CPU ---------------------------------------------------------------------------

class CpuGroup:
    """A cgroup-v1 cpuacct group holding one cluster's daemons and, by inheritance, their fork servers,
    job supervisors and jobs: the only way to count the CPU of the short-lived supervisor processes
    (the fork server ignores SIGCHLD, so their time reaches nobody's rusage). None when unavailable."""

    ROOT = "/sys/fs/cgroup/cpuacct"
    _count = 0

    def __init__(self):
        CpuGroup._count += 1
        self.path = os.path.join(self.ROOT, f"grun-bench-{os.getpid()}-{CpuGroup._count}")
        os.mkdir(self.path)

    @classmethod
    def create(cls):
        if not os.access(os.path.join(cls.ROOT, "cgroup.procs"), os.W_OK):
            return None
        try:
            return cls()
        except OSError:
            return None

    def add(self, pid: int) -> None:
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write(str(pid))

    def usage(self) -> float:
        with open(os.path.join(self.path, "cpuacct.usage")) as f:
            return int(f.read()) / 1e9

    def remove(self) -> None:
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)  # dying processes leave the group a moment later


class CpuMeter:
    """CPU seconds over an interval: the cluster's daemons (psutil), the whole cluster with its
    supervisors and jobs (cgroup), the clients this process started and waited for (rusage), the
    whole machine (/proc/stat), and what is left: other people's work on a shared machine."""

    def __init__(self, cluster):
        self.cgroup = getattr(cluster, "bench_cgroup", None)
        self.procs = {}
        for name, p in cluster.procs.items():
            try:
                self.procs[name] = psutil.Process(p.pid)
            except psutil.Error:
                pass
        self.start = self._sample()

    def _sample(self) -> dict:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        out = {"machine": busy_ticks()[0] / TICK, "forkservers": 0.0, "bench": me.ru_utime + me.ru_stime,
               "clients": kids.ru_utime + kids.ru_stime,
               "cluster": self.cgroup.usage() if self.cgroup else None, "daemons": {}}
        for name, p in self.procs.items():
            try:
                t = p.cpu_times()
                out["daemons"][name] = t.user + t.system
                for child in p.children():
                    if "grun.spawner" in " ".join(child.cmdline()):
                        ct = child.cpu_times()
                        out["forkservers"] += ct.user + ct.system
            except psutil.Error:
                pass
        return out

    def stop(self) -> dict:
        a, b = self.start, self._sample()
        d = {k: b[k] - a[k] for k in ("machine", "forkservers", "bench", "clients")}
        daemons = {k: b["daemons"].get(k, 0.0) - a["daemons"].get(k, 0.0) for k in b["daemons"]}
        out = {"master": daemons.get("master", 0.0),
               "node_daemons": sum(v for k, v in daemons.items() if k != "master"),
               "forkservers": d["forkservers"], "clients": d["clients"], "bench": d["bench"],
               "machine": d["machine"], "cluster": None, "supervisors_and_jobs": None, "foreign": None}
        if a["cluster"] is not None:
            out["cluster"] = b["cluster"] - a["cluster"]
            out["supervisors_and_jobs"] = out["cluster"] - out["master"] - out["node_daemons"] - out["forkservers"]
            out["foreign"] = max(0.0, out["machine"] - out["cluster"] - out["clients"] - out["bench"])
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}


def rss_mb(cluster, name: str) -> float | None:
    try:
        return psutil.Process(cluster.procs[name].pid).memory_info().rss / 1e6
    except (KeyError, psutil.Error):
        return None


# ---- timed commands ------------------------------------------------------------------------------

def xrun(cmd, timeout: float, check: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run without its timeout polling: run(timeout=...) waits by polling with sleeps of up
    to 50 ms, which added 20-40 ms to every timed 40-100 ms command. A timer kills the command
    instead, and the wait is a blocking waitpid."""
    capture = kwargs.pop("capture_output", False)
    if capture:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
    with subprocess.Popen(cmd, **kwargs) as proc:
        timer = threading.Timer(timeout, proc.kill)
        timer.daemon = True
        timer.start()
        try:
            out, err = proc.communicate()
        finally:
            timer.cancel()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check:
        result.check_returncode()
    return result


def timed(cmd: list[str], env=None, runs: int = 10) -> list[float]:
    """Wall seconds of `runs` runs of a command, one after the other, output discarded."""
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        xrun(cmd, env=env, cwd="/tmp", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        out.append(time.perf_counter() - t0)
    return out
