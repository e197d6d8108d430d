"""Bench registry: a bench kind -> the class that loads and scores it, imported when used.

Add a bench type with an entry point in the `omk_ray.benches` group of an installed package, or with
`register_bench("kind", "package.module:Class")` in every process that needs it (docs/adding-a-bench.md).
"""

from __future__ import annotations

from omk_ray.benches.base import Bench, BenchOptions, Doc, Score, score_guarded
from omk_ray.config import BenchSpec
from omk_ray.plugins import Registry

BENCHES = Registry("bench kind", {
    "jsonl": "omk_ray.benches.jsonl:JsonlBench",
    "lmeval": "omk_ray.benches.lmeval:LmEvalBench",
    "humaneval": "omk_ray.benches.humaneval:HumanEvalBench",
    "humaneval_plus": "omk_ray.benches.humaneval:HumanEvalPlusBench",
    "mbpp": "omk_ray.benches.mbpp:MbppBench",
    "livecodebench": "omk_ray.benches.livecodebench:LiveCodeBench",
}, base=Bench, group="omk_ray.benches")


def register_bench(kind: str, target: str) -> None:
    BENCHES.register(kind, target)


def make_bench(spec: BenchSpec) -> Bench:
    try:
        return BENCHES.load(spec.kind)(spec)
    except KeyError as err:
        raise KeyError(f"bench {spec.name!r}: {err.args[0]}") from None


__all__ = ["BENCHES", "Bench", "BenchOptions", "Doc", "Score", "make_bench", "register_bench", "score_guarded"]
