"""What grun hands to the system around it: shell completion scripts (`grun --completion bash|zsh|fish`), systemd
units (`grun -d --systemd [--install [DIR]]`) and Slurm's and SGE's commands on PATH (`grun-compat install|uninstall
[DIR]`, grun/compat.py). Each is made from the table it describes (options, services, shims' names): it never drifts."""

import os
import shlex
import sys

from .options import OPTIONS, UsageError

SHELLS = ("bash", "zsh", "fish")
# what the shell asks the live cluster for, each call cut off after 2 s (an unreachable master: no answers)
_IDS = "timeout 2 grun -q jobs -F id 2>/dev/null | tail -n +2"
_NODES = "timeout 2 grun -q status 2>/dev/null | awk 'NR>1{print $1}'"
_TAKES_IDS = ("-k", "--kill", "--attach", "why", "wait", "hold", "resume", "edit", "attach", "--after",
              "--afterok", "--afternotok")


def completion(shell: str) -> str:
    """The script that, sourced, completes grun's options, queries, job ids and node names in `shell`."""
    from .cli import HELP_TOPICS, QUERIES
    if shell not in SHELLS:
        raise UsageError(f"--completion takes {', '.join(SHELLS)}, not {shell!r}")
    if shell == "fish":
        values = {"hosts": " -f -a '(__grun_nodes)'", **dict.fromkeys(("attach", "after", "afterok", "afternotok"),
                                                                   " -f -a '(__grun_ids)'")}
        return "\n".join([
            f"function __grun_ids; {_IDS}; end", f"function __grun_nodes; {_NODES}; end",
            *(f"complete -c grun {f'-s {o.short} ' if o.short else ''}-l {o.long}"
              f"{' -r' + values.get(o.long, '') if o.kind != 'flag' else ''} -d {shlex.quote(o.help[:60])}"
              for o in OPTIONS),
            f"complete -c grun -n '__fish_seen_subcommand_from -q --query' -f -a '{' '.join(QUERIES)}'",
            f"complete -c grun -n '__fish_seen_subcommand_from {' '.join(_TAKES_IDS)}' -f -a '(__grun_ids)'",
            f"complete -c grun -n '__fish_seen_subcommand_from help' -f -a '{' '.join(HELP_TOPICS)}'", ""])
    flags = sorted({f"--{o.long}" for o in OPTIONS} | {f"-{o.short}" for o in OPTIONS if o.short})
    script = f"""_grun() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}}
    case "$prev" in
        -q|--query) COMPREPLY=($(compgen -W "{' '.join(QUERIES)}" -- "$cur")); return;;
        help) COMPREPLY=($(compgen -W "{' '.join(HELP_TOPICS)}" -- "$cur")); return;;
        {'|'.join(_TAKES_IDS)}) COMPREPLY=($(compgen -W "$({_IDS})" -- "$cur")); return;;
        -H|--hosts) COMPREPLY=($(compgen -W "$({_NODES})" -- "$cur")); return;;
        -C|--config|-f|--file|-o|--out|--err|--out-err|--cmds) COMPREPLY=($(compgen -f -- "$cur")); return;;
    esac
    case "$cur" in
        -*) COMPREPLY=($(compgen -W "{' '.join(flags)}" -- "$cur"));;
        *) COMPREPLY=($(compgen -c -- "$cur"));;
    esac
}}
complete -o default -F _grun grun
"""
    zsh = "(( $+functions[compdef] )) || { autoload -U +X compinit && compinit -u }\n" \
        "autoload -U +X bashcompinit && bashcompinit\n"  # zsh runs the bash function
    return (zsh if shell == "zsh" else "") + script


UNIT = """[Unit]
Description=grun job queue ({services})
Documentation=https://pypi.org/project/grun/
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={python} -m grun.cli -d -F -C {config}
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=2
# only the daemon: jobs run on in their own sessions (and the daemon's reaper waits for them), so a
# restart or an upgrade never kills a job; the new daemon adopts them
KillMode=process
LimitNOFILE=1048576
TimeoutStopSec=90

[Install]
WantedBy=multi-user.target
"""


