"""Bench registry: a bench kind -> the class that loads and scores it, imported when used.

Add a bench type with `register_bench("kind", "package.module:Class")`.
"""

from __future__ import annotations

import importlib

from omk_ray.benches.base import Bench, Doc, Score
from omk_ray.config import BenchSpec

BENCHES: dict[str, str] = {
    "jsonl": "omk_ray.benches.jsonl:JsonlBench",
}


def register_bench(kind: str, target: str) -> None:
    BENCHES[kind] = target


def make_bench(spec: BenchSpec) -> Bench:
    if spec.kind not in BENCHES:
        raise KeyError(f"bench {spec.name!r}: unknown bench kind {spec.kind!r}; known: {', '.join(sorted(BENCHES))}")
    module, _, name = BENCHES[spec.kind].partition(":")
    return getattr(importlib.import_module(module), name)(spec)


__all__ = ["BENCHES", "Bench", "Doc", "Score", "make_bench", "register_bench"]
