"""llama.cpp: the engine actor starts its own `llama-server` with the variant's GGUF on its slot
(the GPUs Ray gave the actor, or the CPU), then drives it like the `openai` engine.

The model is the variant's folder (its one `*.gguf`, as `quantization: gguf` builds write it)
or a `.gguf` file. The server renders the chat template (`--jinja`) and tokenizes. Each request
carries the serving profile of the card: `reasoning_format` (default deepseek: the thought comes
back as `reasoning_content`), `reasoning_budget_tokens` = the recipe's thinking budget,
`chat_template_kwargs.enable_thinking`, and the recipe's sampler with llama.cpp's own defaults
neutralised (`repeat_penalty` 1.0, `top_k` 0, `min_p` as the recipe says); `body` overrides any
of them (e.g. `body: {repeat_penalty: 1.1}`).

If the server dies while the engine is in use, the engine's process ends (`os._exit`) inside a
Ray actor: the farm sees a dead engine, replaces it and retries its in-flight samples. Outside
an actor the engine is marked dead and every later request fails with the server's log.

`engine_args.extra` (validated when the grid is loaded; `base_url` is the engine's own):

    concurrency    parallel server slots, the engine's capacity (default 2, the card's --parallel 2)
    threads        CPU threads of the server (default: llama.cpp's choice)
    gpu_layers     layers offloaded to the GPU (default: all with a CUDA build, else 0)
    cache_type     KV cache type, e.g. q8_0 as in the card (default: llama.cpp's f16)
    reasoning_format  deepseek | none | auto (default deepseek)
    server_args    further llama-server flags, e.g. ["--flash-attn", "on"]
    start_timeout  seconds the server may take to load (default 600)
    timeout, retries, backoff, backoff_max, body   as for the openai engine
`engine_args.max_model_len` is each slot's context (default 4096).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Literal

from pydantic import Field

from omk_ray.config import Recipe, VariantSpec
from omk_ray.engines.base import Request
from omk_ray.engines.identity import EngineIdentity, local_device
from omk_ray.engines.openai_engine import OpenAIEngine, OpenAIOptions

log = logging.getLogger("omk_ray.engines.llamacpp")
DEFAULT_CONTEXT = 4096
SERVER_DIED_EXIT = 70


class LlamaCppOptions(OpenAIOptions):
    base_url: str | None = Field(None, description="set by the engine: the server it started")
    concurrency: int = Field(2, ge=1)
    retries: int = Field(2, ge=0)
    threads: int | None = Field(None, ge=1)
    gpu_layers: int | None = Field(None, ge=0)
    cache_type: str | None = None
    reasoning_format: Literal["deepseek", "none", "auto"] = "deepseek"
    server_args: list[str] = Field(default_factory=list)
    start_timeout: float = Field(600, gt=0)


class LlamaCppEngine(OpenAIEngine):
    kind = "llamacpp"
    uses_accelerator = True  # the server holds the model on this actor's slot
    holds_weights = True
    Options = LlamaCppOptions
    family = "llama.cpp"
    scores = False  # unlike the openai engine it drives the server as: llama-server echoes no prompt log-probabilities
    score_refusal = ("llama.cpp's server returns log-probabilities of generated tokens only, not of the prompt's "
                     "(its /completion has no echo), so loglikelihood tasks cannot be scored on it; run them on the "
                     "vllm or transformers engine")

    def __init__(self, variant: VariantSpec, model_path: str):
        from omk_ray.llamacpp.server import LlamaServer
        from omk_ray.llamacpp.tools import find_tools
        from omk_ray.variants.gguf import gguf_file

        options = LlamaCppOptions.model_validate(variant.engine_args.extra)
        if options.base_url or options.api_key_env:
            raise ValueError(f"variant {variant.name!r}: the llamacpp engine starts its own llama-server, so "
                             "engine_args.extra takes no base_url or api_key_env (engine: openai talks to a running one)")
        tools = find_tools()
        self.gguf = gguf_file(model_path)
        self.dead: str | None = None
        self.server = LlamaServer(tools.bin("llama-server"), self.gguf, self._server_args(variant, options, tools),
                                  start_timeout=options.start_timeout, on_exit=self._server_died)
        served = {**variant.engine_args.extra, "base_url": f"{self.server.base_url}/v1", "model": variant.name}
        try:
            super().__init__(variant.model_copy(update={
                "engine_args": variant.engine_args.model_copy(update={"extra": served})}), model_path)
        except BaseException:
            self.server.stop()
            raise
        self.variant = variant
        self._version = f"llamacpp {tools.version} {self.gguf.name}"
        self.tools_info = tools.info

    def identity(self) -> EngineIdentity:
        """The llama.cpp build (its commit) and where the server runs: the CUDA build on this actor's GPU,
        else the CPU; the GGUF's quantization is part of the weights."""
        cuda = self.tools_info.get("profile") == "cuda"
        device, count = local_device(True) if cuda else ("cpu", 1)
        return super().identity().model_copy(update={
            "version": str(self.tools_info.get("llama_cpp_commit")), "package": "llama-cpp-python", "dtype": None,
            "device": device, "device_count": count})

    @staticmethod
    def _server_args(variant: VariantSpec, o: LlamaCppOptions, tools) -> list[str]:
        context = variant.engine_args.max_model_len or DEFAULT_CONTEXT
        gpu_layers = o.gpu_layers if o.gpu_layers is not None else (999 if tools.info["profile"] == "cuda" else 0)
        args = ["--jinja", "--alias", variant.name, "--parallel", str(o.concurrency),
                "--ctx-size", str(context * o.concurrency), "--n-gpu-layers", str(gpu_layers), "--no-webui"]
        if o.threads:
            args += ["--threads", str(o.threads)]
        if o.cache_type:
            args += ["--cache-type-k", o.cache_type, "--cache-type-v", o.cache_type]
        return [*args, *o.server_args]

    def payload(self, request: Request, recipe: Recipe) -> dict[str, Any]:
        if self.dead:
            raise RuntimeError(self.dead)
        body: dict[str, Any] = {
            "repeat_penalty": 1.0,
            "top_k": recipe.top_k,
            "min_p": recipe.min_p,
            "reasoning_format": self.options.reasoning_format,
        }
        if recipe.enable_thinking and recipe.thinking_budget:
            body["reasoning_budget_tokens"] = recipe.thinking_budget
        return {**body, **super().payload(request, recipe)}

    def _server_died(self, code: int, log_tail: str) -> None:
        self.dead = f"llama-server (pid {self.server.pid}) exited with code {code}: {log_tail[-1500:]}"
        log.error("%s", self.dead)
        if _in_ray_actor():
            print(f"omk-ray llamacpp engine: {self.dead}\nending the engine actor", file=sys.stderr, flush=True)
            os._exit(SERVER_DIED_EXIT)

    def close(self) -> None:
        super().close()
        self.server.stop()


def _in_ray_actor() -> bool:
    try:
        import ray

        return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
    except Exception:  # no Ray, or no runtime context here
        return False
