"""From a command line's overrides to a composed config: recipes registered with Hydra, shorthands expanded, sweep
folders named, and the whole composed once before Hydra runs so that a bad override ends in one line naming its fix.

The CLI dispatches with it; stages that compose configs of their own (reproduce's runs, search's trials) use it too,
without importing the CLI.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distillctl import recipes
from distillctl.errors import UserError, did_you_mean
from distillctl.execution_settings import RUN_CONTROL

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_RECIPE = "quickstart"  # as chosen in configs/config.yaml


def resolve_recipe_overrides(overrides: Sequence[str]) -> list[str]:
    """Register every recipe in Hydra's ConfigStore and rewrite `recipe=path.yaml` to the stored name."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    to_store, chosen = dict(recipes.available()), set()
    rewritten = []
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and key.lstrip("+") == "recipe":
            named = [recipes.resolve(spec) for spec in value.split(",")]
            to_store.update({r.name: r for r in named})
            chosen |= {r.name for r in named}
            override = f"{key}={','.join(r.name for r in named)}"
        rewritten.append(override)
    for name, recipe in to_store.items():
        try:
            node = recipe_node(recipe)
        except UserError:
            if name in chosen:
                raise
            continue  # another file of ./recipes matters only to a recipe that includes it (explained then)
        store.store(group="recipe", name=name, node=nested_thresholds(model_defaults_as_names(node)), package="_global_")
    return rewritten


