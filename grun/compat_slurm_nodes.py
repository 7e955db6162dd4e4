"""Slurm's views of grun's nodes: sinfo, and scontrol show node's records (grun/compat_slurm.py's scontrol), as
Slurm 22.05's with what grun knows of its nodes (all in one partition, `grun`)."""

import time

from .client import Client
from .compat import last, parse, table
from .compat_slurm import fmt_fields, print_rows
from .tables import host_ranges, stamp


def node_state(n: dict) -> str:
    """As Slurm's: a node whose daemon said it stops takes no new job and runs its own on (drng: draining, as after
    `scontrol update state=drain`); `*`: not responding, lost (down*) or not heard from since the master started."""
    busy = "idle" if not n["running"] else "alloc" if n["free_cpus"] <= 0 else "mix"
    return {"up": busy, "stopped": "drng" if n["running"] else "drain", "unknown": "unk*"}.get(n["state"], "down*")


def show_node(n: dict, oneliner: bool) -> str:
    """scontrol show node's lines for a node, as Slurm 22.05's with the fields grun knows (CPULoad: cores kept busy)."""
    lines = [f"NodeName={n['name']}", (f"CPUAlloc={n['cpus'] - n['free_cpus']:g} CPUTot={n['cpus']:g} "
              f"CPULoad={NODE_FIELDS['O'][1](n)}"), f"NodeAddr={n['name']} NodeHostName={n['name']}",
             f"RealMemory={n['memory']} AllocMem={n['memory'] - n['free_memory']}",
             f"State={NODE_STATES[node_state(n)][1]}", "Partitions=grun"]
    return " ".join(lines) + " " if oneliner else "\n   ".join(lines + [""]) + "\n"


def counts(ns: list[dict], of) -> str:
    """sinfo's %C and %F: allocated/idle/other/total, of(node, its state) -> (allocated, idle, total) (other: the rest;
    as Slurm's, draining ones allocated, unknown ones idle, drained and down ones other)."""
    a, i, t = (sum(x) for x in zip(*(of(n, node_state(n)) for n in ns)))
    return f"{a:g}/{i:g}/{t - a - i:g}/{t:g}"


NODE_STATES = {"idle": ("idle", "IDLE"), "alloc": ("allocated", "ALLOCATED"), "mix": ("mixed", "MIXED"), "drng": (
    "draining", "MIXED+DRAIN"), "drain": ("drained", "IDLE+DRAIN"), "unk*": ("unknown*", "UNKNOWN*"), "down*": ("down*", "DOWN*")}
# sinfo -o's %X: header, value for a node; nodes showing the same in all of them are a line, with NODE_SUMS' of them
NODE_FIELDS = {"P": ("PARTITION", lambda n: "grun*"), "R": ("PARTITION", lambda n: "grun"),
               "a": ("AVAIL", lambda n: "up"), "l": ("TIMELIMIT", lambda n: "infinite"), "t": ("STATE", node_state),
               "T": ("STATE", lambda n: NODE_STATES[node_state(n)][0]),
               "c": ("CPUS", lambda n: f"{n['cpus']:g}"), "m": ("MEMORY", lambda n: str(n["memory"])),
               "G": ("GRES", lambda n: ",".join(f"{k}:{len(v[0]) if k in n['devices'] else v[1]:g}" for k, v in sorted(
                   {**n.get("resources", {}), **n.get("devices", {})}.items())) or "(null)"),
               "e": ("FREE_MEM", lambda n: str(n["free_memory"])), "O": ("CPU_LOAD", lambda n: f"{n['grun_cpus'] + n['outside_cpus']:.2f}"), "n": ("HOSTNAMES", lambda n: n["name"]),
               "E": ("REASON", lambda n: "none" if n["up"] else "Node daemon stopped" if n["state"] == "stopped"
                     else "Not responding"), "u": ("USER", lambda n: "Unknown" if n["up"] else "grun"),
               "H": ("TIMESTAMP", lambda n: "Unknown" if n["up"] else stamp(time.time() - n["last_seen"]))}
NODE_SUMS = {"N": ("NODELIST", lambda ns: host_ranges([n["name"] for n in ns])), "D": ("NODES", lambda ns: str(len(ns))),
             "C": ("CPUS(A/I/O/T)", lambda ns: counts(ns, lambda n, s: (
                 n["cpus"] - n["free_cpus"], n["free_cpus"] * (s in ("idle", "mix", "alloc", "unk*")), n["cpus"]))),
             "F": ("NODES(A/I/O/T)", lambda ns: counts(ns, lambda n, s: (s in ("alloc", "mix", "drng"), s in ("idle", "unk*"), 1)))}
SINFO = {"": "%9P %.5a %.10l %.6D %.6t %N", "nodes": "%10N %.5D %.9P %6t", "reasons": "%20E %9u %19H %N",
         "summarize": "%9P %.5a %.10l %.16F %N"}  # (Slurm's default formats)


def sinfo(argv: list[str]) -> int:
    """sinfo [-h] [-N | -R | -s] [-o FORMAT]: the nodes by state (-N: one a line), in partition `grun`; -R: those not up
    with REASON (Slurm's words), USER (grun: it set them all), TIMESTAMP (last heard from); -s: allocated, idle, other,
    all; -o: Slurm's %X fields (NODE_FIELDS, NODE_SUMS), nodes alike in all but those one line."""
    opts = parse(argv, table("noheader:-h,--noheader nodes:-N,--Node reasons:-R,--list-reasons "
                             "summarize:-s,--summarize format=-o,--format"), None)[0]
    mode = next((key for key in ("reasons", "nodes", "summarize") if key in opts), "")
    fields = fmt_fields(last(opts, "format", SINFO[mode]), {k: (h, lambda ns, get=get: get(ns[0])) for k, (h, get)
                                                          in NODE_FIELDS.items()} | NODE_SUMS, "node")
    groups = {}
    for n in Client().nodes():
        if mode != "reasons" or not n["up"]:  # (-N: a node a line)
            key = [get([n]) for _, get, _, _ in fields if get and get not in {g for _, g in NODE_SUMS.values()}]
            groups.setdefault((*key, mode == "nodes" and n["name"]), []).append(n)
    print_rows(fields, list(groups.values()), "noheader" not in opts)
    return 0
