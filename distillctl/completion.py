"""Tab completion: `distillctl completion bash|zsh|fish` prints the shell's script; the script asks
`distillctl __complete WORD...` (the words before the cursor, the last one being completed) for candidates.

Hydra completes an app's overrides itself, but not behind a command word (`distillctl distill ...`), so the tool
answers from the same composed config that `--cfg job` prints: commands, recipes, config keys one level at a time,
group options, enum and boolean values, model names and paths.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any

BASH = r"""# distillctl tab completion for bash: eval "$(distillctl completion bash)" in ~/.bashrc
_distillctl() {
    local line=${COMP_LINE:0:$COMP_POINT} cur head breaks="" IFS=$' \t\n'
    local -a words
    read -r -a words <<< "$line"
    [[ $line == *[[:space:]] ]] && words+=("")
    cur=${words[${#words[@]}-1]}
    IFS=$'\n'
    COMPREPLY=($("${words[0]}" __complete "${words[@]:1}" 2>/dev/null))
    # bash splits the word at '=' and ':' (COMP_WORDBREAKS) and replaces only what follows the last of them
    [[ $COMP_WORDBREAKS == *=* ]] && breaks+="="
    [[ $COMP_WORDBREAKS == *:* ]] && breaks+=":"
    if [[ -n $breaks && $cur == *[$breaks]* ]]; then
        head=${cur%"${cur##*[$breaks]}"}
        COMPREPLY=("${COMPREPLY[@]#"$head"}")
    fi
    # a key, a section or a folder goes on (trainer.epochs=, trainer., runs/): no space after it
    if [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == *[=./] ]]; then
        compopt -o nospace
    fi
}
complete -o default -F _distillctl distillctl
"""

ZSH = r"""#compdef distillctl
# distillctl tab completion for zsh: eval "$(distillctl completion zsh)" in ~/.zshrc
_distillctl() {
    local -a found open closed
    found=("${(@f)$(${words[1]} __complete "${(@)words[2,CURRENT-1]}" "$PREFIX" 2>/dev/null)}")
    found=(${found:#})
    open=(${(M)found:#*[=./]})   # a key, a section or a folder goes on: no space after it
    closed=(${found:#*[=./]})
    compadd -S '' -- $open
    compadd -- $closed
}
(( $+functions[compdef] )) || { autoload -Uz compinit && compinit; }
compdef _distillctl distillctl
"""

FISH = r"""# distillctl tab completion for fish: distillctl completion fish | source (or save it in
# ~/.config/fish/completions/distillctl.fish)
function __distillctl_complete
    set -l words (commandline -opc)
    $words[1] __complete $words[2..-1] (commandline -ct) 2>/dev/null
end
complete -c distillctl -f -a '(__distillctl_complete)'
"""

SCRIPTS = {"bash": BASH, "zsh": ZSH, "fish": FISH}

FLAGS = ["-m", "--multirun", "--cfg", "--help", "--hydra-help", "--info"]
CFG_VALUES = ["job", "hydra", "all"]
# Keys whose values are files or folders (by their last part), with the words they take besides paths.
PATH_KEYS = {
    "path": ["embedded"], "checkpoint": ["pretrained", "null"], "pretrained_file": ["null"], "input": [],
    "output": ["null"], "run_dir": [], "cache_dir": [], "teacher_cache_dir": [],
}
MODEL_ROLES = ("teacher", "student")


def script(shell: str) -> str:
    """The completion script for `shell`, to be evaluated by it."""
    from distillctl.errors import UserError, did_you_mean

    if shell not in SCRIPTS:
        raise UserError(f"no completion for shell '{shell}'.{did_you_mean(shell, list(SCRIPTS))} "
                        f"Shells: {', '.join(SCRIPTS)} (`distillctl completion bash`).")
    return SCRIPTS[shell]


def candidates(words: Sequence[str]) -> list[str]:
    """Completions of the last of `words` (the words after `distillctl`, the one being typed last)."""
    from distillctl import cli

    *before, current = words or [""]
    if not before:
        return matching([*cli.COMMANDS, *cli.TOOLS, "--help", "--version"], current)
    command = before[0]
    if command == "recipes":
        return matching(["--json"], current)
    if command == "runs":
        return matching(["--json"], current) + [f for f in file_candidates(current) if f.endswith("/")]
    if command == "completion":
        return matching(list(SCRIPTS), current) if len(before) == 1 else []
    if command == "inspect":
        return inspect_candidates(current)
    if command not in cli.COMMANDS:
        return []
    if before[-1] in ("--cfg", "-c"):
        return matching(CFG_VALUES, current)
    if current.startswith("-"):
        return matching(FLAGS, current)
    return override_candidates(before[1:], current)


def matching(options: Sequence[str], prefix: str) -> list[str]:
    """The options that start with `prefix`, in their order."""
    return [o for o in options if o.startswith(prefix)]


def inspect_candidates(current: str) -> list[str]:
    """`inspect` takes model=, num_classes= and image_size=."""
    key, sep, value = current.partition("=")
    if not sep:
        return matching(["model=", "num_classes=", "image_size="], current)
    return [f"model={name}" for name in matching(model_names(), value)] if key == "model" else []


def override_candidates(context: Sequence[str], current: str) -> list[str]:
    """Keys, sections and values for one override, from the config the overrides before it compose."""
    from omegaconf import OmegaConf

    sign = current[: len(current) - len(current.lstrip("+~"))]
    key, sep, value = current[len(sign):].partition("=")
    cfg = context_config(context)
    groups = group_options()
    tree = OmegaConf.to_container(cfg, resolve=False)  # unresolved: `${pretrained:...}` would import timm
    if sep:
        return [f"{sign}{key}={v}" for v in value_candidates(cfg, tree, groups, key, value)]
    parent, dot, leaf = key.rpartition(".")
    node = entry(tree, parent)
    found: list[str] = []
    if not dot and sign != "~":  # groups, chosen by name: dataset=, hydra/launcher=, profile=, and recipe=
        found += [f"{name}=" for name in [*groups, "recipe"] if name.startswith(leaf)]
    if isinstance(node, dict):
        for name, child in node.items():
            if not str(name).startswith(leaf) or "." in str(name):  # `student.top1` of expect: no dotted path reaches it
                continue
            full = f"{parent}{dot}{name}"
            if sign == "~":  # a deletion names the entry itself, a whole section as often as one value
                found += [full, f"{full}."] if isinstance(child, dict) else [full]
            elif isinstance(child, dict):
                # a group or a model is chosen by name (dataset=cifar10, student=resnet8) or changed key by key
                found += [f"{full}=", f"{full}."] if full in groups or full in MODEL_ROLES else [f"{full}."]
            else:
                found.append(f"{full}=")
    return [sign + f for f in sorted(set(found))]


def entry(tree: dict, key: str) -> Any:
    """The entry at a dotted key of a plain config tree, or None."""
    node: Any = tree
    for part in key.split(".") if key else []:
        node = node.get(part) if isinstance(node, dict) else None
    return node


def value_candidates(cfg, tree: dict, groups: dict[str, list[str]], key: str, value: str) -> list[str]:
    """The values `key=` takes that start with `value`."""
    from distillctl import recipes

    if key == "recipe":
        files = [f for f in file_candidates(value, if_path_like=True) if f.endswith(("/", ".yaml", ".yml"))]
        return matching(list(recipes.available()), value) + files
    if key in groups:
        return matching(groups[key], value)
    parent, _, leaf = key.rpartition(".")
    if key in MODEL_ROLES or (leaf == "name" and parent.split(".")[0] in (*MODEL_ROLES, "teachers")):
        return matching(model_names(), value)
    if key == "predict.model":  # a stage of the workspace or a model file
        from distillctl.workspace_status import STAGES

        stages = [s for s in STAGES if s not in ("export", "report")]
        return matching(["auto", *stages], value) + file_candidates(value)
    if leaf in PATH_KEYS:
        return matching(PATH_KEYS[leaf], value) + file_candidates(value)
    kind = declared_type(cfg, parent, leaf)
    optional = kind is not None and type(None) in typing.get_args(kind)
    kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind) if optional else kind
    if isinstance(kind, type) and issubclass(kind, Enum):
        return matching([m.name for m in kind] + (["null"] if optional else []), value)
    if kind is bool:
        return matching(["true", "false"], value)
    current = entry(tree, key)
    if isinstance(current, (str, int, float)) and not isinstance(current, bool) and "${" not in str(current) \
            and current != "???":
        return matching([str(current)], value)  # the value it has now, to edit
    return []


def declared_type(cfg, parent: str, leaf: str) -> Any:
    """The schema's type of `parent.leaf` (a dataclass field), or None for a free-form entry."""
    from omegaconf import OmegaConf

    node = OmegaConf.select(cfg, parent, default=None, throw_on_resolution_failure=False) if parent else cfg
    owner = OmegaConf.get_type(node) if OmegaConf.is_dict(node) else None
    if owner is None or owner is dict:
        return None
    try:
        return typing.get_type_hints(owner).get(leaf)
    except (NameError, TypeError):
        return None


def file_candidates(value: str, if_path_like: bool = False) -> list[str]:
    """Files and folders (with a trailing /) whose path starts with `value`, hidden ones only when asked for."""
    if if_path_like and not (value.startswith((".", "/", "~")) or "/" in value):
        return []
    folder, slash, stem = value.rpartition("/")
    directory = Path(os.path.expanduser(folder + slash or "."))
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return []
    found = []
    for entry in entries:
        if entry.name.startswith(stem) and (stem.startswith(".") or not entry.name.startswith(".")):
            found.append(f"{folder}{slash}{entry.name}{'/' if entry.is_dir() else ''}")
    return found


def context_config(context: Sequence[str]):
    """The config composed from the overrides typed so far (a sweep by its first values), or from as much of them as
    composes: a half-typed command line must still complete."""
    from distillctl import composition, config

    config.register()
    given = [o.split(",", 1)[0] for o in context if "=" in o and not o.startswith("-") and not o.startswith("hydra")]
    recipe = [o for o in given if o.split("=", 1)[0] == "recipe"]
    for attempt in (given, recipe, []):
        try:
            return composition.compose_config(composition.prepare_overrides(attempt))
        except Exception:  # noqa: BLE001 - any failure to compose falls back to fewer overrides
            continue
    return composition.compose_config([])


def group_options() -> dict[str, list[str]]:
    """Each config group's options (dataset, loss, ..., hydra/launcher)."""
    from distillctl.command_help import group_options as options
    from distillctl.composition import CONFIG_DIR

    return options(CONFIG_DIR)


def model_names() -> list[str]:
    """The CIFAR zoo and every timm model name, from a file cached per timm and distillctl version: listing them
    imports torch and timm (seconds), too slow to wait for at every Tab."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        versions = f"{version('timm')}-{version('distillctl')}"
    except PackageNotFoundError:
        versions = "unknown"
    cache = Path(os.path.expanduser(os.environ.get("DISTILLCTL_CACHE", "~/.cache/distillctl"))) / f"model-names-{versions}.txt"
    try:
        return cache.read_text().split()
    except OSError:
        pass
    import timm

    import distillctl.models  # noqa: F401 - registers the CIFAR zoo in timm's registry

    names = sorted(timm.list_models())
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text("\n".join(names))
        partial.replace(cache)  # two shells completing at once never read half a list
    except OSError:
        pass  # a read-only home: list them again next time
    return names


def main(words: Sequence[str]) -> None:
    """`distillctl __complete WORD...`: one candidate per line; nothing (never a traceback) when none fits."""
    try:
        found = candidates(words)
    except Exception:  # noqa: BLE001 - a shell's Tab must never print an error into the command line
        found = []
    print("\n".join(found))
