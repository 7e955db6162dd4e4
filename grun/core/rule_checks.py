"""What a rule's text and a refused request show without running a job: the names and the number-word orderings of
its conditions, for the config's warnings (grun.config.checks looks the names up: no I/O here), and which rule or plugin
set what a refusal names (set_by). Typos that parse are warned of, never refused: a group may be added later."""

import re

from .expr import _number


def notes_of(label: str, compares: list, fields: dict, notes: list, fails: str) -> None:
    """Notes (kind, value, label) on a condition's comparisons with a constant, for grun.config.checks (no I/O here):
    ("user" or "group", a name it compares with), or ("warning", text): a number ordered against a word (`fails`)."""
    names = {id(get): key for key, get in fields.items()}
    for op, left, right in compares:
        for get, other, first in ((left, right, True), (right, left, False)):
            field, value = names.get(id(get)), getattr(other, "const", None)
            if isinstance(value, str) and (op in ("==", "!=") and field in ("user", "group") or field == "groups"
                                           and op in ("in", "not in") and not first):
                notes.append((field.removesuffix("s"), value, label))
            elif isinstance(value, list) and first and field in ("user", "group") and op in ("in", "not in"):
                notes += [(field, v, label) for v in value if isinstance(v, str)]
            elif field in ("cpus", "memory", "time", "priority", "load") and op in ("<", "<=", ">", ">=") and \
                    isinstance(value, str) and _number(value) is None:
                text = " ".join([field, op, repr(value)][::1 if first else -1])
                notes.append(("warning", f"{text} compares a number with a word: {fails}", label))


def set_by(req: dict, why: str) -> str:
    """"; FIELD from WHERE" for each field of a refused request that a rule or plugin set (its `origin`) and the refusal
    (`why`) names ("no node has gpu": params.gpu) or quotes (hosts, a nodes: condition)."""
    return "".join(f"; {k} from {v}" for k, v in (req.get("origin") or {}).items() if isinstance(req.get(k), str) and
                   req[k] in why or re.search(rf"(?<!\w){re.escape(k.removeprefix('params.'))}(?!\w)", why))
