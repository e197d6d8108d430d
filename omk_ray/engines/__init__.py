"""Engine registry: a kind name -> the class that serves it, imported only when used.

Add a backend with `register_engine("name", "package.module:Class")`; nothing else changes.
"""

from __future__ import annotations

import importlib

from omk_ray.engines.base import Completion, Engine, Request

ENGINES: dict[str, str] = {
    "vllm": "omk_ray.engines.vllm_engine:VLLMEngine",
    "transformers": "omk_ray.engines.transformers_engine:TransformersEngine",
    "echo": "omk_ray.engines.echo:EchoEngine",
}


def register_engine(kind: str, target: str) -> None:
    ENGINES[kind] = target


def engine_class(kind: str) -> type[Engine]:
    if kind not in ENGINES:
        raise KeyError(f"unknown engine {kind!r}; known engines: {', '.join(sorted(ENGINES))}")
    module, _, name = ENGINES[kind].partition(":")
    return getattr(importlib.import_module(module), name)


__all__ = ["ENGINES", "Completion", "Engine", "Request", "engine_class", "register_engine"]
