"""Term kinds by name, filled by the `@term("name")` decorator in each term's module.

The decorator also stores the term's Params dataclass in Hydra's ConfigStore as `loss/terms/<name>`, so the
dataclass is the one place a term's defaults are stated: loss groups pick terms with `terms@terms.kd: kd`, and
`+loss/terms@loss.terms.NAME=KIND` adds one from the command line, typo-checked against its fields.
"""

from __future__ import annotations

from collections.abc import Callable

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from distillctl.losses.base import LossTerm

TERMS: dict[str, type[LossTerm]] = {}


def term(kind: str) -> Callable[[type[LossTerm]], type[LossTerm]]:
    """Class decorator that makes a LossTerm available as `kind` in loss.terms and in the config groups."""

    def add(cls: type[LossTerm]) -> type[LossTerm]:
        TERMS[kind] = cls
        node = OmegaConf.structured(cls.Params(kind=kind))
        # A field that follows another config value (CE's label smoothing follows trainer.label_smoothing) is
        # an interpolation in the run's config; built outside a run, the dataclass default applies.
        for field_name, source in cls.follows.items():
            node[field_name] = "${" + source + "}"
        ConfigStore.instance().store(group="loss/terms", name=kind, node=node)
        return cls

    return add
