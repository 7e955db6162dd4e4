"""What grun hands to the system around it: shell completion scripts (`grun --completion bash|zsh|fish`)
and systemd units (`grun -d --systemd [--install [DIR]]`). Both are made from the tables they describe
(the options, the verbs, the configured services), so they never drift from the command line."""

import os
import shlex
import sys

from .options import OPTIONS, UsageError

SHELLS = ("bash", "zsh", "fish")
# what the shell asks the live cluster for, each call cut off after 2 s (an unreachable master: no answers)
_IDS = "timeout 2 grun -q jobs -F id 2>/dev/null | tail -n +2"
_NODES = "timeout 2 grun -q status 2>/dev/null | awk 'NR>1{print $1}'"
_TAKES_IDS = ("-k", "--kill", "--attach", "why", "wait", "hold", "resume", "kill", "edit", "attach", "--after",
              "--afterok", "--afternotok")


def completion(shell: str) -> str:
    """The script that, sourced, completes grun's options, queries, job ids and node names in `shell`."""
    from .cli import QUERIES
    if shell not in SHELLS:
        raise UsageError(f"--completion takes {', '.join(SHELLS)}, not {shell!r}")
    flags = sorted({f"--{o.long}" for o in OPTIONS} | {f"-{o.short}" for o in OPTIONS if o.short})
    if shell == "fish":
        lines = [f"function __grun_ids; {_IDS}; end", f"function __grun_nodes; {_NODES}; end"]
        values = {"hosts": " -f -a '(__grun_nodes)'", **dict.fromkeys(("attach", "after", "afterok", "afternotok"),
                                                                   " -f -a '(__grun_ids)'")}
        lines += [f"complete -c grun {f'-s {o.short} ' if o.short else ''}-l {o.long}"
                  f"{' -r' + values.get(o.long, '') if o.kind != 'flag' else ''} -d {shlex.quote(o.help[:60])}"
                  for o in OPTIONS]
        lines += [f"complete -c grun -n '__fish_seen_subcommand_from -q --query' -f -a '{' '.join(QUERIES)}'",
                  f"complete -c grun -n '__fish_seen_subcommand_from {' '.join(_TAKES_IDS)}' -f -a '(__grun_ids)'"]
        return "\n".join(lines) + "\n"
    script = f"""_grun() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}}
    case "$prev" in
        -q|--query) COMPREPLY=($(compgen -W "{' '.join(QUERIES)}" -- "$cur")); return;;
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
    from .files import write_atomic
    path = os.path.join(install_dir, "grun.service")
    write_atomic(path, unit.encode(), mode=0o644)
    return f"wrote {path}; now: systemctl daemon-reload && systemctl enable --now grun\n"
