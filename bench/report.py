"""What the benchmark prints: rows of figures (each the median of its runs, with its target or reference)
rendered as the table on stdout, progress on stderr, and the small helpers scenarios compose their
figures and notes with."""

from __future__ import annotations

import statistics
import sys
import time


def say(msg: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Results:
    """Every row the scenarios add, in order, and the details that go to --json."""

    def __init__(self):
        self.rows: list[dict] = []
        self.details: dict[str, object] = {}

    def add(self, scenario: str, name: str, runs, unit: str, target: str = "", note: str = "",
            value=None) -> dict:
        runs = [r for r in (runs if isinstance(runs, (list, tuple)) else [runs]) if r is not None]
        if value is None and runs:
            value = statistics.median(runs)
        row = {"scenario": scenario, "name": name, "value": value, "unit": unit, "runs": runs,
               "target": target, "note": note}
        self.rows.append(row)
        return row

    def find(self, scenario: str, prefix: str):
        for row in self.rows:
            if row["scenario"] == scenario and row["name"].startswith(prefix) and row["value"] is not None:
                return row
        return None


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def render(results: Results, machine: dict) -> str:
    lines = [(f"grun benchmark  {machine['date']}  host {machine['hostname']}: {machine['cores']} cores "
              f"({machine['cpu_model']}), {machine['memory_gib']:.1f} GiB, Python {machine['python']}, "
              f"{machine['kernel']}"),
             (f"grun {machine['grun_version']} @ {machine['git_commit']}  repeat={machine['repeat']}"
              f"{'  SMOKE' if machine.get('smoke') else ''}  (each figure: median of the runs shown)"), ""]
    head = ["scenario", "measurement", "median", "unit", "runs", "target / reference", "note"]
    cells = [head]
    for r in results.rows:
        runs = "[" + ", ".join(fmt(x) for x in r["runs"]) + "]" if len(r["runs"]) > 1 else ""
        cells.append([r["scenario"], r["name"], fmt(r["value"]), r["unit"], runs, r["target"], r["note"]])
    widths = [max(len(c[i]) for c in cells) for i in range(len(head) - 1)]
    for c in cells:
        lines.append("  ".join(x.ljust(w) for x, w in zip(c, widths)) + "  " + c[-1])
        if c is head:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 10)
    return "\n".join(line.rstrip() for line in lines)


# ---- composing figures and notes ----------------------------------------------------------------

def median(values, default=None):
    """The median of the values that are not None; `default` when there are none."""
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else default


def pct(values: list[float], p: float) -> float:
    """The p-th percentile, interpolated between the two nearest values."""
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def notes(*parts: str) -> str:
    """A row's note: the parts that are not empty, joined by '; '."""
    return "; ".join(p for p in parts if p)


def cpu_note(cpus: list[dict], n: int) -> str:
    """'per job: master 1.1, node daemons 3.2, ...' in ms, medians over runs."""
    def per_job(key):
        m = median(c.get(key) for c in cpus)
        return None if m is None else m * 1000 / n
    parts = [f"{label} {fmt(per_job(key))}" for key, label in (
        ("master", "master"), ("node_daemons", "node daemons"), ("forkservers", "fork servers"),
        ("supervisors_and_jobs", "supervisors+jobs"), ("clients", "clients"))
        if per_job(key) is not None]
    return "CPU ms/job: " + ", ".join(parts)


def other_load(cpus: list[dict], walls: list[float]) -> str:
    """Other people's work during the runs, in % of one core: '' when negligible (< 10 %)."""
    share = [100 * c["foreign"] / w for c, w in zip(cpus, walls) if c.get("foreign") is not None and w > 0]
    if not share or statistics.median(share) < 10:
        return ""
    return f"OTHER LOAD {statistics.median(share):.0f}% of a core (max {max(share):.0f}%)"
