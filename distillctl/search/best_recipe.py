"""A trial written back as a recipe: the searched recipe plus only what differs (the command line's overrides and
the trial's values), so `distillctl pipeline recipe=<file>` trains it at the recipe's full schedule."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from distillctl import files, recipes
from distillctl.execution_settings import RUN_CONTROL

# Keys a search's command line sets that say where and how it ran, not what a trial trained.
NOT_COPIED = ("recipe", *RUN_CONTROL, "search", "hydra")


def recipe_body(config_groups: set[str], overrides: Sequence[str], values: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """The defaults entries (config-group choices), the values, and the overrides that must stay on the command line
    that runs the recipe, that together say what overrides + values say. A recipe can only add to what it includes,
    so deletions (`~expect`) stay on the command line; so do choices of groups composed after the recipe
    (`profile=smoke`), which a recipe cannot override."""
    groups, command_line, body = [], [], OmegaConf.create({})
    parsed = OverridesParser.create().parse_overrides(list(overrides)) if overrides else []
    settings = [(o.get_key_element().lstrip("+~"), o.value(), o.is_delete()) for o in parsed]
    settings += [(key, value, False) for key, value in values.items()]
    after_recipe = groups_after_recipe()
    for key, value, delete in settings:
        if key.split(".")[0] in NOT_COPIED:
            continue
        if delete:
            command_line.append(f"~{key}")
        elif key in after_recipe:
            command_line.append(f"{key}={value}")
        elif key in config_groups:
            groups.append({f"override /{key}": value})  # a mapping in the defaults list; a string names a recipe
        else:
            OmegaConf.update(body, key, value, force_add=True)
    return groups, OmegaConf.to_container(body), command_line


def groups_after_recipe() -> list[str]:
    """The config groups configs/config.yaml composes after the recipe (profile=, which shrinks any recipe)."""
    from distillctl.composition import CONFIG_DIR

    names = [next(iter(entry)) for entry in OmegaConf.load(CONFIG_DIR / "config.yaml").defaults if OmegaConf.is_dict(entry)]
    names = [name for name in names if not name.startswith("override ")]
    return names[names.index("recipe") + 1:]


def write_recipe(path: Path, base: str, description: str, header: Sequence[str], groups: list[dict[str, Any]],
                 body: dict[str, Any]) -> None:
    """Write the recipe: `base` included by name when `distillctl recipes` knows it, else copied in whole."""
    import yaml

    copied: dict[str, Any] = {}
    defaults: list[Any] = [base]
    if base not in recipes.available():  # a recipe given as a file path cannot be named: its content is copied in
        from hydra.core.config_store import ConfigStore

        copied = OmegaConf.to_container(ConfigStore.instance().load(f"recipe/{base}.yaml").node)
        defaults = copied.pop("defaults", [])
    settings = OmegaConf.to_container(OmegaConf.merge(copied, body))
    settings.pop("description", None)
    document = {"description": description, "defaults": [*defaults, *groups], **settings}
    text = "# @package _global_\n" + "".join(f"# {line}\n" for line in header) + yaml.safe_dump(document, sort_keys=False)
    files.write_text(path, text)
