"""The README's commands and options table stay true: every `distillctl` command in its code blocks composes with the
config as it is now (and the quick ones run), and every key its options table names exists in the schema."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from distillctl import cli as distillctl_cli
from distillctl import composition
from distillctl import config

README = Path(__file__).resolve().parents[1] / "README.md"
SHELL = ("bash", "sh", "")


def readme_commands() -> list[str]:
    """Each `distillctl ...` line of the README's shell code blocks, without its comment."""
    commands, language = [], None
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            language = line[3:].strip() if language is None else None
            continue
        if language in SHELL:
            code = re.split(r"\s+#\s", line)[0].strip()
            if code.startswith(("distillctl ", "OMP_WAIT_POLICY=")):
                commands.append(code)
    return commands


COMMANDS = readme_commands()
# Run for real: quick, and touching nothing outside the test's folder.
RUN = {"distillctl recipes", "distillctl inspect model=resnet56"}


def test_the_readme_shows_commands_for_every_stage():
    verbs = {shlex.split(c)[1] for c in COMMANDS if c.startswith("distillctl ")}
    assert set(distillctl_cli.COMMANDS) <= verbs, f"commands the README never shows: {set(distillctl_cli.COMMANDS) - verbs}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_readme_command_composes(command, cli):
    args = shlex.split(command)
    args = args[args.index("distillctl") + 1:]
    if command in RUN:
        result = cli(*args)
        assert result.code == 0, result.text
        return
    verb, overrides = args[0], args[1:]
    assert verb in distillctl_cli.COMMANDS, f"'{verb}' is no distillctl command"
    recipe = next((o.split("=", 1)[1] for o in overrides if o.startswith("recipe=")), None)
    if recipe and recipe.endswith(".yaml"):
        # A recipe file the README's search example writes (runs/<recipe>/search/best.yaml); test_search runs one.
        assert recipe.endswith("search/best.yaml")
        return
    config.register()
    composition.check_composes(composition.prepare_overrides([o for o in overrides if not o.startswith("-")]),
                               sweeping=composition.is_multirun(overrides))


def table_keys() -> list[str]:
    """The config keys in the first column of the README's options table."""
    text = README.read_text()
    table = text[text.index("### Options that matter most"):]
    table = table[:table.index("\n\n", table.index("| key |"))]
    keys = []
    for row in table.splitlines()[2:]:
        first = row.split("|")[1]
        keys += re.findall(r"`([a-z_.]+)`", first)
    return keys


def has_key(node, dotted: str) -> bool:
    """Whether the config has this key (without resolving interpolations such as run_dir's)."""
    for part in dotted.split("."):
        if not OmegaConf.is_dict(node) or part not in node:
            return False
        node = node._get_node(part)
    return True


def test_every_key_of_the_options_table_is_in_the_config():
    config.register()
    composed = composition.compose_config(composition.prepare_overrides(["logger=[tensorboard,mlflow,wandb]", "search=kd"]))
    keys = table_keys()
    assert len(keys) > 40, keys
    groups = {p.name for p in composition.CONFIG_DIR.iterdir() if p.is_dir()}
    missing = [k for k in keys if k != "recipe" and k not in groups and not has_key(composed, k)]
    assert not missing, f"options the README names but the config lacks: {missing}"


def readme_recipes() -> list[str]:
    """The README's example recipe files: its YAML code blocks that are Hydra global packages."""
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)
    return [b for b in blocks if b.startswith("# @package _global_")]


@pytest.mark.parametrize("text", readme_recipes(), ids=lambda text: text.splitlines()[1][:40])
def test_every_readme_recipe_composes(text, tmp_path, monkeypatch):
    (tmp_path / "example.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    config.register()
    cfg = composition.compose_config(composition.prepare_overrides(["recipe=example.yaml"]))
    assert cfg.description and cfg.description in text
