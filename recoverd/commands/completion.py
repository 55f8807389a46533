"""Shell completion: ``recoverd completion bash|zsh`` prints a script to source.

Commands and options are written into the script from the parser itself, so they cannot
drift. Machine, level and client names change with the policies: the script asks
``recoverd completion names KIND`` for them when TAB is pressed (in the policy directory the
command line names, or the environment's).
"""

from __future__ import annotations

import argparse
import shlex

from recoverd.commands import AddCommand
from recoverd.controller import Controller
from recoverd.errors import RecoverdError

NAME_KINDS = ("machines", "levels", "clients")

_BASH = r"""# recoverd completion for bash: source it, or put it in /etc/bash_completion.d/recoverd
_recoverd_names() {
    local policies="" i
    for ((i = 1; i < ${#COMP_WORDS[@]}; i++)); do
        case "${COMP_WORDS[i]}" in
            --policies) policies="${COMP_WORDS[i+1]}" ;;
            --policies=*) policies="${COMP_WORDS[i]#--policies=}" ;;
        esac
    done
    "${COMP_WORDS[0]}" completion names "$@" ${policies:+--policies "$policies"} 2>/dev/null
}
_recoverd() {
    local cur prev command="" i
    cur="${COMP_WORDS[COMP_CWORD]}"
    prev="${COMP_WORDS[COMP_CWORD-1]}"
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${COMP_WORDS[i]}" in
            --policies|--state) ((i++)) ;;
            -*) ;;
            *) command="${COMP_WORDS[i]}"; break ;;
        esac
    done
    case "$prev" in
        --machine) COMPREPLY=($(compgen -W "$(_recoverd_names machines)" -- "$cur")); return ;;
        --client) COMPREPLY=($(compgen -W "$(_recoverd_names clients)" -- "$cur")); return ;;
        --level)
            local machine="" j
            for ((j = i + 1; j < COMP_CWORD; j++)); do
                case "${COMP_WORDS[j]}" in -*) ;; *) machine="${COMP_WORDS[j]}"; break ;; esac
            done
            local levels
            levels="$(_recoverd_names levels ${machine:+--machine "$machine"})"
            COMPREPLY=($(compgen -W "$levels" -- "$cur"))
            return ;;
        --policies|--state|-o|--output|--to|--pubkey|--anchor)
            COMPREPLY=($(compgen -f -- "$cur")); return ;;
    esac
    if [[ -z "$command" ]]; then
        local globals="--policies --state --json --help --version"
        COMPREPLY=($(compgen -W "__COMMANDS__ $globals" -- "$cur"))
        return
    fi
    local options=""
    case "$command" in
__OPTIONS__
    esac
    local given="" k
    for ((k = i + 1; k < COMP_CWORD; k++)); do
        case "${COMP_WORDS[k]}" in
            __VALUE_OPTIONS__) ((k++)) ;;
            -*) ;;
            *) given="${COMP_WORDS[k]}" ;;
        esac
    done
    if [[ "$cur" != -* && -z "$given" ]]; then
        case "$command" in
            __MACHINE_COMMANDS__)
                COMPREPLY=($(compgen -W "$(_recoverd_names machines)" -- "$cur")); return ;;
__CHOICES__
        esac
    fi
    COMPREPLY=($(compgen -W "$options" -- "$cur"))
}
complete -o default -F _recoverd recoverd
"""

_ZSH = """# recoverd completion for zsh: source it from ~/.zshrc (through zsh's bashcompinit)
autoload -U +X compinit && compinit
autoload -U +X bashcompinit && bashcompinit
"""


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def bash_script(parser: argparse.ArgumentParser) -> str:
    """Return the bash completion script for the commands and options of ``parser``."""
    commands = _subcommands(parser)
    options, machine_commands, choices = [], [], []
    valued = sorted(
        {
            flag
            for sub in [parser, *commands.values()]
            for action in sub._actions
            if action.option_strings and action.nargs != 0
            for flag in action.option_strings
        }
    )
    for name, sub in commands.items():
        flags = sorted(flag for action in sub._actions for flag in action.option_strings)
        options.append(f"        {name}) options={shlex.quote(' '.join(flags))} ;;")
        positional = [a for a in sub._actions if not a.option_strings]
        if any(a.dest == "machine" for a in positional):
            machine_commands.append(name)
        for action in positional:
            inner = _subcommands(sub) if isinstance(action, argparse._SubParsersAction) else {}
            words = list(inner) or list(action.choices or ())
            if words:
                choices.append(
                    f"            {name}) COMPREPLY=($(compgen -W "
                    f'{shlex.quote(" ".join(words))} -- "$cur")); return ;;'
                )
    return (
        _BASH.replace("__COMMANDS__", " ".join(commands))
        .replace("__OPTIONS__", "\n".join(options))
        .replace("__MACHINE_COMMANDS__", "|".join(machine_commands) or "__none__")
        .replace("__CHOICES__", "\n".join(choices))
        .replace("__VALUE_OPTIONS__", "|".join(valued))
    )


def cmd_completion(ctl: Controller, args: argparse.Namespace) -> int:
    if args.shell == "names":
        return _print_names(ctl, args)
    from recoverd.cli import build_parser

    script = bash_script(build_parser())
    print(_ZSH + script if args.shell == "zsh" else script, end="")
    return 0


def _print_names(ctl: Controller, args: argparse.Namespace) -> int:
    """``completion names KIND``: one name a line; nothing (and exit 0) if the policies are
    broken: a TAB must never print errors into the engineer's command line."""
    if args.kind is None:
        return 0
    try:
        policies = ctl.policies
        if args.kind == "clients":
            names = sorted(policies.clients)
        elif args.kind == "machines":
            machines = policies.machines()
            bare = [m.name for m in machines]
            names = [m.name if bare.count(m.name) == 1 else m.qualified_name for m in machines]
        elif args.machine:
            names = [level.name for level in policies.find_machine(args.machine).levels]
        else:
            names = sorted({level.name for m in policies.machines() for level in m.levels})
    except RecoverdError:
        return 0
    print("\n".join(names))
    return 0


def register(add: AddCommand) -> None:
    p = add(
        "completion",
        cmd_completion,
        "print shell completion for bash or zsh (source it: source <(recoverd completion bash))",
        state_option=False,
    )
    p.add_argument("shell", choices=("bash", "zsh", "names"), help="bash or zsh")
    p.add_argument("kind", nargs="?", choices=NAME_KINDS, help=argparse.SUPPRESS)
    p.add_argument("--machine", help=argparse.SUPPRESS)
