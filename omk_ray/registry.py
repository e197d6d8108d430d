"""A plug-in registry: a kind name -> "package.module:Class", imported only when first used."""

from __future__ import annotations

import importlib


class Registry(dict[str, str]):
    def __init__(self, what: str, entries: dict[str, str]):
        super().__init__(entries)
        self.what = what

    def register(self, kind: str, target: str) -> None:
        self[kind] = target

    def load(self, kind: str) -> type:
        if kind not in self:
            raise KeyError(f"unknown {self.what} {kind!r}; known: {', '.join(sorted(self))}")
        module, _, name = self[kind].partition(":")
        return getattr(importlib.import_module(module), name)
