"""Term kinds by name, filled by the `@term("name")` decorator in each term's module."""

from __future__ import annotations

from collections.abc import Callable

from distillctl.losses.base import LossTerm
from distillctl.losses.params import PARAMS

TERMS: dict[str, type[LossTerm]] = {}


def term(kind: str) -> Callable[[type[LossTerm]], type[LossTerm]]:
    """Class decorator that makes a LossTerm available as `kind` in loss.terms, with its options from PARAMS."""

    def add(cls: type[LossTerm]) -> type[LossTerm]:
        cls.Params = PARAMS[kind]
        TERMS[kind] = cls
        return cls

    return add
