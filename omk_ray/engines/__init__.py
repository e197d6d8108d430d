"""Engine registry: a kind name -> the class that serves it, imported only when used.

Add a backend with an entry point in the `omk_ray.engines` group of an installed package (found in
every process, cluster nodes included), or with `register_engine("name", "package.module:Class")` in
every process that needs it; nothing else changes (docs/adding-an-engine.md).
"""

from __future__ import annotations

from omk_ray.engines.base import Completion, Engine, Request
from omk_ray.plugins import Registry

ENGINES = Registry("engine", {
    "vllm": "omk_ray.engines.vllm_engine:VLLMEngine",
    "transformers": "omk_ray.engines.transformers_engine:TransformersEngine",
    "echo": "omk_ray.engines.echo:EchoEngine",
    "simgpu": "omk_ray.engines.simgpu:SimulatedGpuEngine",  # a FAKE GPU (timing model) for farm benchmarks
    "openai": "omk_ray.engines.openai_engine:OpenAIEngine",
    "replay": "omk_ray.engines.replay:ReplayEngine",
    "llamacpp": "omk_ray.engines.llamacpp_engine:LlamaCppEngine",
}, base=Engine, group="omk_ray.engines")


def register_engine(kind: str, target: str) -> None:
    ENGINES.register(kind, target)


def engine_class(kind: str) -> type[Engine]:
    return ENGINES.load(kind)


__all__ = ["ENGINES", "Completion", "Engine", "Request", "engine_class", "register_engine"]
