"""`grun -M CMD` runs CMD only if an output is missing or empty or an input is newer than an output, else says "up to
date" (exit 0); a failed run's outputs become FILE.failed; `-M -n` says what would run and why. A job that writes
what a live make job of yours writes waits for it to end, then is checked again. The original grun's
markers, kept so its users' scripts work: `%i:FILE` / `%o:FILE` name an input / an output and stay in the command
without the marker; `#i:FILE` / `#o:FILE` are removed from it (the shell would take them for a comment anyway); in a
shell command line `< FILE` is an input, `> FILE` and `>FILE` an output; `>> FILE` (a log, as make sees one: many
jobs append to it, none makes it) is neither, nor is `%!>FILE`, which writes FILE (it stays as `>FILE`). The script of
`sh -c SCRIPT` is such a line. A marker's file is the rest of its word, or, inside a word, up to a metacharacter."""
import contextlib
import filecmp
import itertools
import os
import re
import shlex
from typing import NamedTuple

_MARK = re.compile(r"([%#])([io]):(?=\S|$)")  # `%i: x` inside a quoted word is text, not a marker
FILE_END = re.compile(r"[\s;|&<>()`'\"]")  # where a marker's file ends, unless the marker begins its word
# a shell line's tokens: a redirection (with its fd, `%!`, or a `&N` it duplicates), a word, an operator;
# anything else is a quote or a backslash left open
_TOKEN = re.compile(r"""(?P<op>(?:%!|&|\d*)(?:>[>|]?|<<?<?)(?:&[-\d]*)?)
    |(?P<word>(?:\\.|'[^']*'|"(?:\\.|[^"\\])*"|[^\s'"\\<>|;&()])+)
    |(?P<sep>[|;&()]+)|(?P<bad>\S)""", re.VERBOSE | re.DOTALL)


class Make(NamedTuple):
    cmd: str | list[str]  # the command to run: markers gone, files named as the user wrote them
    inputs: list[str]  # absolute paths, in the order given
    outputs: list[str]
    cwd: str


class Decision(NamedTuple):
    run: bool
    missing: list[str]  # inputs not there: the master makes the job wait for the job that writes them
    reasons: list[str]  # `# need OUT: why` lines, or the one line `# up to date: OUTS`


def parse(cmd: str | list[str], cwd: str) -> Make:
    """The make view of a command: a shell command line (str) or an argv (list). ValueError for bad input."""
    from .core.jobs import shell_script  # (here, not at import: the reaper imports us, and starts light)
    inputs, outputs = [], []
    if isinstance(cmd, str):
        cmd = _parse_line(cmd, inputs, outputs, [])
    else:
        script = shell_script(cmd)
        if any(word.startswith("%!>") for n, word in enumerate(cmd) if n != script):
            raise ValueError("-M: %!>FILE is a redirection: give the command as one quoted shell line")
        cmd = [kept for n, word in enumerate(cmd) if (kept := _parse_line(word, inputs, outputs, []) if n == script
                                                      else _unmark(word, word, inputs, outputs)) is not None]
    if not (cmd.strip() if isinstance(cmd, str) else cmd):
        raise ValueError("-M: nothing is left to run once the #i:/#o: words are removed")
    inputs, outputs = _absolute(inputs, cwd), _absolute(outputs, cwd)
    if not inputs and not outputs:
        raise ValueError("-M: the command names no input or output (%i:FILE, %o:FILE, #i:, #o:, < FILE, > FILE)")
    if folder := next((path for path in outputs if os.path.isdir(path)), None):
        raise ValueError(f"-M: output {folder} is a directory")
    return Make(cmd, inputs, outputs, cwd)


def _unmark(raw: str, value: str, inputs: list, outputs: list) -> str | None:
    """The word as the command keeps it (None: dropped), once the file its marker names is noted.
    `raw` is the word as written (with its quotes), `value` what the shell makes of it. A marker that begins
    the word names the rest of it (`"%i:my file"`); one inside it (`--in=%i:x`, `open('%i:x')`), the text up to
    whitespace, a quote or a shell metacharacter."""
    found = _MARK.search(value)
    if not found:
        return raw
    end = FILE_END.search(value, found.end()) if found.start() else None
    path = value[found.end():end.start() if end else None]
    if not path:
        raise ValueError(f"-M: {found[0]} names no file")
    (inputs if found[2] == "i" else outputs).append(path)
    at = _MARK.search(raw)
    if found[1] == "#" and found.start() == 0:
        return None  # the whole word, with any quotes around it
    if at is None:  # a marker quoted in pieces (%"i":x): the shell's text is left as written
        return raw
    if found[1] == "%":
        kept, rest = raw[:at.start()] + raw[at.end():], value[:found.start()] + value[found.end():]
    elif raw.startswith(path, at.end()):  # `--in=#i:FILE` keeps `--in=` and what follows FILE
        kept = raw[:at.start()] + raw[at.end() + len(path):]
        rest = value[:found.start()] + value[found.end() + len(path):]
    else:  # FILE quoted in pieces: the rest of the word goes, and the quote it opened is closed
        kept = raw[:at.start()]
        return kept + raw[-1] if raw[-1] in "'\"" and kept.count(raw[-1]) % 2 else kept
    return _unmark(kept, rest, inputs, outputs) if end else kept  # (a word may hold more markers)


