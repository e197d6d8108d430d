"""A plug-in registry: a kind name -> "package.module:Class", imported only when first used.

A plug-in class may declare its settings as a pydantic model, `Options` (`extra="forbid"`):
`option_problems(cls, raw)` lists what is wrong with a raw settings dict before anything
starts, and `parse_options` builds the model with the same wording.
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import BaseModel, ValidationError


class Registry(dict[str, str]):
    def __init__(self, what: str, entries: dict[str, str], base: type):
        super().__init__(entries)
        self.what = what
        self.base = base  # what every plug-in derives from, so it inherits the defaults the core reads

    def register(self, kind: str, target: str) -> None:
        self[kind] = target

    def load(self, kind: str) -> type:
        if kind not in self:
            raise KeyError(f"unknown {self.what} {kind!r}; known: {', '.join(sorted(self))}")
        module, _, name = self[kind].partition(":")
        plugin = getattr(importlib.import_module(module), name)
        if not (isinstance(plugin, type) and issubclass(plugin, self.base)):
            raise TypeError(f"{self.what} {kind!r} is {self[kind]}, which does not derive from "
                            f"{self.base.__module__}.{self.base.__name__}")
        return plugin


def option_problems(plugin: type, options: dict[str, Any]) -> list[str]:
    """'key: problem' for each thing wrong with `options`; none when the class declares no `Options`."""
    model = getattr(plugin, "Options", None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return []
    try:
        model(**options)
    except ValidationError as err:
        return [f"{'.'.join(map(str, e['loc'])) or '(all)'}: {e['msg']}" for e in err.errors()]
    except TypeError as err:  # not a mapping
        return [str(err)]
    return []


def parse_options(model: type[BaseModel], options: dict[str, Any], where: str) -> BaseModel:
    """The options as `model`, or a ValueError naming `where` and every bad key."""
    try:
        return model(**options)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(all)'}: {e['msg']}" for e in err.errors())
        raise ValueError(f"{where}: bad options: {problems}") from None