def recipe_node(recipe: recipes.Recipe):
    """A recipe file's contents, or a UserError saying what is wrong with the file."""
    from omegaconf import OmegaConf

    try:
        node = OmegaConf.load(recipe.path)
    except Exception as exc:  # a broken YAML file (or one asking for Python objects) is the user's to fix
        raise UserError(f"recipe {recipe.path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not OmegaConf.is_dict(node):
        raise UserError(f"recipe {recipe.path} must be a mapping of config keys (trainer: {{epochs: 30}}, ...), not a list.")
    for key, value in OmegaConf.to_container(node, resolve=False).items():
        if problem := shape_problem(str(key), value):
            raise UserError(f"recipe {recipe.path}: {problem}")
    return node


def shape_problem(key: str, value: Any) -> str | None:
    """What is wrong with the kind of value a recipe gives a top-level key, which Hydra would report as a merge
    error naming neither the key nor the fix; None when the kind fits (the values inside are checked later)."""
    import dataclasses
    import typing

    hint = schema_types().get(key)
    interpolated = isinstance(value, str) and value.startswith("${")
    if hint is None or (interpolated and not dataclasses.is_dataclass(hint)):
        return None
    shown = "null" if value is None else repr(value)
    if dataclasses.is_dataclass(hint):
        if interpolated:  # the schema types each section: an interpolated one cannot be checked, and Hydra refuses it
            first = dataclasses.fields(hint)[0].name
            source = re.fullmatch(r"\$\{([\w.]+)\}", value)
            example = f"'${{{source.group(1)}.{first}}}'" if source else "..."
            return (f"'{key}: {value}' cannot set a whole section by interpolation: interpolate its keys one by one "
                    f"({key}: {{{first}: {example}}}).")
        if isinstance(value, dict) or (key in MODEL_KEYS and isinstance(value, str)):
            return None
        if isinstance(value, str) and (CONFIG_DIR / key).is_dir():
            return f"'{key}: {value}' picks an option of the {key} config group: write it in the defaults list as `- override /{key}: {value}`."
        first = dataclasses.fields(hint)[0].name
        return f"'{key}' must be a mapping of its keys ({key}: {{{first}: ...}}), not {shown}."
    origin = typing.get_origin(hint)
    if origin is list and not isinstance(value, list):
        return f"'{key}' must be a list ({key}: [{{name: ..., checkpoint: ...}}]), not {shown}."
    if origin is dict and not isinstance(value, dict):
        return f"'{key}' must be a mapping ({key}: {{student.top1: {{min: 0.5}}}}), not {shown}."
    return None


def group_choices(group: str) -> list[str]:
    """The options of a config group as its files name them (Hydra's own listing needs an initialized Hydra of
    its own, which a running command already has)."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@functools.cache
def schema_types() -> dict[str, Any]:
    """The type of each top-level key of the schema."""
    import typing

    from distillctl.config import Config

    return typing.get_type_hints(Config)


def nested_thresholds(recipe):
    """A recipe's `expect:` and `smoke_expect:` written `student.top1: {min: X}` stored as `student: {top1: ...}`,
    so that `expect.student.top1.min=0.9` and `~expect.student.top1` reach them from the command line."""
    from omegaconf import OmegaConf

    from distillctl.evaluation.expectations import nested

    for key in ("expect", "smoke_expect"):
        if OmegaConf.is_dict(recipe.get(key)):
            recipe[key] = nested(OmegaConf.to_container(recipe[key], resolve=False))
    return recipe


def model_defaults_as_names(recipe):
    """Read `override /teacher: NAME` in a recipe's defaults, and `teacher: NAME` in its body, as `teacher.name:
    NAME`, as on the command line: models are named, not picked from a config group, so recipes written either
    way work."""
    from omegaconf import OmegaConf

    for role in MODEL_KEYS:
        if OmegaConf.is_dict(recipe) and role in recipe and not OmegaConf.is_interpolation(recipe, role):
            if isinstance(value := recipe[role], str):
                recipe[role] = {"name": value}
    defaults = recipe.get("defaults") if OmegaConf.is_dict(recipe) else None
    if not defaults:
        return recipe
    kept = []
    for entry in defaults:
        if OmegaConf.is_dict(entry) and len(entry) == 1:
            key, value = next(iter(entry.items()))
            role = str(key).removeprefix("override").strip().lstrip("/")
            if role in MODEL_KEYS and isinstance(value, str):
                recipe[role] = OmegaConf.merge({"name": value}, recipe.get(role) or {})
                continue
        kept.append(entry)
    recipe.defaults = kept
    return recipe


MODEL_KEYS = ("teacher", "student")


def model_shorthand(overrides: Sequence[str]) -> list[str]:
    """`teacher=NAME` and `student=NAME` (sweeps too: student=resnet8,resnet14) mean `<role>.name=NAME`:
    any timm or zoo name works without a config file per model."""
    rewritten = []
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and key in MODEL_KEYS and not value.startswith("{"):
            override = f"{key}.name={value}"
        rewritten.append(override)
    return rewritten


def prepare_overrides(overrides: Sequence[str]) -> list[str]:
    """The overrides Hydra composes: recipes registered and resolved, model shorthands expanded, and an empty
    mapping that would change nothing refused."""
    for override in overrides:
        key, sep, value = override.lstrip("+").partition("=")
        if sep and value.strip() == "{}" and (kind := merged_into(key)):
            if kind == "section":
                fix = f"Set them one by one ({key}.NAME=VALUE)"
            elif "." in key:
                fix = f"Drop one with '~{key}.NAME'"
            else:  # a top-level mapping (expect) can go whole
                fix = f"Drop them all with '~{key}', or one with '~{key}.NAME'"
            raise UserError(f"'{override}' changes nothing: a mapping given on the command line is merged into {key}, "
                            f"which keeps its keys. {fix}.")
    single_options(overrides)
    return model_shorthand(resolve_recipe_overrides(home_expanded(overrides)))


# Hydra's flags that take the next word as their value (`--cfg job`, `--info searchpath`).
FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--info", "-i", "--config-path", "-cp", "--config-name", "-cn",
                    "--config-dir", "-cd", "--experimental-rerun"}


def bare_words(command: str, overrides: Sequence[str]) -> None:
    """Refuse a word that is no override (`distillctl predict photos/`) with the key=value it was meant as: Hydra's
    own message is about its grammar ("missing EQUAL at '<EOF>'")."""
    previous = None
    for word in overrides:
        if "=" not in word and not word.startswith(("-", "~")) and previous not in FLAGS_WITH_VALUE:
            raise UserError(f"'{word}' is not a setting: settings are key=value. {meant(command, word)}")
        previous = word


def meant(command: str, word: str) -> str:
    """The key=value a bare word on the command line most likely stands for."""
    if Path(word).expanduser().exists():
        key = "predict.input" if command == "predict" else "dataset.path"
        return f"For the {'folder' if Path(word).expanduser().is_dir() else 'file'} '{word}', write {key}={word}."
    if word in recipes.available():
        return f"To run that recipe: recipe={word}."
    groups = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and (p / f"{word}.yaml").is_file()
                    and (p.name != "search" or command == "search"))  # search spaces mean nothing to other commands
    if groups:
        return f"To pick that option: {' or '.join(f'{group}={word}' for group in groups)}."
    return "A recipe is recipe=NAME, a data set dataset.path=DIR, and `distillctl " + command + " --help` lists the main keys."


# A home folder at the start of a value, or of one in a sweep's or list's commas: `~`, `~/x`, `~user/x`.
HOME = re.compile(r"(?<![^,\[])~[\w.-]*(?=[/,\]]|$)")


def home_expanded(overrides: Sequence[str]) -> list[str]:
    """`dataset.path=~/photos` with the home folder written out, as a shell does for `VAR=~/x` but not for a key
    with a dot in it; Hydra's grammar refuses an unquoted `~` with a lexer error."""
    expanded = []
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and not key.startswith("~"):  # `~key=value` deletes key, a Hydra override of its own
            override = key + sep + HOME.sub(lambda m: os.path.expanduser(m.group()), value)
        expanded.append(override)
    return expanded


# The config groups that take several options at once (`logger=[tensorboard,mlflow]`); every other one picks one.
SEVERAL_OPTIONS = {"logger"}


def single_options(overrides: Sequence[str]) -> None:
    """Refuse a list of options for a group that picks one: Hydra would merge `optimizer=[sgd,adamw]` into one
    optimizer, and for `loss=[kd,at]` stop at the ce term both bring, with a message about its defaults list."""
    groups = {p.name for p in CONFIG_DIR.iterdir() if p.is_dir()} - SEVERAL_OPTIONS - {"hydra"} | {"recipe", *MODEL_KEYS}
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        options = value[1:-1].split(",") if value.startswith("[") and value.endswith("]") else []
        if key in groups and len(options) > 1:
            fix = ("; kd_at is KD with attention transfer, and a term joins a method with loss=kd "
                   "+loss/terms@loss.terms.at=attention" if key == "loss" else "")
            raise UserError(f"{override}: {key} takes one option{fix}. To run one job for each, add -m and write "
                            f"{key}={','.join(o.strip() for o in options)}.")


def merged_into(key: str) -> str | None:
    """What the schema types `key` as where it is always there, so that an override's mapping is merged into it: a
    `section` (trainer) or a `mapping` (loss.terms, a model's kwargs); None otherwise (an optional section such as
    logger.tensorboard is set by a mapping)."""
    import dataclasses
    import typing

    from distillctl.config import Config

    hint: Any = Config
    for part in key.split("."):
        if not dataclasses.is_dataclass(hint) or part not in (hints := typing.get_type_hints(hint)):
            return None
        hint = hints[part]
    return "section" if dataclasses.is_dataclass(hint) else "mapping" if typing.get_origin(hint) is dict else None


def with_sweep_dir(overrides: list[str]) -> list[str]:
    """In a multirun, put the sweep's job folders under the recipe's workspace, one folder per sweep, each named
    after the values swept (`0_loss.terms.kd.temperature=2`), not after every override of the command line."""
    if not is_multirun(overrides):
        return overrides
    values = dict(o.split("=", 1) for o in overrides if "=" in o and not o.startswith("-"))
    recipe = values.get("recipe", DEFAULT_RECIPE)
    base = values.get("run_dir") or f"runs/{recipe if ',' not in recipe else 'sweeps'}"
    extra = [] if "hydra.sweep.dir" in values else [f"hydra.sweep.dir={base}/sweep/${{now:%Y-%m-%d_%H-%M-%S}}"]
    if "hydra.job.config.override_dirname.exclude_keys" not in values:
        extra.append(f"hydra.job.config.override_dirname.exclude_keys=[{','.join(fixed_keys(overrides))}]")
    return [*overrides, *extra]


def is_multirun(overrides: Sequence[str]) -> bool:
    """Whether the command line starts a sweep."""
    return any(o in ("-m", "--multirun") or o == "hydra.mode=MULTIRUN" for o in overrides)


def check_sweep_dir(overrides: Sequence[str], user_args: Sequence[str]) -> None:
    """Hydra makes a sweep's folder before any job starts (and so before the preflight checks of run_dir): refuse a
    folder this process cannot write in one line rather than Hydra's traceback."""
    from distillctl.disk import check_writable

    value = next((o.split("=", 1)[1] for o in overrides if o.startswith("hydra.sweep.dir=")), None)
    if value is not None:
        key = "hydra.sweep.dir" if any(o.startswith("hydra.sweep.dir=") for o in user_args) else "run_dir"
        check_writable(Path(value.split("${", 1)[0] or "."), key)


# Keys that say where and how a run goes, never what it computes: never part of a sweep job's folder name.
BOOKKEEPING_KEYS = frozenset({"recipe", *RUN_CONTROL})


def fixed_keys(overrides: Sequence[str]) -> list[str]:
    """The keys a multirun does not sweep (and the run's bookkeeping keys unless swept: `recipe=cifar_at,cifar_dkd`
    names its jobs after the recipes), left out of its job folders' names."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(config_overrides(overrides))
    except Exception:  # check_composes reports a malformed override with its own message
        parsed = []
    # Hydra matches exclude_keys against the bare key: `+expect.x` and `~loss.terms.kd` are `expect.x`, `loss.terms.kd`.
    swept = {o.key_or_group for o in parsed if o.is_sweep_override()}
    return sorted(({o.key_or_group for o in parsed} | BOOKKEEPING_KEYS) - swept)


def override_key(override: str) -> str:
    """The config key an override sets, adds (+) or deletes (~)."""
    return override.split("=", 1)[0].lstrip("+~")


PLAIN_OVERRIDE_VALUE = re.compile(r"^[A-Za-z_][\w.\-/]*$")


def override(key: str, value: Any) -> str:
    """`key=value` as Hydra parses it back to the same value."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, (int, float)):
        text = repr(value)
    elif isinstance(value, str) and PLAIN_OVERRIDE_VALUE.match(value):
        text = value
    else:
        text = "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"
    return f"{key}={text}"


def config_overrides(overrides: Sequence[str]) -> list[str]:
    """The overrides that set config values, without Hydra's own (hydra.*) and flags (-m, --cfg job)."""
    values = {i + 1 for i, o in enumerate(overrides) if o in VALUE_FLAGS}  # `job` of `--cfg job`
    return [o for i, o in enumerate(overrides)
            if not o.startswith("hydra.") and not o.startswith("-") and (i not in values or "=" in o)]


def check_composes(overrides: Sequence[str], sweeping: bool = False) -> None:
    """Compose the config once before Hydra runs, so a bad override ends in one line naming the fix; several values
    of a key (`loss=kd,at`) are refused unless `sweeping` (-m)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    plain = config_overrides(overrides)
    first = plain
    try:
        first = first_job(plain, sweeping)  # composition is the same for every value of a sweep
        compose_config(first)
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(explain_composition_error(exc, first)) from None
    except ValueError as exc:  # Hydra's defaults list refuses `group=null` with a bare ValueError
        nulled = [o.split("=", 1)[0] for o in first if o.endswith("=null") and not o.startswith(("+", "~"))]
        hint = f" To drop a config group's choice, delete it: ~{nulled[0]}." if nulled else ""
        raise UserError(f"{' '.join(str(exc).split())}.{hint}") from None


def first_job(overrides: Sequence[str], sweeping: bool = True) -> list[str]:
    """The overrides of a sweep's first job: each swept key at its first value. Without `sweeping`, a key given
    several values is refused, naming -m."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    if not sweeping and (swept := next((o for o in parsed if o.is_sweep_override()), None)):
        # Hydra's own answer is a numbered list of three readings on five lines, with exit 1.
        line = swept.input_line
        raise UserError(f"{line} gives several values: add -m to run one job for each (`-m {line}`), or write a list "
                        f"as [a,b] or a string as '...' in quotes.")
    return [f"{o.get_key_element()}={sample_value(o)}" if o.is_sweep_override() else o.input_line for o in parsed]


def sample_value(override) -> str:
    """One value of a sweep override: the first of a list or range, the low end of an interval (which a
    sampling sweeper such as Hydra's Optuna plugin draws from, and which cannot be enumerated)."""
    from hydra.core.override_parser.types import IntervalSweep

    sweep = override.value()
    if isinstance(sweep, IntervalSweep):
        return str(sweep.start)
    return next(iter(override.sweep_string_iterator()))


def compose_config(overrides: Sequence[str]):
    """The config Hydra would build from these overrides (no Hydra run, no output folders)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def explain_composition_error(exc: BaseException, overrides: Sequence[str]) -> str:
    """Hydra's message for a bad override on one line: the full key, what is allowed, and the closest match."""
    import dataclasses
    from enum import Enum

    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    # Hydra chains the OmegaConf error as the cause, or (a mistake inside a recipe file) only as the context.
    cause = exc.__cause__ or exc.__context__
    key = getattr(cause, "full_key", None)
    origin = re.match(r"In '(recipe/[^']+)'", str(exc))
    source = f"in {origin.group(1)}: " if origin else ""
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and key:
        parent, _, leaf = key.rpartition(".")
        try:
            node = compose_config([o for o in overrides if override_key(o) != key])
        except Exception:  # the key is in a recipe file: the schema says what is valid
            node = None
        for part in parent.split(".") if parent else []:
            node = node.get(part) if isinstance(node, DictConfig) else None
        if isinstance(node, DictConfig) and OmegaConf.get_type(node) is dict:  # a free-form mapping such as kwargs
            value = next((o.split("=", 1)[1] for o in overrides if override_key(o) == key), "...")
            return f"{source}'{key}' is a new entry of {parent}: add it with +{key}={value}."
        owner = getattr(cause, "object_type", None)
        if isinstance(node, DictConfig):
            valid = sorted(node.keys())
        elif dataclasses.is_dataclass(owner):
            valid = sorted(f.name for f in dataclasses.fields(owner))
        else:
            valid = None
        if valid is not None:
            where = f" under '{parent}'" if parent else ""
            return f"{source}unknown config key '{key}'.{did_you_mean(leaf, valid)} Valid keys{where}: {', '.join(valid)}."
    if isinstance(cause, ValidationError) and key:
        value = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+") == key), None)
        import typing

        owner = getattr(cause, "object_type", None)
        hints = typing.get_type_hints(owner) if isinstance(owner, type) else {}
        enum_type = hints.get(key.rpartition(".")[2])
        if isinstance(enum_type, type) and issubclass(enum_type, Enum):
            choices = [m.name for m in enum_type]
            return f"{key}={value} is not one of {', '.join(choices)}.{did_you_mean(str(value), choices)}"
        reason = ' '.join(str(cause).splitlines()[0].split())
        # Not on the command line: the value is in a recipe file, which Hydra names.
        return f"{key}={value}: {reason}." if value is not None else f"{source}{key}: {reason}."
    # Hydra appends its search path to some messages: noise for a user who typed an option name.
    message = " ".join(str(exc).split()).split(" Config search path")[0]
    if cause is not None:
        message += f" ({' '.join(str(cause).split())})"
    if missing := re.search(r"Could not (?:find|load) '(\w+)/([^']+)'", message):
        group, name = missing.groups()
        found = recipes.available() if group == "recipe" else {}
        if name in found:  # there, but its file is broken
            try:
                recipe_node(found[name])
            except UserError as broken:
                return f"{source}{broken}"
        listed = re.search(rf"Available options in '{group}': (.*)", message)
        options = listed.group(1).split() if listed else list(found)
        message += ("" if message.endswith(".") else ".") + did_you_mean(name, options)
        if group == "recipe" and not listed:
            message += f" Recipes: {', '.join(options)}."
    space = next((o for o in overrides if override_key(o).startswith("search.space")), None)
    if space and "search.space" in message:
        # Hydra's own advice (+search.space=...) fails too: a space's keys are new entries of a dict.
        return (f"{source}{space}: a search space's keys are new entries, which key=value cannot add: "
                "++search.space='{optimizer.lr: {low: 0.01, high: 0.2, log: true}}' adds to the chosen space "
                "(~search first to search only yours), or declare search.space in a recipe.")
    return message


# Hydra's flags that take a value; argparse wants every override before them.
VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--info", "-i"}


def overrides_first(args: Sequence[str]) -> list[str]:
    """Reorder argv so `--cfg job a=1` works like `a=1 --cfg job`, as users expect."""
    overrides, flags, i = [], [], 0
    while i < len(args):
        arg = args[i]
        if arg in VALUE_FLAGS and i + 1 < len(args) and "=" not in args[i + 1]:
            flags += [arg, args[i + 1]]
            i += 2
            continue
        (flags if arg.startswith("-") else overrides).append(arg)
        i += 1
    return overrides + flags