def _parse_line(line: str, inputs: list, outputs: list, appends: list) -> str:
    """The shell line without its markers; its inputs, outputs and `>>` files added to those lists."""
    tokens, edits, i = list(_TOKEN.finditer(line)), [], 0
    while i < len(tokens):
        token, i = tokens[i], i + 1
        if token["bad"]:
            raise ValueError(f"-M: unbalanced quotes (or a trailing backslash) in: {line}")
        if token["word"]:
            value = shlex.split(token["word"])[0]
            if value.startswith("#") and not _MARK.match(value):
                break  # a comment: the rest of the line is not the command's
            kept = _unmark(token["word"], value, inputs, outputs)
            start = token.start() if kept else len(line[:token.start()].rstrip(" \t"))
            if kept != token["word"]:
                edits.append((start, token.end(), kept or ""))
        op = token["op"] or ""
        if op.startswith("%!"):
            edits.append((token.start(), token.start() + 2, ""))  # written, but not a dependency
        if op and not re.search(r"[<>]&", op):  # `2>&1` names no file
            target = tokens[i] if i < len(tokens) else None
            if target is not None and target.start() == token.end() and (target["sep"] or "").startswith("("):
                continue  # process substitution, <(cmd)
            if target is None or not target["word"]:
                raise ValueError(f"-M: no file after '{op}'")
            fd, path = op.rstrip("<>|"), shlex.split(target["word"])[0]
            if ">>" in op:
                appends.append(_MARK.sub("", path, 1))
            if _MARK.search(path):
                continue  # `> %o:FILE`: its marker says what it is
            i += 1
            if op.endswith("<") and "<<" not in op:
                inputs.append(path)
            elif ">" in op and ">>" not in op and fd in ("", "1", "&"):
                outputs.append(path)
    for start, end, text in reversed(edits):
        line = line[:start] + text + line[end:]
    return line


def appends(cmd: str | list[str], cwd: str) -> list[str]:
    """A command's `>> FILE`s (absolute; not `>> $LOG`, `~/x`, `*.log`), which a staged job gets first and gives back."""
    from .core.jobs import shell_script
    line, found = cmd if isinstance(cmd, str) else None if (n := shell_script(cmd)) is None else cmd[n], []
    with contextlib.suppress(ValueError):  # (-M's complaints: this may be no -M job)
        _parse_line(line or "", [], [], found)
    return _absolute([p for p in found if not re.search(r"^~|[$`*?\[]", p)], cwd)


def _absolute(paths: list[str], cwd: str) -> list[str]:
    """Each path once, absolute; none of the kernel's (`2>/dev/null`: a failed job's outputs are renamed, and as root
    /dev/null became a regular file, then FILE.failed)."""
    found = (os.path.normpath(os.path.join(cwd, path)) for path in paths)
    return list(dict.fromkeys(p for p in found if not p.startswith(("/dev/", "/proc/", "/sys/"))))


def decide(make: Make) -> Decision:
    """Run if an output is missing or empty, an input is missing (its producer comes first) or newer than
    an output, or there is no output to compare; otherwise the outputs are up to date."""
    stats = {path: _stat(path) for path in make.inputs + make.outputs}
    missing = [path for path in make.inputs if stats[path] is None]
    newest = max(((stats[p].st_mtime_ns, p) for p in make.inputs if stats[p]), default=(None, None))

    def name(path: str) -> str:
        return os.path.relpath(path, make.cwd) if path.startswith(make.cwd.rstrip("/") + "/") else path

    reasons = []
    for out in make.outputs:
        st = stats[out]
        why = ("it does not exist" if st is None else "it is empty" if st.st_size == 0
               else f"{name(missing[0])} does not exist yet" if missing
               else f"{name(newest[1])} is newer" if newest[0] is not None and newest[0] > st.st_mtime_ns
               else None)
        if why:
            reasons.append(f"# need {name(out)}: {why}")
    if not make.outputs:
        reasons.append("# need to run: no output to compare with its inputs")
    return Decision(bool(reasons), missing, reasons or ["# up to date: " + " ".join(name(out) for out in make.outputs)])


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def spec_keys(make: Make, decision: Decision) -> dict:
    """What a make job adds to its spec (grun.core.jobs: inputs, outputs, make, needs)."""
    return {"inputs": make.inputs, "outputs": make.outputs, "make": True,
            **({"needs": decision.missing} if decision.missing else {})}


def rename_failed(outputs: list[str]) -> list[str]:
    """After a failed run: each existing output FILE becomes FILE.failed, so a rerun does not take a half-written
    output for an up-to-date one. An older FILE.failed of other content is kept as FILE.failed.N (the first free N):
    it may hold what no rerun makes again (`>> %o:log`, a log the job appends to). Returns the outputs renamed; a
    missing file (or one we may not move) is skipped, never an error. The node calls it as the job's user."""
    renamed = []
    for path in outputs:
        with contextlib.suppress(OSError):
            if not os.path.isfile(path):  # (a device, a FIFO, or a link to one)
                continue
            if os.path.isfile(failed := path + ".failed") and not filecmp.cmp(path, failed, shallow=False):
                os.rename(failed, next(to for n in itertools.count(1) if not os.path.lexists(to := f"{failed}.{n}")))
            os.replace(path, failed)
            renamed.append(path)
    return renamed
