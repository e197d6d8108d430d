"""A plug-in registry: a kind name -> "package.module:Class", imported only when first used.

Kinds come from the built-in table, from `register(...)` in the running process, and from the
entry points of the registry's group (`omk_ray.engines`, `omk_ray.benches`) of every installed
package: an installed plug-in is found in every process, the engine actors on a cluster's
nodes included, where a `register(...)` made in the driver is not.

A plug-in class may declare its settings as a pydantic model, `Options` (`extra="forbid"`):
`option_problems(cls, raw)` lists what is wrong with a raw settings dict before anything
starts, and `parse_options` builds the model with the same wording.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, ValidationError

log = logging.getLogger(__name__)


class Registry(dict[str, str]):
    def __init__(self, what: str, entries: dict[str, str], base: type, group: str):
        super().__init__(entries)
        self.what = what
        self.base = base  # what every plug-in derives from, so it inherits the defaults the core reads
        for ep in entry_points(group=group):
            if ep.name in self and self[ep.name] != ep.value:
                log.warning("%s %r of %s (%s) ignored: the name is taken by %s", what, ep.name,
                            ep.dist.name if ep.dist else "an installed package", ep.value, self[ep.name])
                continue
            self[ep.name] = ep.value

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