def systemd_unit(cfg, install_dir: str | None = None) -> str:
    """The unit for this host's configured services; installed in `install_dir`, what was done."""
    if cfg.path is None:
        raise UsageError("--systemd needs a config file (-C FILE, $GRUN_CONF or /etc/grun.conf): a personal "
                         "cluster starts itself")
    unit = UNIT.format(services=", ".join(sorted(cfg.services)), python=sys.executable,
                       config=shlex.quote(os.path.abspath(cfg.path)))
    if install_dir is None:
        return unit
    from .files import write_atomic  # (not for --completion, which a shell runs at every start)
    path = os.path.join(install_dir, "grun.service")
    write_atomic(path, unit.encode(), mode=0o644)
    return f"wrote {path}; now: systemctl daemon-reload && systemctl enable --now grun\n"


def install_shims(argv: list[str]) -> int:
    """`grun-compat install [--force] [DIR]`: a script per command in DIR (default ~/.local/bin), Slurm's unless a real
    Slurm command is in DIR or on PATH (unless --force), SGE's likewise; `uninstall [DIR]` removes only its own."""
    from .compat import MARK, NAMES, SGE, SLURM
    force = argv[:2] == ["install", "--force"]
    argv = argv[:1] + argv[1 + force:]
    if argv[:1] not in (["install"], ["uninstall"]) or len(argv) > 2:
        print("usage: grun-compat install [--force] [DIR] | uninstall [DIR]   (Slurm's and SGE's commands, run by grun)")
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    target = os.path.abspath(os.path.expanduser(argv[1] if len(argv) > 1 else "~/.local/bin"))
    paths = {name: os.path.join(target, name) for name in NAMES}
    if argv[0] == "uninstall":
        removed = [name for name, path in paths.items() if _ours(path, MARK) and not os.remove(path)]
        print(f"grun-compat: removed {', '.join(removed) or 'nothing'} from {target}")
        return 0
    import shutil
    real = {name: p for name, path in paths.items() for p in [None if force else shutil.which(name), path]
            if p and os.path.exists(p) and not _ours(p, MARK)}
    installed = []
    for family, names in (("Slurm", SLURM), ("SGE", SGE)):  # each unless one of its commands is real
        if found := next((name for name in names if name in real), None):
            hint = f" (grun-compat install --force {target}: all the same)" * (real[found] != paths[found])
            print(f"grun-compat: a real {found} is installed ({real[found]}): not shadowing {family}{hint}", file=sys.stderr)
        else:
            installed += names
    if not installed:
        return 1
    os.makedirs(target, exist_ok=True)
    for name in installed:
        with open(paths[name], "w", encoding="utf-8") as f:
            f.write(f"#!{sys.executable}\n{MARK}: a front to grun (grun-compat uninstall removes it)\n"
                    "import sys\nfrom grun.compat import main\nsys.exit(main())\n")
        os.chmod(paths[name], 0o755)
    on_path = target in os.environ.get("PATH", "").split(os.pathsep)
    print(f"grun-compat: installed {', '.join(installed)} in {target}" + ("" if on_path else f" (add {target} to PATH)"))
    # the scripts run this python: users who cannot reach it (under /root) cannot run them
    if any(not os.stat(p).st_mode & 0o001 for x in {sys.executable, os.path.realpath(sys.executable)}
           for p in [x, *(x[:i] or "/" for i, c in enumerate(x) if c == "/")]):
        print(f"grun-compat: warning: {sys.executable} is not executable by other users: the commands work for "
              "this user only", file=sys.stderr)
    return 0


def _ours(path: str, mark: str) -> bool:
    try:
        with open(path, "rb") as f:
            return mark.encode() in f.read(300)
    except OSError:
        return False
