"""Finding recipes: bundled with the tool, in ./recipes of the current directory, or any YAML path.

Kept free of torch and Hydra imports so that `distillctl --help` and `distillctl recipes` answer at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from distillctl.errors import UserError, did_you_mean

BUNDLED_DIR = Path(__file__).resolve().parent / "recipes"


@dataclass(frozen=True)
class Recipe:
    """A recipe file and the name it is known by (its run workspace is runs/<name>)."""

    name: str
    path: Path

    @property
    def description(self) -> str:
        """The recipe's `description:` line, or '' when it has none or cannot be read."""
        try:
            data = yaml.safe_load(self.path.read_text())
        except (OSError, yaml.YAMLError):
            return "(unreadable)"
        return str(data.get("description", "")) if isinstance(data, dict) else ""


def search_dirs() -> list[Path]:
    """Directories searched by name, the user's ./recipes first so it can shadow a bundled recipe."""
    local = Path.cwd() / "recipes"
    dirs = [local] if local.is_dir() and local.resolve() != BUNDLED_DIR else []
    return dirs + [BUNDLED_DIR]


def available() -> dict[str, Recipe]:
    """Every recipe that `recipe=NAME` can name, keyed by name."""
    found: dict[str, Recipe] = {}
    for folder in reversed(search_dirs()):
        for path in sorted(folder.glob("*.yaml")):
            found[path.stem] = Recipe(path.stem, path)
    return dict(sorted(found.items()))


def resolve(spec: str) -> Recipe:
    """Turn the value of `recipe=` (a name or a path to a YAML file) into a Recipe, or explain what exists."""
    if not spec.strip():
        raise UserError(f"recipe= is empty: give a name ({', '.join(available())}) or a path to a YAML recipe.")
    if spec.endswith((".yaml", ".yml")) or "/" in spec:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise UserError(f"recipe file '{spec}' does not exist. Give a path to a YAML recipe or a name from `distillctl recipes`.")
        return Recipe(path.stem, path.resolve())
    recipes = available()
    if spec not in recipes:
        raise UserError(
            f"unknown recipe '{spec}'.{did_you_mean(spec, recipes)} "
            f"Available: {', '.join(recipes)}. A recipe of your own goes in ./recipes/{spec}.yaml."
        )
    return recipes[spec]
